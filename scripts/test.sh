#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite against real tiny models, a real Kafka-protocol
# broker (tansu) and a real redis-server. Extra arguments go to pytest (e.g. -m "not slow", -k dedup).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export SEGPIPE_CHECKPOINT_DIR=${SEGPIPE_CHECKPOINT_DIR:-$PWD/checkpoints}
python -m pipeline.checkpoints --out "$SEGPIPE_CHECKPOINT_DIR"
ruff check .
lint-imports
python -m pytest "$@"
