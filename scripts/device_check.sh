#!/usr/bin/env bash
# Device check: the CNN trainer (trainer.cnn) on a GPU for a fixed number of steps in float32,
# mixed_float16, and mixed_float16 + XLA; prints images/s and the input-wait share of each and
# the mixed-precision speed-up (goal on a recent GPU: mixed_float16 >= 2x float32).
# Budget: under 5 minutes including start-up on a GPU machine.
#
#   scripts/device_check.sh                          # GPU required; real sample at ../shared/data/isic-uda1
#   scripts/device_check.sh --data synthetic         # the embedded synthetic dataset (no download)
#   scripts/device_check.sh --allow-cpu --steps 3 --epochs 2 --batch-size 8 --image-size 64
#                                                    # a CPU smoke run (float16 on a CPU is very slow)
#
# Options: --data DIR|synthetic (default $DATA or ../shared/data/isic-uda1), --workdir DIR
# (default out/device-check), --image-size N (default 256, the study's), --batch-size N (default
# 64), --steps N per epoch (default 12; the trainer caps it at one pass over the training split,
# 7 steps of 64 for the sample's ~396 training images), --epochs N (default 6; epoch 1 holds
# tracing, XLA compilation and the memory-cache fill and is left out of the figures),
# --architecture study|compact (default study), --allow-cpu.
# Figures come from the trainer's history.json (per-epoch images_per_s, input_wait_share, measured
# by trainer.core.runtime.StepTimeMeter with the first step of each epoch left out).
set -euo pipefail

cd "$(dirname "$0")/.."
DATA_DIR="${DATA:-../shared/data/isic-uda1}"
WORKDIR="out/device-check"
STEPS=12
EPOCHS=6
BATCH=64
SIZE=256
ARCH=study
ALLOW_CPU=0
die() { echo "device_check: error: $*" >&2; exit 2; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --allow-cpu) ALLOW_CPU=1; shift ;;
    --steps) positive --steps "${2-}"; STEPS="$2"; shift 2 ;;
    --epochs) positive --epochs "${2-}"; EPOCHS="$2"; shift 2 ;;
    --batch-size) positive --batch-size "${2-}"; BATCH="$2"; shift 2 ;;
    --image-size) positive --image-size "${2-}"; SIZE="$2"; shift 2 ;;
    --data) DATA_DIR="${2:?--data needs a folder or 'synthetic'}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a folder}"; shift 2 ;;
    --architecture) ARCH="${2:?--architecture needs a name}"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
(( EPOCHS >= 2 )) || die "--epochs must be at least 2 (epoch 1 is warm-up and not reported), got $EPOCHS"

if [[ -x .venv/bin/python ]]; then PY="${PY:-.venv/bin/python}"; else PY="${PY:-python3}"; fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONHASHSEED=0
START=$SECONDS

