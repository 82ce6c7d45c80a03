#!/usr/bin/env bash
# Every GPU check in one run, for a session lent a GPU (about 6 minutes on an H100/H200):
#   1. benchmarks/speed.py on the CPU default and the paper's MNIST, CIFAR-10 and CamVid settings;
#   2. the paper's full MNIST row: LeNet-5 teacher, then DFAD at Table 7's settings (accuracy);
#   3. short runs in 16-mixed and bf16-mixed precision;
#   4. the tests marked `gpu`.
# Prepare with benchmarks/gpu_bundle.sh here, then run there with carry [".device-data"]:
#   bash benchmarks/gpu_checks.sh            (DRY=1: only check here that every command composes)
# Each step's output goes to $OUT/gpu_checks.log and every run's results.json to $OUT/results.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/.device-data/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_checks}
RUNS=/tmp/gpu_runs
DATA=.device-data
mkdir -p "$OUT" "$RUNS"

train() {  # train.py with a run directory under $RUNS; DRY=1 only composes the config
  local name=$1; shift
  if [ -n "${DRY:-}" ]; then
    $PY train.py "$@" hydra.run.dir="$RUNS/$name" --cfg job >/dev/null && echo "composes: $name"
  else
    echo "== $name: $*"; $PY train.py "$@" hydra.run.dir="$RUNS/$name"
  fi
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  [ -n "${DRY:-}" ] || $PY benchmarks/speed.py --configs default mnist cifar10 camvid --warmup 5 --iterations 30
  train mnist_teacher task=teacher dataset=mnist trainer=gpu paths.data_dir=$DATA
  train paper_mnist experiment=paper_mnist paths.data_dir=$DATA teacher.checkpoint=$RUNS/mnist_teacher/teacher.pt
  for precision in 16-mixed bf16-mixed; do
    train "digits_$precision" trainer=gpu trainer.precision=$precision trainer.max_epochs=2
  done
  [ -n "${DRY:-}" ] || $PY -m pytest -m gpu -q -p no:cacheprovider
} 2>&1 | tee "$OUT/gpu_checks.log"

for f in "$RUNS"/*/results.json; do
  if [ -f "$f" ]; then echo "== $f"; cat "$f"; fi
done > "$OUT/results.txt"
