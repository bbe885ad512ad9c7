r"""Ranking benchmark: fwjax.distances.topk over a memory-mapped collection with bounded memory.

  python -m kernels.bench_ranking --quick --out /tmp/bench_ranking_quick.json
  python -m kernels.bench_ranking --workdir /tmp --out /tmp/bench_ranking.json   # 1,000,000 x 2048

Creates once, under ``--workdir`` (never the repository), a ``--num_items`` x 2048 float32 .npy
of non-negative features (8 GB at the full size), then for each metric and query count runs
``fwjax.distances.topk(queries, path, k, metric)`` in a fresh child process, which reports:

* seconds and items/s of one pass over the memory map (after a warm-up on a prefix of the file
  that compiles the per-chunk step; compile time reported apart),
* the bytes/s that implies (N x D x 4 / seconds) as a share of ``kernels.membw``'s measured
  bandwidth (the data path is page cache -> chunk copy -> devices, so a copy is the limit),
* the child's peak RSS, also for a run over a tenth of the file: equal peaks show that resident
  memory does not grow with the collection (pages of the map are released chunk by chunk).

The peer is the obvious numpy streaming top-k (float32 matmul per chunk, ``argpartition``),
euclidean only, also in a child. The file may be in the page cache or not (reported: time of a
plain sequential read of it). Runs unchanged on a GPU.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 2048


def make_items(path: pathlib.Path, num_items: int, dim: int, chunk: int = 65536) -> None:
  """Writes the (num_items, dim) float32 .npy in chunks (never whole in memory)."""
  if path.exists():
    try:
      if np.load(path, mmap_mode='r').shape == (num_items, dim):
        return
    except ValueError:
      pass
  rng = np.random.default_rng(0)
  tmp = path.with_suffix('.partial.npy')
  out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.float32, shape=(num_items, dim))
  for start in range(0, num_items, chunk):
    stop = min(start + chunk, num_items)
    out[start:stop] = rng.random((stop - start, dim), dtype=np.float32)
  out.flush()
  del out
  os.replace(tmp, path)


def _child(args) -> None:
  """One measurement in this process; prints a JSON line (peak RSS is this process's)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fwjax import distances  # pylint: disable=g-import-not-at-top
  items = np.load(args.path, mmap_mode='r')
  if args.limit:
    items = items[:args.limit]
  queries = np.random.default_rng(1).random((args.num_queries, items.shape[1]), dtype=np.float32)
  result = {'num_items': len(items), 'backend': jax.default_backend(),
            'devices': jax.local_device_count()}
  warm = items[:min(len(items), 65536)]
  if args.impl == 'fwjax':
    start = time.perf_counter()
    distances.topk(queries, warm, args.k, args.metric, chunk_size=args.chunk_size)
    result['warmup_s'] = time.perf_counter() - start
    start = time.perf_counter()
    distances.topk(queries, items, args.k, args.metric, chunk_size=args.chunk_size)
    result['seconds'] = time.perf_counter() - start
  else:
    start = time.perf_counter()
    _numpy_topk(queries, items, args.k, args.chunk_size or 8192)
    result['seconds'] = time.perf_counter() - start
  result['peak_rss_bytes'] = _peak_rss()
  print(json.dumps(result))


def _peak_rss() -> int:
  """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's over exec)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _numpy_topk(queries, items, k, chunk):
  """The obvious streaming euclidean top-k in numpy (float32), for comparison."""
  best_d = np.full((len(queries), 0), np.inf, np.float32)
  best_i = np.zeros((len(queries), 0), np.int64)
  q_sq = np.einsum('qd,qd->q', queries, queries)[:, None]
  for start in range(0, len(items), chunk):
    x = np.asarray(items[start:start + chunk])
    d = q_sq + np.einsum('nd,nd->n', x, x)[None] - 2 * queries @ x.T
    d = np.concatenate([best_d, d], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(x)), d[:, best_d.shape[1]:].shape)], axis=1)
    keep = np.argpartition(d, min(k, d.shape[1] - 1), axis=1)[:, :k]
    best_d, best_i = np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)
  return best_d, best_i


def _run_child(path, impl, metric, num_queries, k, chunk_size, limit=0) -> dict:
  command = [sys.executable, '-m', 'kernels.bench_ranking', '--child', '--path', str(path),
             '--impl', impl, '--metric', metric, '--num_queries', str(num_queries), '--k', str(k),
             '--limit', str(limit)]
  if chunk_size:
    command += ['--chunk_size', str(chunk_size)]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  if done.returncode:
    raise RuntimeError(f'child failed: {" ".join(command)}\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='100,000 items, Q=1 and 16, euclidean and cosine')
  parser.add_argument('--workdir', default='/tmp', help='where the .npy collection is created')
  parser.add_argument('--num_items', type=int, default=None, help='N (default 1,000,000)')
  parser.add_argument('--queries', default='1,16')
  parser.add_argument('--metrics', default=None,
                      help='comma-separated (default euclidean,cosine,manhattan,modified)')
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--chunk_size', type=int, default=None)
  parser.add_argument('--out', help='write the results as JSON here')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--path', help=argparse.SUPPRESS)
  parser.add_argument('--impl', default='fwjax', help=argparse.SUPPRESS)
  parser.add_argument('--metric', default='euclidean', help=argparse.SUPPRESS)
  parser.add_argument('--num_queries', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--limit', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args)
    return

  from kernels import membw  # pylint: disable=g-import-not-at-top
  num_items = args.num_items or (100_000 if args.quick else 1_000_000)
  metrics = (args.metrics or ('euclidean,cosine' if args.quick
                              else 'euclidean,cosine,manhattan,modified')).split(',')
  query_counts = [int(v) for v in args.queries.split(',')]
  limits = membw.measure(args.quick)
  bandwidth = limits['memory_bandwidth_bytes_per_s']
  path = pathlib.Path(args.workdir) / f'fwjax_bench_items_{num_items}x{DIM}.npy'
  start = time.perf_counter()
  make_items(path, num_items, DIM)
  print(f'collection {path} ({path.stat().st_size / 1e9:.1f} GB), ready in '
        f'{time.perf_counter() - start:.1f}s')
  start = time.perf_counter()
  with open(path, 'rb') as f:
    while f.read(64 << 20):
      pass
  read_s = time.perf_counter() - start
  print(f'plain sequential read: {path.stat().st_size / read_s / 1e9:.2f} GB/s; measured memory '
        f'bandwidth {bandwidth / 1e9:.1f} GB/s (read + written)')
  nbytes = num_items * DIM * 4
  rows = []
  for num_queries in query_counts:
    for metric in metrics:
      impls = ['fwjax'] + (['numpy'] if metric == 'euclidean' else [])
      for impl in impls:
        r = _run_child(path, impl, metric, num_queries, args.k, args.chunk_size)
        r.update(impl=impl, metric=metric, Q=num_queries, items_per_s=num_items / r['seconds'],
                 bandwidth_share=nbytes / r['seconds'] / bandwidth)
        if impl == 'fwjax' and num_queries == query_counts[0] and metric == metrics[0]:
          small = _run_child(path, impl, metric, num_queries, args.k, args.chunk_size,
                             limit=num_items // 10)
          r['peak_rss_bytes_tenth'] = small['peak_rss_bytes']
        rows.append(r)
        tenth = (f", RSS at N/10 {r['peak_rss_bytes_tenth'] / 2**20:.0f} MiB"
                 if 'peak_rss_bytes_tenth' in r else '')
        print(f"Q={num_queries:<3d} {metric:<10s} {impl:<6s} {r['seconds']:7.2f}s "
              f"{r['items_per_s'] / 1e6:6.3f} M items/s  {nbytes / r['seconds'] / 1e9:5.2f} GB/s "
              f"({r['bandwidth_share']:.0%} of bandwidth)  peak RSS "
              f"{r['peak_rss_bytes'] / 2**20:.0f} MiB{tenth}"
              + (f"  warm-up/compile {r['warmup_s']:.1f}s" if 'warmup_s' in r else ''), flush=True)
  fw = {(r['Q'], r['metric']): r for r in rows if r['impl'] == 'fwjax'}
  for r in rows:
    if r['impl'] == 'numpy':
      print(f"Q={r['Q']} euclidean: numpy {r['seconds']:.2f}s / fwjax "
            f"{fw[(r['Q'], 'euclidean')]['seconds']:.2f}s = "
            f"{r['seconds'] / fw[(r['Q'], 'euclidean')]['seconds']:.2f}x")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'limits': limits, 'plain_read_bytes_per_s': nbytes / read_s, 'rows': rows,
                 'config': {'num_items': num_items, 'dim': DIM, 'k': args.k,
                            'chunk_size': args.chunk_size, 'path': str(path)}}, f, indent=2)


if __name__ == '__main__':
  main()
