"""Atomic checkpoint writes, weights_only loads and the RNG round trip."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lib.model.utils import checkpoint as ckpt


def _state(value):
    return {'model': {'w': torch.full((3, 4), float(value))}, 'epoch': value, 'classes': ['__background__', 'a'],
            'cfg': {'ANCHOR_SCALES': [8, 16], 'PIXEL_MEANS': [[[1.0, 2.0, 3.0]]], 'EXP_DIR': 'x', 'X': None},
            'dtype': torch.float32}


def test_name_follows_the_original(tmp_path):
    assert ckpt.checkpoint_name(str(tmp_path), 1, 7, 10021) == os.path.join(str(tmp_path), 'faster_rcnn_1_7_10021.pth')


def test_round_trip_and_no_temp_left(tmp_path):
    f = tmp_path / 'sub' / 'c.pth'
    ckpt.save_checkpoint(_state(2), str(f))
    out = ckpt.load_checkpoint(str(f))
    assert out['epoch'] == 2 and out['classes'] == ['__background__', 'a']
    assert torch.equal(out['model']['w'], torch.full((3, 4), 2.0))
    assert out['cfg']['X'] is None and out['dtype'] == torch.float32
    assert os.listdir(f.parent) == ['c.pth']


def test_refuses_values_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['cfg'\]\['m'\].*ndarray.*tolist"):
        ckpt.save_checkpoint({'cfg': {'m': np.zeros(3)}}, str(tmp_path / 'c.pth'))
    assert not os.listdir(tmp_path)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    f = str(tmp_path / 'c.pth')
    ckpt.save_checkpoint(_state(1), f)

    def broken_save(obj, fileobj, *a, **k):
        fileobj.write(b'PARTIAL' * 100)
        raise OSError('disk full (simulated)')

    monkeypatch.setattr(ckpt.torch, 'save', broken_save)
    with pytest.raises(OSError, match='simulated'):
        ckpt.save_checkpoint(_state(2), f)
    assert os.listdir(tmp_path) == ['c.pth']
    assert ckpt.load_checkpoint(f)['epoch'] == 1


def test_process_killed_mid_write_keeps_previous_file(tmp_path):
    f = str(tmp_path / 'c.pth')
    ckpt.save_checkpoint(_state(1), f)
    marker = tmp_path / 'writing'
    # The child overwrites the checkpoint with a serializer that stops half way; we SIGKILL it there.
    code = textwrap.dedent(f"""
        import time, torch
        from lib.model.utils import checkpoint as ckpt
        def slow_save(obj, fileobj, *a, **k):
            fileobj.write(b'x' * 4096)
            fileobj.flush()
            open({str(marker)!r}, 'w').close()
            time.sleep(60)
        ckpt.torch.save = slow_save
        ckpt.save_checkpoint({{'epoch': 2}}, {f!r})
    """)
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=os.getcwd())
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, 'child exited before writing'
            assert time.time() < deadline, 'child never started writing'
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ckpt.load_checkpoint(f)['epoch'] == 1
    leftovers = [n for n in os.listdir(tmp_path) if n not in ('c.pth', 'writing')]
    assert all(n.startswith('.c.pth.') and n.endswith('.tmp') for n in leftovers)


def test_missing_file_lists_what_is_there(tmp_path):
    folder = tmp_path / 'res18' / 'shapes'
    folder.mkdir(parents=True)
    ckpt.save_checkpoint(_state(1), str(folder / 'faster_rcnn_1_1_9.pth'))
    with pytest.raises(FileNotFoundError, match=f'{folder} has faster_rcnn_1_1_9.pth'):
        ckpt.load_checkpoint(str(folder / 'faster_rcnn_1_2_9.pth'))
    # numbers order the names (string order would put 1_1_11 before 1_1_3), and the latest are shown
    for epoch in range(1, 4):
        for step in (3, 11, 649):
            (folder / f'faster_rcnn_1_{epoch}_{step}.pth').touch()
    with pytest.raises(FileNotFoundError) as e:
        ckpt.load_checkpoint(str(folder / 'faster_rcnn_1_5_649.pth'))
    assert str(e.value).endswith(f'(the latest 8 of 10 in {folder}: faster_rcnn_1_1_11.pth, faster_rcnn_1_1_649.pth, '
                                 'faster_rcnn_1_2_3.pth, faster_rcnn_1_2_11.pth, faster_rcnn_1_2_649.pth, '
                                 'faster_rcnn_1_3_3.pth, faster_rcnn_1_3_11.pth, faster_rcnn_1_3_649.pth)')
    # a <net>/<dataset> folder that does not exist: the ones that do are named
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "vgg16" / "shapes"} does not exist; {tmp_path} has '
                                                f'res18/shapes'):
        ckpt.load_checkpoint(str(tmp_path / 'vgg16' / 'shapes' / 'faster_rcnn_1_1_9.pth'))


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.randn(), torch.randn(2)  # move away from the seeded state
    ckpt.save_checkpoint({'rng': ckpt.get_rng_state()}, str(tmp_path / 'r.pth'))
    expected = (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_checkpoint(str(tmp_path / 'r.pth'))['rng'])
    assert (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist()) == expected


def test_cuda_rng_states_all_gpus_in_one_process_own_gpu_under_ddp(monkeypatch):
    import torch.distributed as dist
    from lib.model.utils import checkpoint
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: ['gpu0', 'gpu1'])
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': 'own gpu')
    monkeypatch.setattr(dist, 'is_initialized', lambda: False)
    assert checkpoint._cuda_rng_states() == ['gpu0', 'gpu1']
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    assert checkpoint._cuda_rng_states() == ['own gpu']
