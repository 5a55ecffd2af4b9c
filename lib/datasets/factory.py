"""Dataset names -> imdb objects: get_imdb('voc_2007_trainval'), list_imdbs().

Known names: voc_<2007|2012>_<train|val|trainval|test>, coco_2014_<train|val|minival|valminusminival>,
coco_2015_<test|test-dev>, coco_2017_<train|val>, shapes_<trainval|test> (the synthetic set, generated on first
use) and custom_<split> for any VOC-format folder chosen with set_custom_root() (default: cfg.DATA_DIR/custom).
Several datasets are combined by combined_roidb('a+b'), not here.
"""
import os.path as osp

from lib.model.utils.config import cfg

__sets = {}
_custom = {'root': None, 'classes': None}


def _voc(split, year):
    def make():
        from lib.datasets.pascal_voc import pascal_voc
        return pascal_voc(split, year)
    return make


def _coco(split, year):
    def make():
        from lib.datasets.coco import coco
        return coco(split, year)
    return make


def _shapes(split):
    def make():
        from lib.datasets.shapes import ensure_shapes_dataset
        from lib.datasets.voc_format import voc_format
        root = ensure_shapes_dataset()
        return voc_format(split, root, name=f'shapes_{split}', use_07_metric=True)
    return make


for _year in ('2007', '2012'):
    for _split in ('train', 'val', 'trainval', 'test'):
        __sets[f'voc_{_year}_{_split}'] = _voc(_split, _year)
for _split in ('train', 'val', 'minival', 'valminusminival', 'trainval'):
    __sets[f'coco_2014_{_split}'] = _coco(_split, '2014')
for _split in ('test', 'test-dev'):
    __sets[f'coco_2015_{_split}'] = _coco(_split, '2015')
for _split in ('train', 'val'):
    __sets[f'coco_2017_{_split}'] = _coco(_split, '2017')
for _split in ('trainval', 'test'):
    __sets[f'shapes_{_split}'] = _shapes(_split)


def set_custom_root(path, classes=None):
    """Point the custom_<split> datasets at a VOC-format folder (classes: list, or None for classes.txt or the
    names found in the annotations). The scripts call this from --data_path."""
    _custom['root'] = None if path is None else osp.abspath(path)
    _custom['classes'] = list(classes) if classes else None


def get_custom_root():
    """The folder custom_<split> reads: the one set by set_custom_root, else cfg.DATA_DIR/custom."""
    return _custom['root'] or osp.join(cfg.DATA_DIR, 'custom')


def get_imdb(name):
    """The imdb called ``name``; KeyError listing the known names when there is none (FileNotFoundError for a
    custom_<split> whose folder does not exist)."""
    if name in __sets:
        return __sets[name]()
    if name.startswith('custom_') and len(name) > len('custom_'):
        root = get_custom_root()
        if not osp.isdir(root):
            raise FileNotFoundError(f'dataset {name!r}: the custom VOC-format folder {root} does not exist; pass '
                                    f'--data_path <folder with Annotations/ ImageSets/Main/ JPEGImages/> '
                                    f'(lib.datasets.factory.set_custom_root)')
        from lib.datasets.voc_format import voc_format
        return voc_format(name[len('custom_'):], root, classes=_custom['classes'], name=name, use_07_metric=True)
    raise KeyError(f'unknown dataset {name!r}; known: {", ".join(list_imdbs())}, custom_<split> '
                   f'(a VOC-format folder set with --data_path)')


def list_imdbs():
    """The names of the registered datasets (custom_<split> is accepted too)."""
    return list(__sets.keys())
