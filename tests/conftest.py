"""Shared fixtures: every test starts from the default cfg, and CUDA tests skip cleanly without a GPU."""
import pytest
import torch

from lib.model.utils.config import cfg, reset_cfg


@pytest.fixture(autouse=True)
def _fresh_cfg():
    reset_cfg()
    yield
    reset_cfg()


@pytest.fixture
def tmp_data_dir(tmp_path):
    """cfg.DATA_DIR in a temporary folder, so caches and generated data never touch the repository's data/;
    the custom_* dataset root is unregistered afterwards."""
    from lib.datasets import factory
    cfg.DATA_DIR = str(tmp_path / 'data')
    yield cfg.DATA_DIR
    factory.set_custom_root(None)


DEVICES = ['cpu', pytest.param('cuda', marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
