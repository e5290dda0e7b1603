#!/usr/bin/env bash
# The GPU check, from a fresh clone: a virtual environment with the project installed, then
# each step below with PASS/FAIL, its seconds, and a summary at the end (bench/README.md, "GPU
# check"). About 8 minutes on one GPU; --cpu runs the same steps scaled down on the CPU.
#
#   bash bench/gpu_check.sh [--cpu] [--venv DIR] [--system-site-packages] [--out DIR]
#
# --venv DIR: the environment to create (default .venv-check; an existing one is reused and
# the project installed into it again); --system-site-packages: let it see the system's
# packages (a GPU image's own torch); --out DIR: logs, runs and results (default
# bench/results/gpu_check).
set -euo pipefail

# ---- every `progressive train` option this script uses, in one place -----------------------
OUTDIR_OPT=(--outdir)                      # the folder of run folders
PRECISION_OPT=(--mixed-precision)          # followed by no, bf16 or fp16
START_RES_OPT=(--set)                      # followed by schedule.start_res=RES
RESEARCH_OPTS=(--set networks.pca_path=true --set loss.energy_r1=0.1
               --set loss.langevin_steps=5)  # PCA path, R1, Langevin
GPU_DEFAULT_TO_128=(--max-res 1024 --fade-kimg 0.5 --stable-kimg 0.5 --total-kimg 5)
GPU_HQ_256_TO_1024=(--preset celebahq1024 --fade-kimg 0.016 --stable-kimg 0.016
                    --total-kimg 0.08)
GPU_SHORT_RUN=(--max-res 32 --fade-kimg 1 --stable-kimg 1 --total-kimg 4)
CPU_DEFAULT_TO_128=(--max-res 1024 --fade-kimg 0.016 --stable-kimg 0.016 --total-kimg 0.152
                    --set run.eval_images=8)
CPU_HQ_256_TO_1024=(--preset celebahq1024 --fade-kimg 0.002 --stable-kimg 0.002
                    --total-kimg 0.008 --batch 2 --fmap-base 2048 --fmap-max 64 --latent 64
                    --set run.eval_images=0 --workers 0)
CPU_SHORT_RUN=(--max-res 16 --fade-kimg 0.016 --stable-kimg 0.016 --total-kimg 0.08
               --latent 16 --set run.eval_images=8)
# ---------------------------------------------------------------------------------------------

cpu=0
venv=.venv-check
system_site=()
out=bench/results/gpu_check
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu) cpu=1 ;;
    --venv) venv=$2; shift ;;
    --system-site-packages) system_site=(--system-site-packages) ;;
    --out) out=$2; shift ;;
    *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
runs=$out/runs
export PYTHONUNBUFFERED=1
start=$SECONDS

# The runs of one kind of machine: its settings' prefix above (CPU or GPU), then the dataset's
# images, the images each evaluation uses and the seconds a step may take.
machine_settings() {
  local default="$1_DEFAULT_TO_128[@]" hq="$1_HQ_256_TO_1024[@]" short="$1_SHORT_RUN[@]"
  default_to_128=("${!default}")
  hq_256_to_1024=("${!hq}")
  short_run=("${!short}")
  data_count=$2 eval_n=$3 step_limit=$4
}

if [[ $cpu == 1 ]]; then
  export ACCELERATE_USE_CPU=1 CUDA_VISIBLE_DEVICES=""
  device=cpu
  # 420 s a step: the 1024 px grids of the celebahq1024 step take minutes on a loaded CPU.
  machine_settings CPU 40 4 420
  speed_args=(--device cpu --res 4 8 16 --widths demo --batch 4 --steps 2 --warmup 1)
else
  device=cuda
  machine_settings GPU 64 16 240
  speed_args=(--device cuda --res 4 8 16 32 64 128 256 512 1024 --batch 4 --steps 5 --warmup 2)
fi

