#!/bin/bash
# Everything the GPU part of npvit claims, checked on any machine with one NVIDIA GPU, CuPy, numba-cuda and PyTorch
# with CUDA, within a time budget; logs and JSON go to OUT.
#
#   bash benchmarks/gpu_check.sh DATA OUT [SECONDS] [PARTS]
#
# DATA: CIFAR-10 as benchmarks/gpu_data.sh takes it (a folder holding cifar-10-batches-py/, the dataset's archive,
#   or a JPEG archive with CONVERT=path/to/converter.py); OUT: the folder for the results (made if absent);
#   SECONDS: the budget of this call (default 660); PARTS: which parts, in this order (default "suite bench speedrun"):
#   suite     the gpu-marked tests (the captured step against the eager one among them)          OUT/gpu_tests.log
#   bench     step times: npvit eager and captured, PyTorch eager, torch.compile and PyTorch in a CUDA graph, for
#             the article model at 128, 256 and 1024 and the large model at 256 (OUT/bench.json, bench-large.json);
#             then TF32 GEMMs off and on for the large model, with the loss of 10 AdamW steps     OUT/tf32.json
#   speedrun  the three speedruns, one after another, each alone on the GPU with its own deadline (SIGTERM saves;
#             a run that misses it says where it got): --recipe sprint to 75.5% (60 s), the article recipe's 100
#             epochs (120 s), fast80 to 80% (180 s); each with --cuda-graph, seed 42     OUT/speedrun-*.log, .json
# Each part gets a share of what is left of SECONDS; a part cut short by its deadline says so, the next one runs.
# Two calls of at most 6 minutes: `... 330 "suite bench"`, then `... 330 speedrun`.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: bash benchmarks/gpu_check.sh DATA OUT [SECONDS] [PARTS]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
data=$1 out=$2 budget=${3:-660} parts=${4:-suite bench speedrun}
case $budget in ''|*[!0-9]*) echo "error: SECONDS must be a whole number of seconds, got '$budget'" >&2; exit 2;; esac
for part in $parts; do
    case $part in suite|bench|speedrun) ;; *) echo "error: unknown part '$part' (suite, bench, speedrun)" >&2; exit 2;; esac
done
export PYTHONUNBUFFERED=1 PYTHONPATH=$here
source "$here/benchmarks/gpu_data.sh"
gpu_data "$data" /tmp/npvit-data || exit 2
gpu=$(python3 -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print(p['name'].decode(), f\"{p['totalGlobalMem'] / 2**30:.0f} GiB\", 'CuPy', cupy.__version__)" 2>/dev/null) \
    || { echo "error: CuPy sees no CUDA GPU here (python3 -c 'import cupy; cupy.cuda.runtime.getDeviceCount()' says why)" >&2; exit 2; }
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
export NPVIT_CIFAR10_DIR=$DATA_DIR
cd "$here"
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
echo "$gpu" > "$out/gpu.txt"
note "gpu_check at $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $gpu, budget ${budget}s: $parts"

for part in $parts; do
    case $part in
    suite)
        limit=$(( $(left) * 45 / 100 ))
        timeout "$limit" python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short -rf --maxfail=20 \
            > "$out/gpu_tests.log" 2>&1
        rc=$?
        note "suite (limit ${limit}s, exit $rc): $(tail -1 "$out/gpu_tests.log")"
        ;;
    bench)
        limit=$(( $(left) * 60 / 100 ))
        timeout "$limit" python3 benchmarks/bench_train_step.py --backend cupy --models article --patches 4 \
            --batch-sizes 256 128 1024 --repeats 20 --warmup 5 --rounds 1 --json "$out/bench.json" > "$out/bench.log" 2>&1
        rc=$?
        left_now=$(left)
        [ "$rc" = 0 ] && [ "$left_now" -gt 60 ] && timeout $(( left_now * 40 / 100 )) python3 benchmarks/bench_train_step.py \
            --backend cupy --models large --patches 4 --batch-sizes 256 --repeats 20 --warmup 5 --rounds 1 \
            --json "$out/bench-large.json" >> "$out/bench.log" 2>&1
        left_now=$(left)
        [ "$rc" = 0 ] && [ "$left_now" -gt 90 ] && timeout $(( left_now * 30 / 100 )) python3 benchmarks/bench_train_step.py \
            --backend cupy --tf32-check --models large --patches 4 --batch-sizes 256 --repeats 10 --warmup 5 \
            --json "$out/tf32.json" >> "$out/bench.log" 2>&1
        note "bench (limit ${limit}s, exit $rc):"
        grep -E "^article|^large|npvit-graph|torch-graph:|TF32 [0-9]" "$out/bench.log" | tee -a "$out/summary.txt"
        ;;
    speedrun)
        for spec in "sprint 75.5% 60" "article 100-epochs 120" "fast80 80% 180"; do
            set -- $spec
            recipe=$1 target=$2 deadline=$3
            limit=$(left)
            [ "$limit" -le 20 ] && { note "speedrun $recipe: not run (${limit}s left of the budget)"; continue; }
            [ "$limit" -gt $(( deadline * 2 )) ] && limit=$(( deadline * 2 ))     # twice its target: where it got
            dir=/tmp/npvit-speedrun/$recipe-s42
            t0=$(date +%s.%N)
            timeout -s TERM -k 20 "$limit" python3 scripts/train.py --data-dir "$DATA_DIR" --backend cupy --threads 1 \
                --cuda-graph --recipe "$recipe" --seed 42 --no-progress --out-dir "$dir" --overwrite \
                > "$out/speedrun-$recipe.log" 2>&1
            rc=$?
            wall=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t0")
            python3 benchmarks/accuracy_table.py "$dir" --thresholds 0.70 0.755 0.80 --json "$out/speedrun-$recipe.json" \
                > "$out/speedrun-$recipe.table" 2>&1
            note "speedrun $recipe (target $target within ${deadline}s; limit ${limit}s; exit $rc; process wall ${wall}s):"
            tail -2 "$out/speedrun-$recipe.log" | tee -a "$out/summary.txt"
            grep -E "^\|" "$out/speedrun-$recipe.table" | head -3 | tee -a "$out/summary.txt"
            cp "$dir/metrics.jsonl" "$out/speedrun-$recipe.metrics.jsonl" 2>/dev/null
        done
        ;;
    esac
done
note "gpu_check done in $(( $(date +%s) - start ))s"
