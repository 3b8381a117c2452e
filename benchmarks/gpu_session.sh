#!/bin/bash
# One GPU call that checks a branch: the gpu suite (fused kernels included), 10 epochs of the article recipe on
# them, the benchmark against PyTorch CUDA, the per-layer profile. Needs CuPy and torch with CUDA.
# Usage, from the repository root on any machine with an NVIDIA GPU:
#   bash benchmarks/gpu_session.sh DATA OUT
# DATA: CIFAR-10 as benchmarks/gpu_data.sh takes it (a folder holding cifar-10-batches-py/, or an archive);
# OUT: the folder for the logs and JSON (made if absent).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
out=${2:?usage: bash benchmarks/gpu_session.sh DATA OUT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$here
source "$here/benchmarks/gpu_data.sh"
gpu_data "${1:?usage: bash benchmarks/gpu_session.sh DATA OUT}" /tmp/npvit-data || exit 2
export NPVIT_CIFAR10_DIR=$DATA_DIR
cd "$here"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short -rf --maxfail=15 2>&1 | tail -c 100000 > "$out/gpu_tests.log"
tail -3 "$out/gpu_tests.log"
timeout 100 python3 scripts/train.py --data-dir "$DATA_DIR" --backend cupy --threads 1 --recipe article --epochs 10 --seed 42 --no-progress --out-dir /tmp/npvit-fused10 --overwrite > "$out/train10.log" 2>&1; tail -4 "$out/train10.log"
timeout 200 python3 benchmarks/bench_train_step.py --backend cupy --models article --patches 4 --batch-sizes 256 1024 --repeats 20 --warmup 5 --rounds 1 --json "$out/bench.json" > "$out/bench.log" 2>&1; cat "$out/bench.log"
timeout 40 python3 benchmarks/bench_train_step.py --backend cupy --quick --profile --json "$out/profile.json" > "$out/profile.log" 2>&1; tail -16 "$out/profile.log"
