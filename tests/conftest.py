"""Shared fixtures: every test starts from the default cfg, and CUDA tests skip cleanly without a GPU."""
import importlib.util
import os.path as osp

import pytest
import torch

from lib.model.utils.config import cfg, reset_cfg


@pytest.fixture(autouse=True)
def _fresh_cfg():
    reset_cfg()
    yield
    reset_cfg()


@pytest.fixture(scope='session')
def load_tool():
    """load_tool(name) imports tools/<name>.py (tools/ is a folder of scripts, not a package)."""
    root = osp.abspath(osp.join(osp.dirname(__file__), '..'))

    def load(name):
        spec = importlib.util.spec_from_file_location(name, osp.join(root, 'tools', f'{name}.py'))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


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
