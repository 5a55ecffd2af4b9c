"""Fixtures for the data-layer tests: a temporary cfg.DATA_DIR and a tiny generated shapes set as custom_*."""
import pytest

from lib.datasets import factory


@pytest.fixture(autouse=True)
def _tmp_data_dir(tmp_data_dir):
    return tmp_data_dir


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory):
    """12 trainval + 4 test images, short side 64..120, aspect ratios 0.45..2.2 (some need cropping)."""
    from lib.datasets.shapes import generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('rdl_shapes') / 'VOC2007')
    return generate_shapes_dataset(root, num_train=12, num_test=4, seed=11, min_size=64, max_size=120, workers=1)


@pytest.fixture
def custom_shapes(shapes_root):
    """The tiny set registered as custom_trainval / custom_test."""
    factory.set_custom_root(shapes_root)
    return shapes_root
