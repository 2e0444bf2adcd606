#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent device machine (about 6 minutes on
# one H100, at most 10): the core benchmark on CUDA (stacked vs list vs plain, peak memory by
# torch.cuda.max_memory_allocated), a short CEN training run on CUDA through the CLI, and
# last (cut off after 4 minutes) ResNet-50 stacked and plain under torch.compile.
# Results land in ${OUT:-bench_out}/ as JSON and logs.
#   bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench_out}"
mkdir -p "$out"
python -m pip install -q -e ".[test]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python benchmarks/bench_core.py --device cuda --batch 2 --size 192 --repeats 15 --json "$out/bench_core_cuda.json" \
    2>&1 | tee "$out/bench_core_cuda.log"
timeout 300 cen train configs/scenes.yaml train.device=cuda train.max_steps=60 train.progress=false \
    run.dir="$out/runs" run.name=scenes_cuda 2>&1 | tee "$out/train_cuda.log"
timeout 240 python benchmarks/bench_core.py --device cuda --arch resnet50 --compile --no-memory --repeats 15 \
    --json "$out/bench_core_cuda_compile.json" 2>&1 | tee "$out/bench_core_cuda_compile.log" || true
