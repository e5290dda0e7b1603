#!/usr/bin/env bash
# Every GPU check in one go, results in OUTDIR (default bench/results/gpu):
#   training speed at 16, 32, 64 (batch 16; fp32, tf32, bf16) and at 256, 1024 (batch 4),
#   then a short bf16 run of `progressive train` on the built-in data, resumed once.
#     bash bench/gpu.sh [OUTDIR] [PYTHON]
set -u -o pipefail
out=${1:-bench/results/gpu}
py=${2:-python3}
mkdir -p "$out"
log="$out/gpu.log"
export PYTHONUNBUFFERED=1
runs=$(mktemp -d)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"
  echo "== training speed, batch 16"
  "$py" bench/bench_train.py --device cuda --res 16 32 64 --batch 16 \
    --precision no tf32 bf16 --out "$out/train.json"
  echo "== training speed, batch 4"
  "$py" bench/bench_train.py --device cuda --res 256 1024 --batch 4 --steps 10 \
    --precision no bf16 --out "$out/train_large.json"
  echo "== progressive train, bf16, then resumed"
  time "$py" -m progressive train --preset demo --max-res 32 --total-kimg 8 \
    --mixed-precision bf16 --workers 4 --out "$runs"
  time "$py" -m progressive train --preset demo --max-res 32 --total-kimg 12 \
    --mixed-precision bf16 --workers 4 --out "$runs" --resume auto
  run=$(ls -d "$runs"/demo*/ | head -1)
  ls "$run"
  cp "$run/stats.jsonl" "$out/stats.jsonl"
  cp "$(ls "$run"/samples-*.png | tail -1)" "$out/samples.png"
  cp "$(ls "$run"/reconstructions-*.png | tail -1)" "$out/reconstructions.png"
} 2>&1 | tee "$log"
