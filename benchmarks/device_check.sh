#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent device machine (at most ~8 minutes on one
# H100: every step has its own timeout and a failed step does not stop the next).
#   1. install: the device has torch, torchvision, torchmetrics, tensorboard, tqdm, matplotlib,
#      pyyaml and onnxruntime but not omegaconf; its wheels (and antlr4-python3-runtime's) come
#      from ${CEN_WHEELS:-.device_wheels}, a folder to carry (ignore it in .git/info/exclude):
#        pip wheel --no-deps omegaconf antlr4-python3-runtime -w .device_wheels
#      then the project itself with pip install --no-deps --no-build-isolation -e .
#   2. the full training step at the paper's setting (RefineNet-101, two modalities, batch 6,
#      500x500): reference-style list model vs cen.models.RefineNetCEN in fp32, bf16,
#      bf16 + channels-last and with the memory options (recast_weights + step_in_backward), with peak
#      memory and host synchronisations per step;
#   3. the same with RefineNetCEN bf16 + channels-last compiled (Inductor; minutes to compile);
#   4. the core benchmark on CUDA (ResNet-101 stacked vs list vs plain);
#   5. 30 steps of CEN training through the CLI with train.precision=auto (bf16 + channels-last where the GPU
#      has bf16), and cen env's report of the device;
#   6. host synchronisations of the per-step bookkeeping (GammaTracker, the proximal step): cuda_syncs.py.
# Results land in ${OUT:-bench_out}/: one log (device_check.log) and the JSON files (at most 6 files,
# as the device machine sends back at most 8).
#   bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench_out}"
wheels="${CEN_WHEELS:-.device_wheels}"
mkdir -p "$out"
log="$out/device_check.log"
step() {  # step SECONDS NAME COMMAND...: run with a timeout, append to the log, never abort the script
    local limit=$1 name=$2 t0=$SECONDS; shift 2
    echo "== $name (timeout ${limit}s): $*" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$log"
}
if ! python -c "import omegaconf" 2>/dev/null; then
    step 60 install_wheels python -m pip install -q --no-index --no-deps "$wheels"/*.whl
fi
step 90 install python -m pip install -q --no-deps --no-build-isolation -e .
if ! python -c "import cen" 2>/dev/null; then  # e.g. no wheel/setuptools able to build: run from the source tree
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "== editable install failed; using PYTHONPATH=$PWD/src" | tee -a "$log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
step 30 env python -m cen env --json
python -m cen env --json > "$out/env.json" 2>/dev/null || true
export CEN_DEBUG=1
step 150 bench_step_cuda python benchmarks/bench_step.py --device cuda --batch 6 --size 500 --repeats 5 --warmup 2 \
    --json "$out/bench_step_cuda.json"
step 210 bench_step_cuda_compile python benchmarks/bench_step.py --device cuda --batch 6 --size 500 --repeats 5 \
    --warmup 1 --variants cen+bf16+cl --compile --no-memory --json "$out/bench_step_cuda_compile.json"
step 45 bench_core_cuda python benchmarks/bench_core.py --device cuda --arch resnet101 --batch 2 --size 192 \
    --repeats 10 --json "$out/bench_core_cuda.json"
step 60 train_cuda python -m cen train configs/scenes.yaml data.generate.num=60 data.generate.workers=8 train.device=cuda \
    train.max_steps=30 train.progress=false \
    train.precision=auto train.channels_last=auto run.dir=/tmp/cen_device_runs run.name=scenes_cuda_auto
cp /tmp/cen_device_runs/scenes_cuda_auto/metrics.jsonl "$out/train_cuda_metrics.jsonl" 2>/dev/null || true
step 60 cuda_syncs python benchmarks/cuda_syncs.py
grep -E "^(==|\|)" "$log"
