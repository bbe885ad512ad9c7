r"""Similarity ranking benchmark: feature extraction throughput and ranking of cached features.

  python -m kernels.bench_similarity --quick --out /tmp/bench_similarity.json
  python -m kernels.bench_similarity --num_items=1000000 --out bench_similarity_1m.json

1. Feature extraction (a full-width ResNet-50, random weights: the cost is the same as with
   pretrained ones) in images/s and seconds per 10,000 images, the unit the thesis reports:
   model only (uint8 batches already in memory, sharded over the local devices) and from files
   (PNG decode + resize + model, fwjax.similarity.features.extract_features with an empty cache).
2. Ranking: ``--num_items`` cached features (D=2048, float32, a memory-mapped .npy created under
   ``--workdir``, never the repository) against 1, 16 and 256 references (one query each), top
   ``--k``, per metric, end to end from the memory map: fwjax.distances.topk next to faiss-cpu
   brute force (L2 for euclidean, inner product on normalised chunks for cosine, L1 for manhattan;
   faiss has no 'modified' distance), streamed over the same chunks of the memory map. The top-k
   agreement between the two is printed as a check that both ranked the same thing.

Runs unchanged on a GPU (JAX picks the backend; faiss-cpu stays on the CPU; faiss is skipped if it
cannot be imported). Compile/warm-up time is reported apart; times are medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from fwjax import distances
from fwjax.models import feature_model
from fwjax.similarity import features

try:
  import faiss  # pylint: disable=g-import-not-at-top
except ImportError:  # the benchmark still runs; the faiss columns say 'n/a'
  faiss = None

DIM = 2048
FAISS_METRICS = {'euclidean', 'cosine', 'manhattan'}


def _median_time(fn, repeats):
  times = []
  result = None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    jax.block_until_ready(result)
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def bench_extraction(num_images: int, height: int, width: int, batch_size: int,
                     files: int, workdir: pathlib.Path, repeats: int) -> dict:
  """Images/s of a full-width ResNet-50, model only and from PNG files."""
  model = feature_model.build_model(None, width=64, seed=0)
  start = time.perf_counter()
  extractor = features.Extractor(model, 'features', height, width, batch_size)
  compile_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, extractor.shape, dtype=np.uint8)
  extractor(batch)  # warm-up
  steps = max(1, num_images // extractor.batch_size)

  def run():
    for _ in range(steps):
      out = extractor(batch)
    return out

  seconds, _ = _median_time(run, repeats)
  images = steps * extractor.batch_size
  row = {'resolution': f'{height}x{width}', 'batch_size': extractor.batch_size,
         'devices': jax.local_device_count(), 'compile_s': compile_s,
         'model_images_per_s': images / seconds,
         'model_s_per_10000': seconds / images * 1e4}
  if files:
    folder = workdir / 'bench_similarity_images'
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):  # reference-like impressions: ~600 px high
      path = folder / f'{i:05d}.png'
      Image.fromarray(rng.integers(0, 256, (586, 200), dtype=np.uint8), 'L').save(path)
      paths.append(path)
    with tempfile.TemporaryDirectory(dir=workdir) as cache:
      start = time.perf_counter()
      result = features.extract_features(model, paths, height=height, width=width,
                                         extractor=extractor, cache_dir=cache, progress=False)
      seconds = time.perf_counter() - start
    row.update(files_images_per_s=result.num_extracted / seconds,
               files_s_per_10000=seconds / result.num_extracted * 1e4, files=files)
  return row


def make_items(path: pathlib.Path, num_items: int, chunk: int = 65536) -> np.ndarray:
  """A (num_items, 2048) float32 .npy of ReLU-like features (non-negative), written in chunks."""
  if path.exists():
    items = np.load(path, mmap_mode='r')
    if items.shape == (num_items, DIM):
      return items
  rng = np.random.default_rng(1)
  out = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=(num_items, DIM))
  for start in range(0, num_items, chunk):
    n = min(chunk, num_items - start)
    out[start:start + n] = np.maximum(rng.standard_normal((n, DIM), np.float32), 0)
  out.flush()
  del out
  return np.load(path, mmap_mode='r')


def faiss_topk(queries: np.ndarray, items: np.ndarray, k: int, metric: str,
               chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """Brute-force top k with faiss over chunks of a memory map, merged on the host."""
  q = np.ascontiguousarray(queries, np.float32)
  if metric == 'cosine':
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
  best_d = np.full((len(q), 0), np.inf, np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  for start in range(0, len(items), chunk):
    x = np.ascontiguousarray(items[start:start + chunk], np.float32)
    kk = min(k, len(x))
    if metric == 'euclidean':
      d, i = faiss.knn(q, x, kk, metric=faiss.METRIC_L2)
      d = np.sqrt(np.maximum(d, 0))
    elif metric == 'cosine':
      x = x / np.linalg.norm(x, axis=1, keepdims=True)
      d, i = faiss.knn(q, x, kk, metric=faiss.METRIC_INNER_PRODUCT)
      d = 1 - d
    else:
      index = faiss.IndexFlat(DIM, faiss.METRIC_L1)
      index.add(x)
      d, i = index.search(q, kk)
    best_d = np.concatenate([best_d, d], axis=1)
    best_i = np.concatenate([best_i, i + start], axis=1)
    keep = np.argsort(best_d, axis=1, kind='stable')[:, :k]
    best_d = np.take_along_axis(best_d, keep, 1)
    best_i = np.take_along_axis(best_i, keep, 1)
  return best_d, best_i


def bench_ranking(items: np.ndarray, query_counts, metrics, k: int, chunk: int,
                  repeats: int) -> list[dict]:
  rng = np.random.default_rng(2)
  rows = []
  for num_queries in query_counts:
    queries = np.maximum(rng.standard_normal((num_queries, DIM), np.float32), 0)
    for metric in metrics:
      start = time.perf_counter()
      distances.topk(queries, items, k, metric=metric)  # warm-up: compiles every chunk shape
      warm = time.perf_counter() - start
      fw_s, (fw_d, fw_i) = _median_time(
          lambda: distances.topk(queries, items, k, metric=metric), repeats)
      row = {'metric': metric, 'queries': num_queries, 'items': len(items), 'k': k,
             'fwjax_s': fw_s, 'fwjax_first_call_s': warm,
             'fwjax_items_per_s': num_queries * len(items) / fw_s}
      if faiss is not None and metric in FAISS_METRICS:
        fa_s, (fa_d, fa_i) = _median_time(
            lambda: faiss_topk(queries, items, k, metric, chunk), repeats)
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(fw_i, fa_i)])
        row.update(faiss_s=fa_s, faiss_over_fwjax=fa_s / fw_s, topk_agreement=float(overlap),
                   max_abs_distance_diff=float(np.max(np.abs(np.sort(fw_d, 1) -
                                                             np.sort(fa_d, 1)))))
      rows.append(row)
      print(_format(row), flush=True)
  return rows


def _format(row: dict) -> str:
  faiss_part = (f'faiss {row["faiss_s"]:8.3f}s  faiss/fwjax {row["faiss_over_fwjax"]:5.2f}x  '
                f'agree {row["topk_agreement"]:.3f}' if 'faiss_s' in row else 'faiss n/a')
  return (f'{row["metric"]:>10} Q={row["queries"]:<4} N={row["items"]:<8} '
          f'fwjax {row["fwjax_s"]:8.3f}s (first {row["fwjax_first_call_s"]:.2f}s)  {faiss_part}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='small sizes, for a smoke run')
  parser.add_argument('--num_items', type=int, default=None, help='default 1,000,000 (quick 20,000)')
  parser.add_argument('--queries', default='1,16,256')
  parser.add_argument('--metrics', default='euclidean,cosine,manhattan,modified')
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--chunk', type=int, default=65536, help='faiss chunk of the memory map')
  parser.add_argument('--extract_images', type=int, default=None, help='default 256 (quick 32)')
  parser.add_argument('--extract_files', type=int, default=None, help='default 64 (quick 8)')
  parser.add_argument('--height', type=int, default=224)
  parser.add_argument('--width', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=None, help='default 32 (quick 16)')
  parser.add_argument('--repeats', type=int, default=None, help='default 3 (quick 1)')
  parser.add_argument('--workdir', default=tempfile.gettempdir(),
                      help='where the memory-mapped features are created (never the repo)')
  parser.add_argument('--skip_extraction', action='store_true')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args()
  defaults = dict(num_items=20_000, extract_images=32, extract_files=8, repeats=1, batch_size=16
                  ) if args.quick else dict(num_items=1_000_000, extract_images=256,
                                            extract_files=64, repeats=3, batch_size=32)
  for name, value in defaults.items():  # flags given explicitly win over --quick
    if getattr(args, name) is None:
      setattr(args, name, value)
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report = {'backend': jax.default_backend(), 'devices': [str(d) for d in jax.local_devices()],
            'machine': platform.platform(), 'faiss': getattr(faiss, '__version__', None),
            'args': vars(args)}
  if not args.skip_extraction:
    report['extraction'] = bench_extraction(args.extract_images, args.height, args.width,
                                            args.batch_size, args.extract_files, workdir,
                                            args.repeats)
    e = report['extraction']
    print(f'extraction {e["resolution"]} on {e["devices"]} device(s): model '
          f'{e["model_images_per_s"]:.1f} img/s ({e["model_s_per_10000"]:.0f} s per 10,000), '
          f'from files {e.get("files_images_per_s", float("nan")):.1f} img/s '
          f'({e.get("files_s_per_10000", float("nan")):.0f} s per 10,000); '
          f'compile {e["compile_s"]:.1f}s', flush=True)
  start = time.perf_counter()
  items = make_items(workdir / f'bench_similarity_{args.num_items}x{DIM}.npy', args.num_items)
  report['make_items_s'] = time.perf_counter() - start
  report['ranking'] = bench_ranking(items, [int(q) for q in args.queries.split(',')],
                                    args.metrics.split(','), args.k, args.chunk, args.repeats)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
