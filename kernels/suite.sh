#!/usr/bin/env bash
# Runs fwjax's benchmarks one after another (each needs the machine to itself), writing JSON and
# logs under $OUT. Usage: bash kernels/suite.sh cpu|gpu [part ...]
#   cpu: CPU-sized runs into kernels/results/cpu (committed: BUILD.md's CPU figures come from
#        there); about an hour on 2 cores. resnet times PyTorch too when it is installed
#        (pip install torch==2.13.0). Python: .venv/bin/python.
#   gpu: GPU-sized batches into ./gpu_results. The GPU image brings jax, flax, optax, orbax,
#        numpy, pillow, scipy, sklearn and torch; fwjax runs from the checkout (PYTHONPATH),
#        nothing is installed. Python: python3.
# Parts: env ap distances ranking cache training similarity resnet matching models (default: all). $PY
# overrides the Python.
set -u
kind=${1:-}
case $kind in
  cpu) OUT=${OUT:-kernels/results/cpu}; PY=${PY:-.venv/bin/python} ;;
  gpu) OUT=${OUT:-gpu_results}; PY=${PY:-python3}; export PYTHONPATH=$PWD ;;
  *) echo "usage: bash kernels/suite.sh cpu|gpu [part ...]" >&2; exit 2 ;;
esac
shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
parts=${*:-env ap distances ranking cache training similarity resnet matching models}
run() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || echo "=== $name exited $?"
}
# Per part: CPU time limit and arguments, GPU time limit and arguments.
for part in $parts; do
  case $kind:$part in
    cpu:env) run env 300 bash -c "nproc; lscpu | grep 'Model name'; $PY -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'; $PY -m kernels.membw --out $OUT/membw.json" ;;
    gpu:env) run env 120 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv; $PY -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'; $PY -m kernels.membw --out $OUT/membw.json" ;;
    cpu:ap) run ap 300 $PY -m kernels.bench_average_precision --out "$OUT/ap.json" ;;
    gpu:ap) run ap 180 $PY -m kernels.bench_average_precision --out "$OUT/ap.json" ;;
    cpu:distances) run distances 1500 $PY -m kernels.bench_distances --out "$OUT/distances.json" ;;
    gpu:distances) run distances 420 $PY -m kernels.bench_distances --out "$OUT/distances.json" ;;
    cpu:ranking) run ranking 1500 $PY -m kernels.bench_ranking --workdir /tmp --out "$OUT/ranking.json" ;;
    gpu:ranking) run ranking 300 $PY -m kernels.bench_ranking --workdir /tmp --out "$OUT/ranking.json" ;;
    cpu:cache) run cache 600 $PY -m kernels.bench_cache --out "$OUT/cache.json" ;;
    gpu:cache) run cache 300 $PY -m kernels.bench_cache --out "$OUT/cache.json" ;;
    cpu:training) run training 900 $PY -m experiments.bench_training --per_device_batch=8 --steps=3 --repeats=3 --out="$OUT/training.json" ;;
    gpu:training) run training 300 $PY -m experiments.bench_training --per_device_batch=64 --steps=10 --out="$OUT/training.json" ;;
    cpu:similarity) run similarity 1500 $PY -m kernels.bench_similarity --workdir /tmp --num_items 1000000 --extract_images 256 --extract_files 64 --batch_size 16 --repeats 1 --out "$OUT/similarity.json" ;;
    gpu:similarity) run similarity 330 $PY -m kernels.bench_similarity --workdir /tmp --num_items 1000000 --extract_images 2048 --batch_size 128 --out "$OUT/similarity.json" ;;
    cpu:resnet) run resnet 1800 $PY -m kernels.bench_resnet --sizes 224x224,352x144 --repeats 3 --out "$OUT/resnet.json" ;;
    gpu:resnet) run resnet 560 $PY -m kernels.bench_resnet --batch_size 128 --torch_batch_size 128 --out "$OUT/resnet.json" ;;
    cpu:matching) run matching 1500 $PY -m kernels.bench_matching --workdir /tmp --out "$OUT/matching.json" ;;
    gpu:matching) run matching 420 $PY -m kernels.bench_matching --workdir /tmp --probes 16 --references 256 --peer_pairs 8 --stream_refs 4096 --stream_probes 1,50 --out "$OUT/matching.json" ;;
    cpu:models) run models 3000 $PY -m kernels.bench_models --batch 4 --repeats 3 --out "$OUT/models.json" ;;
    gpu:models) run models 500 $PY -m kernels.bench_models --batch 64 --out "$OUT/models.json" ;;
    *) echo "unknown part $part" ;;
  esac
done
