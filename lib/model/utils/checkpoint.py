"""Checkpoint files: atomic writes, safe (``weights_only``) loads, and the RNG state needed to resume exactly.

A checkpoint is a dict of tensors and plain Python values (dict, list, tuple, str, int, float, bool, None), so that
``torch.load(weights_only=True)`` can read it without executing pickled code. ``save_checkpoint`` refuses anything
else up front, naming the offending key, instead of writing a file that cannot be loaded back.
"""
import os
import random
import re
import tempfile

import numpy as np
import torch

_PRIMITIVES = (str, int, float, bool, type(None))


def checkpoint_name(directory, session, epoch, step):
    """``{directory}/faster_rcnn_{session}_{epoch}_{step}.pth``, the original's naming."""
    return os.path.join(directory, f'faster_rcnn_{session}_{epoch}_{step}.pth')


def _check_loadable(value, where):
    """Raise TypeError if ``value`` holds anything ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, (torch.Tensor, torch.dtype, torch.device)) or isinstance(value, _PRIMITIVES):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f'checkpoint key {where}[{k!r}]: keys must be str or int, got {type(k).__name__}')
            _check_loadable(v, f'{where}[{k!r}]')
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_loadable(v, f'{where}[{i}]')
        return
    hint = ' (convert numpy arrays with .tolist() or torch.from_numpy)' if isinstance(value, np.ndarray) else ''
    raise TypeError(f'checkpoint value {where} has type {type(value).__name__}, which torch.load(weights_only=True) '
                    f'cannot read back{hint}')


def save_checkpoint(state, filename):
    """Write ``state`` to ``filename`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsync'ed, and only then renamed over
    ``filename`` (``os.replace`` is atomic on POSIX and Windows). A crash or kill at any point therefore leaves either
    the previous file or the complete new one under ``filename``, never a truncated file.
    """
    _check_loadable(state, 'state')
    filename = os.path.abspath(filename)
    directory = os.path.dirname(filename)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(filename) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return filename


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible on every platform (e.g. Windows), where it is skipped.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _what_is_there(filename, most=8):
    """For a missing checkpoint: the latest checkpoints of its folder (by session, epoch, step), or, when the
    folder <load_dir>/<net>/<dataset> does not exist, the <net>/<dataset> folders that <load_dir> has."""
    directory = os.path.dirname(os.path.abspath(filename))
    if os.path.isdir(directory):
        def order(name):
            numbers = re.findall(r'\d+', name)
            return [int(n) for n in numbers], name
        found = sorted((n for n in os.listdir(directory) if n.endswith('.pth')), key=order)
        if not found:
            return f'{directory} has no .pth files'
        shown = ', '.join(found[-most:])
        return f'{directory} has {shown}' if len(found) <= most else f'the latest {most} of {len(found)} in ' \
            f'{directory}: {shown}'
    load_dir = os.path.dirname(os.path.dirname(directory))
    if not os.path.isdir(load_dir):
        return f'{directory} does not exist, nor does {load_dir}'
    nets = [n for n in os.listdir(load_dir) if os.path.isdir(os.path.join(load_dir, n))]
    pairs = sorted(f'{n}/{d}' for n in nets for d in os.listdir(os.path.join(load_dir, n))
                   if os.path.isdir(os.path.join(load_dir, n, d)))
    return f'{directory} does not exist; {load_dir} has ' + (', '.join(pairs) or 'no <net>/<dataset> folders')


def load_checkpoint(filename, map_location='cpu'):
    """Load a checkpoint written by ``save_checkpoint`` (or the original's, if it holds only tensors and primitives).

    Uses ``torch.load(weights_only=True)``: no arbitrary code runs while loading a file from a shared directory.
    """
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} not found ({_what_is_there(filename)})')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f'could not load checkpoint {filename}: {e}') from e


def get_rng_state():
    """The Python, numpy, torch CPU and CUDA generator states, as tensors and plain lists."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python': {'version': py_version, 'internal': list(py_internal), 'gauss_next': py_gauss},
        'numpy': {'name': np_name, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss)},
        'torch': torch.get_rng_state(),
        'cuda': _cuda_rng_states(),
    }
    return state


def _cuda_rng_states():
    """Every GPU's generator state in one process (--mGPUs replicas draw on theirs); under torch.distributed only
    this process's own GPU, whose state is all a rank uses (and resumed ranks are re-seeded anyway), so rank 0's
    saves do not reach into the GPUs of the other ranks."""
    if not torch.cuda.is_available():
        return []
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return [torch.cuda.get_rng_state()]
    return torch.cuda.get_rng_state_all()


def set_rng_state(state):
    """Restore what ``get_rng_state`` returned. CUDA states are restored only for the devices present."""
    py = state['python']
    random.setstate((py['version'], tuple(py['internal']), py['gauss_next']))
    n = state['numpy']
    keys = n['keys'].numpy() if isinstance(n['keys'], torch.Tensor) else np.asarray(n['keys'])
    np.random.set_state((n['name'], keys.astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    torch.set_rng_state(state['torch'].cpu())
    cuda_states = state.get('cuda') or []
    if cuda_states and torch.cuda.is_available():
        n_dev = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n_dev):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
