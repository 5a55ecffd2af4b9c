"""Shared fixtures: every test starts from the default cfg, and CUDA tests skip cleanly without a GPU."""
import pytest
import torch

from lib.model.utils.config import reset_cfg


@pytest.fixture(autouse=True)
def _fresh_cfg():
    reset_cfg()
    yield
    reset_cfg()


DEVICES = ['cpu', pytest.param('cuda', marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
