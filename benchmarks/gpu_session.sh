#!/bin/bash
# One GPU call that checks this branch: the gpu suite (fused kernels included), 10 epochs of the article recipe on them, the benchmark against PyTorch CUDA, the per-layer profile.
# Needs CuPy + torch CUDA there and .gpu/ holding cifar10-jpeg.tar.gz and cifar10_from_jpeg.py (carried); run from the repository root: bash benchmarks/gpu_session.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NPVIT_CIFAR10_DIR=/tmp/data
python3 .gpu/cifar10_from_jpeg.py /tmp/data --archive .gpu/cifar10-jpeg.tar.gz > /dev/null 2>&1 &
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short -rf --maxfail=15 2>&1 | tail -c 100000 > $OUT/gpu_tests.log
tail -3 $OUT/gpu_tests.log
wait
timeout 100 python3 scripts/train.py --data-dir /tmp/data --backend cupy --threads 1 --recipe article --epochs 10 --seed 42 --no-progress --out-dir /tmp/fused10 > $OUT/train10.log 2>&1; tail -4 $OUT/train10.log
timeout 200 python3 benchmarks/bench_train_step.py --backend cupy --models article --patches 4 --batch-sizes 256 1024 --repeats 20 --warmup 5 --rounds 1 --json $OUT/bench.json > $OUT/bench.log 2>&1; cat $OUT/bench.log
timeout 40 python3 benchmarks/bench_train_step.py --backend cupy --quick --profile --json $OUT/profile.json > $OUT/profile.log 2>&1; tail -16 $OUT/profile.log