# 1. A GPU, or an explicit --allow-cpu.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
  TF_GPUS=$("$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null | tail -1)
  if [[ "$TF_GPUS" != [1-9]* ]]; then
    (( ALLOW_CPU )) || die "nvidia-smi sees a GPU but TensorFlow ($PY) sees none: install a CUDA build (pip install 'tensorflow[and-cuda]'), or pass --allow-cpu"
    echo "device_check: TensorFlow sees no GPU; running on the CPU (--allow-cpu)"
  fi
elif (( ALLOW_CPU )); then
  echo "device_check: no NVIDIA GPU visible (nvidia-smi missing or failing); running on the CPU (--allow-cpu)"
else
  die "no NVIDIA GPU visible (nvidia-smi missing or failing). This check is for a GPU machine; pass --allow-cpu to run it on the CPU anyway"
fi

# 2. The dataset at --image-size, most images in train so an epoch holds the steps asked for.
mkdir -p "$WORKDIR"
DATASET="$WORKDIR/data"
if [[ "$DATA_DIR" == synthetic ]]; then INPUT_FLAG=(); else
  [[ -d "$DATA_DIR" ]] || die "--data folder '$DATA_DIR' not found (the real sample lives at ../shared/data/isic-uda1 beside the checkout; use --data synthetic for the embedded dataset)"
  INPUT_FLAG=("--input=$DATA_DIR")
fi
if [[ ! -f "$DATASET/manifest.json" || "$(cat "$WORKDIR/data.source" 2>/dev/null)" != "$DATA_DIR $SIZE" ]]; then
  "$PY" -m beam_jobs.preprocess --runner=DirectRunner "${INPUT_FLAG[@]}" --output="$DATASET" \
      --image_size="$SIZE" --split=90,5,5 --overwrite > "$WORKDIR/preprocess.log" 2>&1 \
    || { tail -20 "$WORKDIR/preprocess.log" >&2; die "preprocess failed (log: $WORKDIR/preprocess.log)"; }
  echo "$DATA_DIR $SIZE" > "$WORKDIR/data.source"
fi
echo "dataset: $DATASET from $DATA_DIR ($(( SECONDS - START )) s so far)"

# 3. Three runs of the trainer, each in a fresh run folder (a kept one would resume).
run_variant() {  # name, --mixed_precision value, --jit_compile value
  local run="$WORKDIR/runs/$1"
  rm -rf "$run"
  "$PY" -m trainer.cnn --data_dir="$DATASET" --workdir="$run" --image_size="$SIZE" \
      --architecture="$ARCH" --batch_size="$BATCH" --epochs="$EPOCHS" --steps_per_epoch="$STEPS" \
      --mixed_precision="$2" --jit_compile="$3" --cache=memory --seed=0 \
      --evaluate=false --export=false --keras_verbose=0 > "$WORKDIR/$1.log" 2>&1 \
    || { tail -30 "$WORKDIR/$1.log" >&2; die "trainer run $1 failed (log: $WORKDIR/$1.log)"; }
  echo "ran $1 ($(( SECONDS - START )) s so far)"
}
run_variant float32 off false
run_variant mixed_float16 mixed_float16 false
run_variant mixed_float16_xla mixed_float16 true

# 4. The figures, from each run's history.json (epochs 2.. only).
"$PY" - "$WORKDIR/runs" <<'EOF'
import json, math, os, sys

runs = sys.argv[1]
rows = []
for name in ("float32", "mixed_float16", "mixed_float16_xla"):
    with open(os.path.join(runs, name, "history.json")) as f:
        history = json.load(f)
    with open(os.path.join(runs, name, "train_summary.json")) as f:
        policy = json.load(f)["policy"]
    missing = [k for k in ("images_per_s", "input_wait_share") if k not in history]
    if missing:
        sys.exit(f"device_check: error: {name}/history.json lacks {missing}")
    rates = [v for v in history["images_per_s"][1:] if v is not None]
    waits = [v for v in history["input_wait_share"][1:] if v is not None]
    if not rates or not waits:
        sys.exit(f"device_check: error: {name}/history.json has no measured epoch after the "
                 f"first: {history}")
    rows.append((name, policy, sum(rates) / len(rates), sum(waits) / len(waits), len(rates)))
base = rows[0][2]
print(f"\n{'run':<20}{'policy':<16}{'images/s':>10}{'input wait':>12}{'x float32':>11}  epochs")
for name, policy, rate, wait, n in rows:
    print(f"{name:<20}{policy:<16}{rate:>10.1f}{wait:>11.1%}{rate / base:>11.2f}  {n}")
best = max(rows[1][2], rows[2][2]) / base
print(f"\nmixed precision speed-up over float32: {best:.2f}x "
      f"(goal on a recent GPU: >= 2x -> {'met' if best >= 2 else 'NOT met'})")
if not all(math.isfinite(r[2]) and r[2] > 0 for r in rows):
    sys.exit("device_check: error: a run reported no positive finite images/s")
EOF
echo "total: $(( SECONDS - START )) s (budget on a GPU machine: 300 s)"
