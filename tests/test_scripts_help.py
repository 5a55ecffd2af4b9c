"""Every script's --help runs and lists the original's flags (plus ours)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))

TRAIN_FLAGS = ['--dataset', '--net', '--start_epoch', '--epochs', '--disp_interval', '--checkpoint_interval',
               '--save_dir', '--nw', '--cuda', '--ls', '--mGPUs', '--bs', '--cag', '--o', '--lr', '--lr_decay_step',
               '--lr_decay_gamma', '--s', '--r', '--checksession', '--checkepoch', '--checkpoint', '--use_tfb',
               '--cfg', '--set', '--amp', '--amp_dtype', '--seed', '--data_path', '--weights', '--max_iters',
               '--deterministic']
TEST_FLAGS = ['--dataset', '--cfg', '--net', '--set', '--load_dir', '--cuda', '--ls', '--mGPUs', '--cag',
              '--checksession', '--checkepoch', '--checkpoint', '--vis', '--data_path', '--thresh', '--max_per_image',
              '--nw', '--seed', '--amp', '--bn_stats', '--bs', '--parallel_type']
DEMO_FLAGS = ['--dataset', '--cfg', '--net', '--set', '--load_dir', '--image_dir', '--cuda', '--mGPUs', '--cag',
              '--checksession', '--checkepoch', '--checkpoint', '--vis', '--webcam_num', '--output_dir', '--thresh',
              '--bn_stats', '--bs', '--parallel_type']


@pytest.mark.parametrize('script,flags', [('trainval_net.py', TRAIN_FLAGS), ('test_net.py', TEST_FLAGS),
                                          (os.path.join('tools', 'demo.py'), DEMO_FLAGS)])
def test_help_lists_flags(script, flags):
    # run from another directory: the scripts must not depend on the working directory to import lib
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), '--help'], cwd=os.path.dirname(ROOT),
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'PYTHONPATH': ROOT if 'tools' not in script else ''})
    assert out.returncode == 0, out.stderr
    words = set(out.stdout.replace(',', ' ').replace('[', ' ').replace(']', ' ').split())
    missing = [f for f in flags if f not in words]
    assert not missing, f'{script} --help lacks {missing}'


def test_gpu_checks_refuses_an_unknown_stage_before_building(tmp_path):
    # on a lent GPU every minute counts: a misspelt stage must fail at once, not after the build
    out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'gpu_checks.sh'), 'ops', 'tarin'], capture_output=True,
                         text=True, timeout=60, env={**os.environ, 'OUT': str(tmp_path)})
    assert out.returncode == 2
    assert "unknown stage 'tarin'; expected pretrain, ops, bench, layout or train" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran: no summary, no build log
