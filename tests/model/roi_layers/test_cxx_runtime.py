"""The ops' error messages where the process holds a second C++ runtime.

On a lent H100 (torch 2.11 built by one GCC toolchain, this extension by the machine's own GCC) every message of
the ops that held a number or a shape crashed the process (SIGSEGV), while messages of words alone worked. An
std::ostream formats numbers through the locale facets of its C++ runtime (std::num_put), and a facet looked up
across two runtimes is not found. Linking the extension with -static-libstdc++ gives it such a private runtime on
any machine: there, before the fix, the numbers silently vanished from the messages ("got [" instead of
"got [3, 5]"). The ops now build their messages without iostreams (lib/model/csrc/checks.h, FRCNN_CHECK).
"""
import os
import os.path as osp
import re
import subprocess
import sys
from glob import glob

import pytest

from emu_build import ASAN_ENV, CSRC, ROOT

HERE = osp.dirname(osp.abspath(__file__))

# The op test files whose CPU tests run against the statically linked build: their bad-input tests assert the
# messages, numbers and shapes included, and the rest check that this build computes what the usual one does.
TEST_FILES = ['test_nms.py', 'test_roi_align.py', 'test_roi_pool.py', 'test_roi_ops_shared.py', 'test_build.py']

SCRIPT = r'''
import sys
from torch.utils.cpp_extension import load
# PyInit__C is in ops.cpp, so the module is "_C"; lib.model.roi_layers then finds it under its usual name
module = load(name='_C', sources=sys.argv[1].split(','), build_directory=sys.argv[2], extra_cflags=['-O1'],
              extra_ldflags=['-static-libstdc++'], verbose=False)
sys.modules['lib.model._C'] = module
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-m', 'not cuda', *sys.argv[3:]]))
'''


def test_every_check_builds_its_message_without_iostreams():
    """TORCH_CHECK(cond, args...) streams its arguments into an std::ostringstream; the ops' checks must go
    through FRCNN_CHECK, whose message is a string already, so checks.h's definition is the one use."""
    uses = []
    for path in sorted(glob(osp.join(CSRC, '**', '*.*'), recursive=True)):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if re.search(r'\b(TORCH_CHECK|AT_ASSERT|TORCH_INTERNAL_ASSERT)\w*\(', line):
                    uses.append(f'{osp.relpath(path, CSRC)}:{number}: {line.strip()}')
    assert len(uses) == 1 and uses[0].startswith('checks.h:') and '#define FRCNN_CHECK' in uses[0], \
        '\n'.join(uses)


@pytest.mark.slow
def test_messages_with_a_private_cxx_runtime(tmp_path):
    """The CPU op tests, the message tests included, pass with the ops linked with -static-libstdc++."""
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        pytest.skip('torch.utils.cpp_extension.load needs ninja')
    sources = [osp.join(CSRC, 'ops.cpp')] + sorted(glob(osp.join(CSRC, 'cpu', '*.cpp')))
    build = osp.join(ROOT, 'build', 'static_libstdcxx')
    os.makedirs(build, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get('PYTHONPATH', '')]))
    env.pop(ASAN_ENV, None)
    run = subprocess.run([sys.executable, '-c', SCRIPT, ','.join(sources), build,
                          *[osp.join(HERE, name) for name in TEST_FILES]],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert re.search(r'\d+ passed', run.stdout) and 'failed' not in run.stdout, run.stdout[-3000:]