echo "== environment: $venv"
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "${system_site[@]}" "$venv"
fi
"$venv/bin/python" -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c "import progressive" || { echo "the project did not install" >&2; exit 1; }
py=$venv/bin/python
bin=$venv/bin
{
  if [[ $cpu == 0 ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  fi
  "$py" -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate',
accelerate.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/machine.txt"

results=()
train() { "$py" -m progressive train "${OUTDIR_OPT[@]}" "$runs" "$@"; }

# step NAME COMMAND...: run it (a command or a function below, in a shell that stops at the
# first failure) with a time limit, log it, record PASS/FAIL and seconds.
step() {
  local name=$1; shift
  local log=$out/$name.log t0=$SECONDS verdict=PASS
  local setup
  setup="$(declare -p py bin out runs data device cpu eval_n default_to_128 hq_256_to_1024 \
    short_run speed_args OUTDIR_OPT PRECISION_OPT START_RES_OPT RESEARCH_OPTS)
$(declare -f train stats_have default_run hq_run precision_run research_run evaluate_1024 \
    speed)
set -euo pipefail"
  echo "== $name"
  if ! timeout "$step_limit" bash -c "$setup"$'\n''"$@"' step "$@" >"$log" 2>&1; then
    verdict=FAIL
  fi
  tail -n 4 "$log" | sed 's/^/   /'
  results+=("$(printf '%-4s %4ds  %s' "$verdict" $((SECONDS - t0)) "$name")")
}

# A small dataset at 1024 px (synthetic images) for the runs that take --data.
data=$out/data-1024
"$bin/make-lmdb" synthetic "$data_count" "$data" --max-res 1024 --encoding compact \
  >"$out/data.log" 2>&1

stats_have() {  # stats_have RUN KEY...: the run's last stats line is finite and has each KEY
  "$py" - "$@" <<'EOF'
import json, math, sys
from pathlib import Path
run, keys = Path(sys.argv[1]), sys.argv[2:]
last = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
missing = [k for k in keys if k not in last]
bad = [k for k, v in last.items() if isinstance(v, float) and not math.isfinite(v)
       and not k.startswith("grad_norm")]
print(f"{run.name}: res {last.get('res')}, keys missing {missing}, non-finite {bad}")
sys.exit(1 if missing or bad else 0)
EOF
}

default_run() {  # the default run for 1024 px, stopped in the 128 px stage
  train "${default_to_128[@]}" --name default-1024
  stats_have "$runs/default-1024" rec
  "$py" -c "import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1])['res'];
sys.exit(0 if r == 128 else f'ended at {r} px, not 128')" "$runs/default-1024/stats.jsonl"
}
hq_run() {  # the celebahq1024 preset from 256 to 1024 px, launched by accelerate
  local on_cpu=()
  if [[ $cpu == 1 ]]; then on_cpu=(--cpu); fi
  "$bin/accelerate" launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no "${on_cpu[@]}" -m progressive train \
    "${OUTDIR_OPT[@]}" "$runs" "${hq_256_to_1024[@]}" "${START_RES_OPT[@]}" schedule.start_res=256 \
    --data "$data" --name hq-256-1024
  stats_have "$runs/hq-256-1024" rec
}
precision_run() {  # a short run in precision $1
  train "${short_run[@]}" "${PRECISION_OPT[@]}" "$1" --data "$data" --name "run-$1"
  stats_have "$runs/run-$1" rec
}
research_run() {  # PCA path, R1 and Langevin negatives in training
  train "${short_run[@]}" "${RESEARCH_OPTS[@]}" --data "$data" --name research
  stats_have "$runs/research" rec energy_r1 langevin_move
}
evaluate_1024() {  # evaluation at 1024 px, with its peak host and GPU memory
  "$py" bench/peaks_of.py evaluate --ckpt "$runs/hq-256-1024" --data "$data" --res 1024 \
    --n "$eval_n" --metrics swd,recon --device "$device"
}
speed() {  # bf16 against fp32, images/s at each stage's resolution
  "$py" bench/bench_train.py "${speed_args[@]}" --precision no bf16 --out "$out/speed.json"
}

step default-1024-to-128 default_run
step celebahq1024-256-to-1024-accelerate hq_run
step precision-check-fp16-bf16 "$py" bench/check_precision.py --device "$device"
step train-fp16 precision_run fp16
step train-bf16 precision_run bf16
step pca-path-r1-langevin research_run
step evaluate-1024-peaks evaluate_1024
step speed-bf16-vs-fp32 speed

total=$((SECONDS - start))
{
  echo
  echo "== summary ($device; $(head -n 1 "$out/machine.txt"))"
  printf '%s\n' "${results[@]}"
  grep -h "^peaks:" "$out/evaluate-1024-peaks.log" | sed 's/^/     evaluate 1024: /' || true
  grep -hE "^(PASS|FAIL) fp16 (generator|inference)" "$out/precision-check-fp16-bf16.log" |
    sed 's/^/     /' || true
  grep -hE "^\| *[0-9]+ \|" "$out/speed-bf16-vs-fp32.log" | sed 's/^/     /' || true
  budget=$([[ $cpu == 1 ]] && echo 600 || echo 480)
  echo "total ${total}s (budget ${budget}s: $([[ $total -le $budget ]] && echo within || echo OVER))"
} | tee "$out/summary.txt"
! grep -q "^FAIL" "$out/summary.txt"
