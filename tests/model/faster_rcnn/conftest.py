"""Small settings for model tests: tiny images need small anchors and few rois to stay fast on a CPU."""
import pytest

from lib.model.utils.config import cfg


@pytest.fixture
def tiny_cfg():
    cfg.ANCHOR_SCALES = [1, 2, 4]
    cfg.TRAIN.RPN_PRE_NMS_TOP_N = 300
    cfg.TRAIN.RPN_POST_NMS_TOP_N = 40
    cfg.TEST.RPN_PRE_NMS_TOP_N = 300
    cfg.TEST.RPN_POST_NMS_TOP_N = 20
    cfg.TRAIN.RPN_BATCHSIZE = 64
    cfg.TRAIN.BATCH_SIZE = 16
    cfg.POOLING_MODE = 'align'
    return cfg
