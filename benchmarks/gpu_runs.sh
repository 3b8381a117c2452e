#!/bin/bash
# The 100-epoch GPU runs (article and strong recipes, seed 42), side by side on one GPU, started or resumed,
# stopped at the deadline (SIGTERM: save and stop, resumable), and packed into OUT/gpuruns.tar.
# A model this small leaves the GPU mostly idle between launches, so two processes share it well.
# Usage, from the repository root on any machine with an NVIDIA GPU and CuPy:
#   bash benchmarks/gpu_runs.sh DATA OUT SECONDS
# DATA: CIFAR-10 as benchmarks/gpu_data.sh takes it; OUT: the folder for the runs; SECONDS: the deadline.
# OUT/gpuruns.tar, when present, holds the runs of an earlier call: they resume from it.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: bash benchmarks/gpu_runs.sh DATA OUT SECONDS"
data=${1:?$usage} out=${2:?$usage} budget=${3:?$usage}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$here
source "$here/benchmarks/gpu_data.sh"
gpu_data "$data" /tmp/npvit-data || exit 2
runs=/tmp/npvit-gpuruns
mkdir -p $runs
[ -f "$out/gpuruns.tar" ] && tar -xf "$out/gpuruns.tar" -C $runs
cd "$here"
for recipe in article strong; do
    dir=$runs/$recipe-s42
    if grep -q '"epoch": 100,' $dir/metrics.jsonl 2>/dev/null; then continue; fi
    if [ -f $dir/latest.npz ]; then how="--resume $dir"; else how="--recipe $recipe --seed 42 --out-dir $dir"; fi
    timeout "$budget" python3 scripts/train.py --data-dir "$DATA_DIR" --backend cupy --threads 1 --no-progress $how >> $runs/$recipe-s42.log 2>&1 &
done
wait
tar -cf "$out/gpuruns.tar.tmp" -C $runs . && mv "$out/gpuruns.tar.tmp" "$out/gpuruns.tar"
for recipe in article strong; do tail -2 $runs/$recipe-s42.log; done
