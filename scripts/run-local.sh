#!/usr/bin/env bash
# The main job on one machine: set up (idempotent), then start a local broker + Redis + a worker, publish the
# sample images and print the results as they arrive. Extra arguments go to `segpipe demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec segpipe demo "$@"
