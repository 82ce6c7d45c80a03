#!/usr/bin/env bash
# Pack what the GPU checks need into the git-ignored .device-data/ (well under the device tool's
# 64 MiB): the pure-Python dependencies its image lacks (hydra, omegaconf, antlr4,
# segmentation-models-pytorch; it has torch, lightning, torchmetrics, torchvision, timm) and MNIST.
#   benchmarks/gpu_bundle.sh [DATA_ROOT=../shared/data]
# then, on the device machine, with carry [".device-data"]:  bash benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf .device-data && mkdir -p .device-data/site .device-data/mnist
for pkg in hydra omegaconf antlr4 segmentation_models_pytorch; do
  cp -r "$site/$pkg" .device-data/site/
done
find .device-data/site -name __pycache__ -prune -exec rm -rf {} +
cp "$data"/mnist/*-ubyte.gz .device-data/mnist/
du -sh .device-data
