#!/usr/bin/env bash
# README command (b): set up the environment, build, run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup_env.sh
# pytest exits 5 when it collects nothing: that is a failure too (set -e).
python -m pytest -q "$@"
