"""The one PASCAL VOC annotation parser, shared by the imdb loader and the evaluation.

It returns what the file says (1-based coordinates, as written); checking boxes against the image and converting
to 0-based is the caller's job. Every problem raises AnnotationError naming the file (and the object).
"""
import xml.etree.ElementTree as ET


class AnnotationError(ValueError):
    """A dataset annotation is malformed or inconsistent; the message names the file and the box."""


def _int_field(elem, tag, default, path, where):
    text = elem.findtext(tag)
    if text is None or not text.strip():
        return default
    try:
        return int(float(text))
    except ValueError:
        raise AnnotationError(f'{path}: {where}: <{tag}> is not a number: {text!r}') from None


def parse_voc_xml(path):
    """Parse one VOC annotation file.

    Returns:
        dict with 'filename' (str or None), 'size' ((width, height, depth) ints, or None when absent) and
        'objects': list of dicts {'name', 'pose', 'truncated', 'difficult', 'bbox': [xmin, ymin, xmax, ymax]}
        (floats, 1-based as in the file).
    Raises:
        FileNotFoundError if the file is missing, AnnotationError if it is not a valid VOC annotation.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'annotation file not found: {path}') from None
    except ET.ParseError as e:
        raise AnnotationError(f'{path}: malformed XML: {e}') from None
    root = tree.getroot()
    if root.tag != 'annotation':
        raise AnnotationError(f'{path}: root element is <{root.tag}>, expected <annotation>')

    size = None
    size_el = root.find('size')
    if size_el is not None and size_el.findtext('width') is not None:
        size = (_int_field(size_el, 'width', 0, path, 'size'),
                _int_field(size_el, 'height', 0, path, 'size'),
                _int_field(size_el, 'depth', 3, path, 'size'))

    objects = []
    for i, obj in enumerate(root.findall('object')):
        where = f'object {i}'
        name = obj.findtext('name')
        if name is None or not name.strip():
            raise AnnotationError(f'{path}: {where} has no <name>')
        name = name.strip()
        where = f'object {i} ({name})'
        bndbox = obj.find('bndbox')
        if bndbox is None:
            raise AnnotationError(f'{path}: {where} has no <bndbox>')
        bbox = []
        for tag in ('xmin', 'ymin', 'xmax', 'ymax'):
            text = bndbox.findtext(tag)
            if text is None:
                raise AnnotationError(f'{path}: {where}: <bndbox> has no <{tag}>')
            try:
                bbox.append(float(text))
            except ValueError:
                raise AnnotationError(f'{path}: {where}: <{tag}> is not a number: {text!r}') from None
        objects.append({
            'name': name,
            'pose': (obj.findtext('pose') or 'Unspecified').strip(),
            'truncated': _int_field(obj, 'truncated', 0, path, where),
            'difficult': _int_field(obj, 'difficult', 0, path, where),
            'bbox': bbox,
        })
    return {'filename': root.findtext('filename'), 'size': size, 'objects': objects}
