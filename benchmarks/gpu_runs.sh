#!/bin/bash
# The 100-epoch GPU runs (article and strong recipes, seed 42), side by side on one GPU, started or
# resumed, stopped (SIGTERM: save and stop, resumable) at the deadline, and packed into $OUT.
# A model this small leaves the GPU mostly idle between launches, so two processes share it well.
# Usage (repository root, on the GPU machine; .gpu/ carried): bash benchmarks/gpu_runs.sh SECONDS
# .gpu/gpuruns.tar, when present, holds the runs of an earlier call: they resume from it.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
budget=${1:?seconds}
[ -d /tmp/data/cifar-10-batches-py ] || python3 .gpu/cifar10_from_jpeg.py /tmp/data --archive .gpu/cifar10-jpeg.tar.gz > /dev/null
mkdir -p /tmp/gpuruns
[ -f .gpu/gpuruns.tar ] && tar -xf .gpu/gpuruns.tar -C /tmp/gpuruns
for recipe in article strong; do
    dir=/tmp/gpuruns/$recipe-s42
    if grep -q '"epoch": 100,' $dir/metrics.jsonl 2>/dev/null; then continue; fi
    if [ -f $dir/latest.npz ]; then how="--resume $dir"; else how="--recipe $recipe --seed 42 --out-dir $dir"; fi
    timeout $budget python3 scripts/train.py --data-dir /tmp/data --backend cupy --threads 1 --no-progress $how >> /tmp/gpuruns/$recipe-s42.log 2>&1 &
done
wait
tar -cf $OUT/gpuruns.tar -C /tmp/gpuruns .
for recipe in article strong; do tail -2 /tmp/gpuruns/$recipe-s42.log; done
