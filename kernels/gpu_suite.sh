#!/usr/bin/env bash
# Runs fwjax's benchmarks on a GPU machine in one go, writing JSON and logs under $OUT
# (or ./gpu_results). Usage: bash kernels/gpu_suite.sh [part ...]
# Parts: env distances ranking ap resnet training similarity cache (default: all).
# The GPU image brings jax, flax, optax, orbax, numpy, pillow, scipy, sklearn and torch; fwjax
# runs from the checkout (PYTHONPATH), nothing is installed.
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
parts=${*:-env distances ranking ap resnet training similarity cache}
run() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || echo "=== $name exited $?"
}
for part in $parts; do
  case $part in
    env) run env 120 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv; $PY -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'; $PY -m kernels.membw --out $OUT/membw.json" ;;
    distances) run distances 420 $PY -m kernels.bench_distances --out "$OUT/distances.json" ;;
    ranking) run ranking 300 $PY -m kernels.bench_ranking --workdir /tmp --out "$OUT/ranking.json" ;;
    ap) run ap 180 $PY -m kernels.bench_average_precision --out "$OUT/ap.json" ;;
    resnet) run resnet 560 $PY -m kernels.bench_resnet --batch_size 128 --torch_batch_size 128 --out "$OUT/resnet.json" ;;
    training) run training 300 $PY -m experiments.bench_training --per_device_batch=64 --steps=10 --out="$OUT/training.json" ;;
    similarity) run similarity 330 $PY -m kernels.bench_similarity --workdir /tmp --num_items 1000000 --extract_images 2048 --batch_size 128 --out "$OUT/similarity.json" ;;
    cache) run cache 300 $PY -m kernels.bench_cache --out "$OUT/cache.json" ;;
    *) echo "unknown part $part" ;;
  esac
done
