"""Fixtures for the dataset tests: a tiny generated shapes set, a builder of hand-made VOC folders, and a temporary
cfg.DATA_DIR so caches never touch the repository's data/."""
import os

import cv2
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _tmp_data_dir(tmp_data_dir):
    return tmp_data_dir


@pytest.fixture(scope='session')
def tiny_shapes_root(tmp_path_factory):
    """20 trainval + 6 test images: every guaranteed case of the generator appears (see lib/datasets/shapes.py)."""
    from lib.datasets.shapes import generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'VOC2007')
    return generate_shapes_dataset(root, num_train=20, num_test=6, seed=3, min_size=64, max_size=120, workers=1)


def _xml(image_id, width, height, objects, depth=3):
    parts = [f'<annotation><filename>{image_id}.jpg</filename>',
             f'<size><width>{width}</width><height>{height}</height><depth>{depth}</depth></size>']
    for o in objects:
        name, x1, y1, x2, y2 = o[:5]
        difficult = o[5] if len(o) > 5 else 0
        parts.append(f'<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>'
                     f'<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>'
                     f'<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>')
    parts.append('</annotation>')
    return '\n'.join(parts)


@pytest.fixture
def make_voc(tmp_path):
    """make_voc(images, split='trainval', classes=None, root=None) -> root.

    images: list of (image_id, width, height, objects) with objects (name, xmin, ymin, xmax, ymax[, difficult]) in
    1-based VOC coordinates, or (image_id, width, height, '<raw xml text>'). Writes random JPEGs of that size.
    """
    def make(images, split='trainval', classes=None, root=None):
        root = str(root or tmp_path / 'voc' / 'VOC2007')
        for sub in ('Annotations', os.path.join('ImageSets', 'Main'), 'JPEGImages'):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        rng = np.random.default_rng(0)
        for image_id, w, h, objects in images:
            cv2.imwrite(os.path.join(root, 'JPEGImages', image_id + '.jpg'),
                        rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            text = objects if isinstance(objects, str) else _xml(image_id, w, h, objects)
            with open(os.path.join(root, 'Annotations', image_id + '.xml'), 'w') as f:
                f.write(text)
        with open(os.path.join(root, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write(''.join(i[0] + '\n' for i in images))
        if classes is not None:
            with open(os.path.join(root, 'classes.txt'), 'w') as f:
                f.write(''.join(c + '\n' for c in classes))
        return root
    return make
