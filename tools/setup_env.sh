#!/usr/bin/env bash
# Creates .venv (Python 3.11 + pip), installs requirements.txt and builds the compiled ops in place.
# Sourced by tools/run_tests.sh and tools/run_main_job.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# The CUDA build of torch with its nvidia-* wheels takes about 6 GB in .venv, more while pip unpacks it: a full
# disk would otherwise surface as "OSError: [Errno 28]" in the middle of the install.
NEED_KB=$((8 * 1024 * 1024))
if ! python -c 'import torch' 2>/dev/null; then
  for d in .venv "${TMPDIR:-/tmp}"; do
    avail_kb=$(df -Pk "$d" | awk 'NR == 2 {print $4}')
    if [ "${avail_kb:-0}" -lt "$NEED_KB" ]; then
      echo "ERROR: $(cd "$d" && pwd) has $((avail_kb / 1024)) MiB free; installing torch needs about 8 GiB." \
           "Free some disk (old clones with a .venv take 6 GB each) and run again." >&2
      exit 1
    fi
  done
fi
echo "== installing requirements (torch and torchvision are pinned; no other torch is pulled)"
python -m pip install -q --disable-pip-version-check -r requirements.txt
# nvcc present -> the CUDA kernels are compiled too (no GPU needed to compile); FORCE_CPU=1 skips them.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
echo "== building the compiled ops (lib/model/_C)"
start=$(date +%s)
python setup.py -q build_ext --inplace
echo "== build done in $(( $(date +%s) - start )) s"
python -c "import lib.model.roi_layers as r; print('ops loaded; CUDA kernels compiled:', r.built_with_cuda())"
