#!/usr/bin/env bash
# Set up a development machine: a virtual environment with the CPU build of torch, the project (editable) with
# its test extras, and Debian's redis-server (tests and the demo run a real Redis). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 SAM2_BUILD_CUDA=0
python -m pip install -q -c requirements/cpu-constraints.txt torch==2.13.0
python -m pip install -q -c requirements/cpu-constraints.txt -e '.[test,dev]'

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
  else
    echo "redis-server is missing: run 'sudo apt-get install -y redis-server'" >&2
    exit 1
  fi
fi
echo "setup done: $(python -c 'import torch; print("torch", torch.__version__)'), $(redis-server --version | cut -d' ' -f1-3)"
