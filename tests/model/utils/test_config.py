"""The config: every default of the original's config.py, the cfgs/*.yml merges, --set overrides and their errors."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
import yaml

from lib.model.utils import config as config_mod
from lib.model.utils.config import cfg, cfg_from_file, cfg_from_list, get_output_dir

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))

# (dotted key, the original's default), typed out from jwyang/faster-rcnn.pytorch lib/model/utils/config.py.
ORIGINAL_DEFAULTS = [
    ('TRAIN.LEARNING_RATE', 0.001), ('TRAIN.MOMENTUM', 0.9), ('TRAIN.WEIGHT_DECAY', 0.0005),
    ('TRAIN.GAMMA', 0.1), ('TRAIN.STEPSIZE', [30000]), ('TRAIN.DISPLAY', 10), ('TRAIN.DOUBLE_BIAS', True),
    ('TRAIN.TRUNCATED', False), ('TRAIN.BIAS_DECAY', False), ('TRAIN.USE_GT', False),
    ('TRAIN.ASPECT_GROUPING', False), ('TRAIN.SNAPSHOT_KEPT', 3), ('TRAIN.SUMMARY_INTERVAL', 180),
    ('TRAIN.SCALES', (600,)), ('TRAIN.MAX_SIZE', 1000), ('TRAIN.TRIM_HEIGHT', 600), ('TRAIN.TRIM_WIDTH', 600),
    ('TRAIN.IMS_PER_BATCH', 1), ('TRAIN.BATCH_SIZE', 128), ('TRAIN.FG_FRACTION', 0.25),
    ('TRAIN.FG_THRESH', 0.5), ('TRAIN.BG_THRESH_HI', 0.5), ('TRAIN.BG_THRESH_LO', 0.1),
    ('TRAIN.USE_FLIPPED', True), ('TRAIN.BBOX_REG', True), ('TRAIN.BBOX_THRESH', 0.5),
    ('TRAIN.SNAPSHOT_ITERS', 5000), ('TRAIN.SNAPSHOT_PREFIX', 'res101_faster_rcnn'),
    ('TRAIN.BBOX_NORMALIZE_TARGETS', True), ('TRAIN.BBOX_INSIDE_WEIGHTS', (1.0, 1.0, 1.0, 1.0)),
    ('TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED', True), ('TRAIN.BBOX_NORMALIZE_MEANS', (0.0, 0.0, 0.0, 0.0)),
    ('TRAIN.BBOX_NORMALIZE_STDS', (0.1, 0.1, 0.2, 0.2)), ('TRAIN.PROPOSAL_METHOD', 'gt'),
    ('TRAIN.HAS_RPN', True), ('TRAIN.RPN_POSITIVE_OVERLAP', 0.7), ('TRAIN.RPN_NEGATIVE_OVERLAP', 0.3),
    ('TRAIN.RPN_CLOBBER_POSITIVES', False), ('TRAIN.RPN_FG_FRACTION', 0.5), ('TRAIN.RPN_BATCHSIZE', 256),
    ('TRAIN.RPN_NMS_THRESH', 0.7), ('TRAIN.RPN_PRE_NMS_TOP_N', 12000), ('TRAIN.RPN_POST_NMS_TOP_N', 2000),
    ('TRAIN.RPN_MIN_SIZE', 8), ('TRAIN.RPN_BBOX_INSIDE_WEIGHTS', (1.0, 1.0, 1.0, 1.0)),
    ('TRAIN.RPN_POSITIVE_WEIGHT', -1.0), ('TRAIN.USE_ALL_GT', True), ('TRAIN.BN_TRAIN', False),
    ('TEST.SCALES', (600,)), ('TEST.MAX_SIZE', 1000), ('TEST.NMS', 0.3), ('TEST.SVM', False),
    ('TEST.BBOX_REG', True), ('TEST.HAS_RPN', False), ('TEST.PROPOSAL_METHOD', 'gt'),
    ('TEST.RPN_NMS_THRESH', 0.7), ('TEST.RPN_PRE_NMS_TOP_N', 6000), ('TEST.RPN_POST_NMS_TOP_N', 300),
    ('TEST.RPN_MIN_SIZE', 16), ('TEST.MODE', 'nms'), ('TEST.RPN_TOP_N', 5000),
    ('RESNET.MAX_POOL', False), ('RESNET.FIXED_BLOCKS', 1),
    ('MOBILENET.REGU_DEPTH', False), ('MOBILENET.FIXED_LAYERS', 5), ('MOBILENET.WEIGHT_DECAY', 0.00004),
    ('MOBILENET.DEPTH_MULTIPLIER', 1.0),
    ('DEDUP_BOXES', 1. / 16.), ('RNG_SEED', 3), ('EPS', 1e-14), ('MATLAB', 'matlab'), ('EXP_DIR', 'default'),
    ('USE_GPU_NMS', True), ('GPU_ID', 0), ('POOLING_MODE', 'crop'), ('POOLING_SIZE', 7),
    ('MAX_NUM_GT_BOXES', 20), ('ANCHOR_SCALES', [8, 16, 32]), ('ANCHOR_RATIOS', [0.5, 1, 2]),
    ('FEAT_STRIDE', [16]), ('CUDA', False), ('CROP_RESIZE_WITH_MAX_POOL', True),
]

# Keys this project added on top of the original's.
ADDED_KEYS = {'INPUT_FORMAT', 'PYTORCH_PIXEL_MEANS', 'PYTORCH_PIXEL_STDS', 'CHANNELS_LAST'}


def _get(key):
    d = cfg
    for part in key.split('.'):
        d = d[part]
    return d


def _leaf_keys(d, prefix=''):
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _leaf_keys(v, prefix + k + '.')
        else:
            out.add(prefix + k)
    return out


@pytest.mark.parametrize('key,expected', ORIGINAL_DEFAULTS, ids=[k for k, _ in ORIGINAL_DEFAULTS])
def test_default_matches_original(key, expected):
    value = _get(key)
    assert type(value) is type(expected), f'{key}: {type(value).__name__} vs {type(expected).__name__}'
    assert value == expected


def test_non_scalar_defaults():
    np.testing.assert_array_equal(cfg.PIXEL_MEANS, np.array([[[102.9801, 115.9465, 122.7717]]]))
    assert cfg.PIXEL_MEANS.shape == (1, 1, 3)
    assert cfg.ROOT_DIR == ROOT
    assert cfg.DATA_DIR == osp.join(ROOT, 'data')


def test_every_key_is_accounted_for():
    table = {k for k, _ in ORIGINAL_DEFAULTS} | {'PIXEL_MEANS', 'ROOT_DIR', 'DATA_DIR'}
    assert _leaf_keys(cfg) == table | ADDED_KEYS
    assert config_mod.UNUSED_KEYS <= table


@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(ROOT, 'cfgs', '*.yml'))),
                         ids=lambda p: osp.basename(p))
def test_every_cfg_file_merges(path):
    cfg_from_file(path)
    with open(path) as f:
        raw = yaml.safe_load(f)

    def check(section, d):
        for k, v in section.items():
            if isinstance(v, dict):
                check(v, d[k])
            elif isinstance(d[k], np.ndarray):
                np.testing.assert_allclose(d[k].ravel(), np.ravel(v))
            elif isinstance(d[k], tuple):
                assert d[k] == tuple(v)
            else:
                assert d[k] == v, k
    check(raw, cfg)


def test_res101_yml_values():
    cfg_from_file(osp.join(ROOT, 'cfgs', 'res101.yml'))
    assert cfg.TRAIN.BATCH_SIZE == 128
    assert cfg.TRAIN.WEIGHT_DECAY == 0.0001
    assert cfg.TRAIN.DOUBLE_BIAS is False
    assert cfg.TRAIN.BG_THRESH_LO == 0.0
    assert cfg.POOLING_MODE == 'align'
    assert cfg.TEST.HAS_RPN is True
    # untouched keys keep their defaults
    assert cfg.TRAIN.SCALES == (600,)


def test_res101_ls_yml_values():
    cfg_from_file(osp.join(ROOT, 'cfgs', 'res101_ls.yml'))
    assert cfg.TRAIN.SCALES == (800,)
    assert cfg.TEST.SCALES == (800,)
    assert cfg.TEST.MAX_SIZE == 1200
    assert cfg.TEST.RPN_POST_NMS_TOP_N == 1000


def test_every_backbone_has_an_ls_file():
    names = {osp.basename(p)[:-4] for p in glob.glob(osp.join(ROOT, 'cfgs', '*.yml'))}
    for net in ['vgg16', 'res18', 'res34', 'res50', 'res101', 'res152']:
        assert net in names and net + '_ls' in names, net


def test_cfg_from_list_dotted_and_literal_values():
    cfg_from_list(['TRAIN.SCALES', '[800, 900]', 'POOLING_MODE', 'pool', 'TRAIN.FG_THRESH', '1',
                   'ANCHOR_SCALES', '[4, 8]', 'TRAIN.USE_FLIPPED', 'False', 'PIXEL_MEANS', '[1, 2, 3]'])
    assert cfg.TRAIN.SCALES == (800, 900)          # a list for a tuple key keeps the tuple type
    assert cfg.POOLING_MODE == 'pool'              # not a literal: taken as a string
    assert cfg.TRAIN.FG_THRESH == 1.0 and isinstance(cfg.TRAIN.FG_THRESH, float)
    assert cfg.ANCHOR_SCALES == [4, 8]
    assert cfg.TRAIN.USE_FLIPPED is False
    assert cfg.PIXEL_MEANS.shape == (1, 1, 3) and cfg.PIXEL_MEANS[0, 0, 2] == 3.0


def test_unknown_key_names_key_and_closest():
    with pytest.raises(KeyError) as e:
        cfg_from_list(['TRAIN.SCALE', '[800]'])
    msg = str(e.value)
    assert "'TRAIN.SCALE' is not a valid config key" in msg
    assert 'TRAIN.SCALES' in msg
    with pytest.raises(KeyError, match='POOLING_MODE'):
        cfg_from_list(['POOLING_MOD', 'align'])
    with pytest.raises(KeyError, match="'NOPE.X'"):
        cfg_from_list(['NOPE.X', '1'])


def test_unknown_key_in_file_names_file(tmp_path):
    p = tmp_path / 'bad.yml'
    p.write_text('TRAIN:\n  BATCH_SIZ: 64\n')
    with pytest.raises(KeyError) as e:
        cfg_from_file(str(p))
    assert str(p) in str(e.value) and 'TRAIN.BATCH_SIZ' in str(e.value) and 'TRAIN.BATCH_SIZE' in str(e.value)


@pytest.mark.parametrize('key,value,expected_type', [
    ('TRAIN.BATCH_SIZE', '12.5', 'int'),
    ('TRAIN.FG_THRESH', "'high'", 'float'),
    ('TRAIN.USE_FLIPPED', '1', 'bool'),
    ('POOLING_MODE', '3', 'str'),
    ('TRAIN.SCALES', '600', 'tuple'),
    ('ANCHOR_SCALES', "['a']", 'list'),
    ('PIXEL_MEANS', '[1, 2]', 'array'),
])
def test_wrong_type_names_key_type_and_value(key, value, expected_type):
    before = _get(key)
    with pytest.raises(ValueError) as e:
        cfg_from_list([key, value])
    msg = str(e.value)
    assert key in msg and f'expected {expected_type}' in msg and value.strip("'") in msg
    after = _get(key)
    assert np.array_equal(after, before)           # a refused value leaves the key untouched


def test_wrong_type_in_file(tmp_path):
    p = tmp_path / 'bad.yml'
    p.write_text('TRAIN:\n  BATCH_SIZE: many\n')
    with pytest.raises(ValueError, match=r'bad\.yml: config key TRAIN\.BATCH_SIZE: expected int'):
        cfg_from_file(str(p))


def test_section_given_a_scalar_is_refused(tmp_path):
    p = tmp_path / 'bad.yml'
    p.write_text('TRAIN: 3\n')
    with pytest.raises(ValueError, match='config key TRAIN: expected EasyDict'):
        cfg_from_file(str(p))


def test_odd_set_list_is_refused():
    with pytest.raises(ValueError, match='KEY VALUE pairs'):
        cfg_from_list(['TRAIN.SCALES'])


def test_get_output_dir(tmp_path):
    cfg.ROOT_DIR = str(tmp_path)
    cfg.EXP_DIR = 'res101'

    class Imdb:
        name = 'voc_2007_test'
    out = get_output_dir(Imdb(), 'faster_rcnn_10')
    assert out == osp.join(str(tmp_path), 'output', 'res101', 'voc_2007_test', 'faster_rcnn_10')
    assert os.path.isdir(out)
    assert get_output_dir(Imdb(), None).endswith(osp.join('voc_2007_test', 'default'))
