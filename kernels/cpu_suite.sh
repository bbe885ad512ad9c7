#!/usr/bin/env bash
# Runs fwjax's benchmarks on this CPU in one go, one after another (each needs the machine to
# itself), writing JSON and logs under $OUT (default kernels/results/cpu, committed: the figures
# in BUILD.md come from there). Usage: bash kernels/cpu_suite.sh [part ...]
# Parts: env ap distances ranking cache training similarity resnet (default: all; about an hour
# on 2 cores). resnet times PyTorch too when it is installed (pip install torch==2.13.0).
set -u
OUT=${OUT:-kernels/results/cpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-.venv/bin/python}
parts=${*:-env ap distances ranking cache training similarity resnet}
run() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || echo "=== $name exited $?"
}
for part in $parts; do
  case $part in
    env) run env 300 bash -c "nproc; lscpu | grep 'Model name'; $PY -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'; $PY -m kernels.membw --out $OUT/membw.json" ;;
    ap) run ap 300 $PY -m kernels.bench_average_precision --out "$OUT/ap.json" ;;
    distances) run distances 1200 $PY -m kernels.bench_distances --out "$OUT/distances.json" ;;
    ranking) run ranking 1500 $PY -m kernels.bench_ranking --workdir /tmp --out "$OUT/ranking.json" ;;
    cache) run cache 600 $PY -m kernels.bench_cache --out "$OUT/cache.json" ;;
    training) run training 900 $PY -m experiments.bench_training --per_device_batch=8 --steps=3 --repeats=3 --out="$OUT/training.json" ;;
    similarity) run similarity 1500 $PY -m kernels.bench_similarity --workdir /tmp --num_items 1000000 --extract_images 256 --extract_files 64 --batch_size 16 --repeats 1 --out "$OUT/similarity.json" ;;
    resnet) run resnet 1800 $PY -m kernels.bench_resnet --sizes 224x224,352x144 --repeats 3 --out "$OUT/resnet.json" ;;
    *) echo "unknown part $part" ;;
  esac
done
