r"""Distance benchmark: fwjax.distances against faiss-cpu, scipy cdist and sklearn, same data.

  python -m kernels.bench_distances --quick --out /tmp/bench_distances_quick.json
  python -m kernels.bench_distances --out /tmp/bench_distances.json     # Q 1/16/256, N 200,000

Items: N x 2048 float32 in [0, 1) (non-negative like ReLU features, so 'modified' is defined).
For each number of queries Q and each metric:

* ``fwjax.pairwise``: every (Q, N) distance, items already on the JAX device;
  ``fwjax.topk``: the top ``--k`` streamed from the host numpy array in default chunks (the
  one-off path, host->device transfer and item statistics included).
* the same two on a ``fwjax.distances.Collection`` of the host array, the counterpart of a built
  faiss index (its own aligned copy, item statistics computed once); its build time is
  reported next to faiss's index build.
* faiss-cpu: ``IndexFlatL2`` / ``IndexFlatIP`` (normalised) / ``IndexFlat(METRIC_L1)``
  ``search`` (top k) and ``faiss.pairwise_distances`` (every distance); index build not timed.
  These and three fwjax calls are timed in turns, one call of each per round (median of the
  rounds), so a slow spell on the shared machine falls on all of them alike, each after a
  0.2 s pause (``timing.SETTLE_S``: BLAS threads still spinning from the previous call would take a
  core from it). The bare top-k is timed apart, after them: it copies the items through fresh
  host buffers, and whatever ran next was 10-18 ms slower for it (a 56 ms Collection query
  took 66-74 ms), which would charge its cost to the next contender.
* ``scipy.spatial.distance.cdist`` and ``sklearn.metrics.pairwise_distances`` (every distance).

A peer whose run at the full N is predicted (from a subset of ``--subset`` items) to exceed
``--peer_budget_s`` is timed on the subset only and scaled linearly to N; the table says so.
Ratios are peer time / fwjax time (> 1: fwjax faster). Hardware share: items bytes read (and the
output written) per second against ``kernels.membw``'s measured bandwidth, and matmul FLOP/s
(2QND) against its measured float32 matmul rate. Compile time (first call) is reported apart.
Runs unchanged on a GPU (faiss, scipy and sklearn stay on the CPU; missing peers are skipped).
"""

import argparse
import json
import platform
import time

import jax
import numpy as np

from fwjax import distances
from kernels import distance_peers as peers
from kernels import membw
from kernels import timing


def _peer(make_fn, items: np.ndarray, subset: int, budget_s: float, repeats: int) -> dict:
  """Times ``make_fn(items)()``, on a subset scaled to N when the full run would be too long."""
  n = len(items)
  small = min(subset, n)
  _, t_small = timing.timed(make_fn(items[:small]), 1)
  if small == n or t_small * n / small > budget_s:
    return {'seconds': t_small * n / small, 'scaled_from': small if small < n else None}
  _, t = timing.timed(make_fn(items), repeats)
  return {'seconds': t, 'scaled_from': None}


def run(num_items: int, dim: int, query_counts: list[int], k: int, repeats: int, subset: int,
        budget_s: float, quick: bool) -> dict:
  limits = membw.measure(quick)
  rng = np.random.default_rng(0)
  items = rng.random((num_items, dim), dtype=np.float32)
  on_device = jax.device_put(items)
  start = time.perf_counter()
  collection = distances.Collection(items)
  collection_build_s = time.perf_counter() - start
  print(f'Collection build (once): {collection_build_s:.2f}s', flush=True)
  available = peers.available()
  rows = []
  for num_queries in query_counts:
    queries = rng.random((num_queries, dim), dtype=np.float32)
    for metric in distances.METRICS:
      contenders = {
          'fwjax_pairwise': lambda: distances.pairwise(queries, on_device, metric),
          'fwjax_collection_pairwise': lambda: distances.pairwise(queries, collection, metric),
          'fwjax_collection_topk': lambda: distances.topk(queries, collection, k, metric)}
      row = {'Q': num_queries, 'metric': metric}
      index = None
      if metric in peers.FAISS_METRICS and available['faiss']:
        start = time.perf_counter()
        index = peers.FaissFlat(items, metric)
        row['faiss_build_s'] = time.perf_counter() - start
        contenders['faiss_search'] = lambda: index.search(queries, k)
        contenders['faiss_pairwise'] = lambda: index.pairwise(queries)
      timed = timing.timed_together(contenders, repeats)
      timed['fwjax_topk'] = timing.timed(lambda: distances.topk(queries, items, k, metric), repeats)
      t = timed['fwjax_pairwise'][1]
      moved = 4 * num_items * dim + 4 * num_queries * num_items
      row.update({'fwjax_pairwise_s': t, 'fwjax_pairwise_first_call_s': timed['fwjax_pairwise'][0],
                  'bandwidth_share': moved / t / limits['memory_bandwidth_bytes_per_s'],
                  'flop_share': (2 * num_queries * num_items * dim / t
                                 / limits['matmul_flops_per_s'] if metric != 'manhattan' else None)})
      for name in ('fwjax_topk', 'fwjax_collection_pairwise', 'fwjax_collection_topk'):
        row[f'{name}_s'] = timed[name][1]
      fw_d, fw_i = distances.topk(queries, items, k, metric)
      same = distances.topk(queries, collection, k, metric)
      row['collection_bit_identical'] = bool(np.array_equal(fw_d, same[0])
                                             and np.array_equal(fw_i, same[1]))
      peer_rows = {}
      if index is not None:
        for name in ('faiss_search', 'faiss_pairwise'):
          peer_rows[name] = {'seconds': timed[name][1], 'scaled_from': None}
        _, faiss_i = index.search(queries, k)
        row['faiss_topk_agreement'] = float(np.mean([len(set(a) & set(b)) / k
                                                     for a, b in zip(fw_i, faiss_i)]))
        del index, contenders
      if metric in peers.SCIPY_METRICS and available['scipy']:
        peer_rows['scipy_cdist'] = _peer(
            lambda x: lambda: peers.scipy_distances(queries, x, metric), items, subset, budget_s,
            repeats)
      if metric in peers.SKLEARN_METRICS and available['sklearn']:
        peer_rows['sklearn'] = _peer(
            lambda x: lambda: peers.sklearn_distances(queries, x, metric), items, subset,
            budget_s, repeats)
      row['peers'] = peer_rows
      rows.append(row)
      _print_row(row)
  return {'limits': limits, 'collection_build_s': collection_build_s, 'rows': rows}


def _print_row(row: dict) -> None:
  fw, fw_topk = row['fwjax_pairwise_s'], row['fwjax_topk_s']
  flops = f"{row['flop_share']:.0%}" if row['flop_share'] is not None else '  - '
  print(f"Q={row['Q']:<4d} {row['metric']:<12s} fwjax pairwise {fw:8.4f}s (first {row['fwjax_pairwise_first_call_s']:.2f}s)"
        f"  topk {fw_topk:8.4f}s  bw {row['bandwidth_share']:.0%} flop {flops}", flush=True)
  print(f"    Collection: pairwise {row['fwjax_collection_pairwise_s']:8.4f}s  topk "
        f"{row['fwjax_collection_topk_s']:8.4f}s  (same bits as bare items: "
        f"{row['collection_bit_identical']})", flush=True)
  for name, peer in row['peers'].items():
    what = 'topk' if name == 'faiss_search' else 'pairwise'
    base, base_c = (fw_topk, row['fwjax_collection_topk_s']) if what == 'topk' else (
        fw, row['fwjax_collection_pairwise_s'])
    scaled = f"  (timed on {peer['scaled_from']} items, scaled)" if peer['scaled_from'] else ''
    print(f"    {name:<15s} {peer['seconds']:8.4f}s  {peer['seconds'] / base:6.2f}x vs fwjax "
          f"{what}, {peer['seconds'] / base_c:6.2f}x vs Collection {what}{scaled}", flush=True)
  if 'faiss_topk_agreement' in row:
    print(f"    top-{{k}} agreement with faiss: {row['faiss_topk_agreement']:.3f}", flush=True)


def _summary(result: dict) -> None:
  by = {(r['Q'], r['metric']): r for r in result['rows']}
  print('\nsummary (peer time / fwjax time; > 1: fwjax faster; bare items and a Collection, '
        'the counterpart of a built faiss index; one-off: a top-k from nothing prepared)')
  for (q, metric), r in sorted(by.items()):
    if metric == 'modified' and (q, 'cosine') in by:
      cos = by[(q, 'cosine')]
      ratios = ', '.join(f"{label} {r[key] / cos[key]:.2f}x" for label, key in (
          ('pairwise', 'fwjax_pairwise_s'), ('topk', 'fwjax_topk_s'),
          ('Collection pairwise', 'fwjax_collection_pairwise_s'),
          ('Collection topk', 'fwjax_collection_topk_s')))
      print(f"Q={q:<4d} modified / cosine: {ratios}")
    for name in ('faiss_search', 'faiss_pairwise'):
      if name in r['peers']:
        what = 'topk' if name == 'faiss_search' else 'pairwise'
        peer = r['peers'][name]['seconds']
        print(f"Q={q:<4d} {metric:<10s} {name:<15s} {peer / r[f'fwjax_{what}_s']:6.2f}x bare, "
              f"{peer / r[f'fwjax_collection_{what}_s']:6.2f}x Collection")
    if 'faiss_search' in r['peers']:
      # One query batch against a numpy array, nothing prepared: fwjax.topk copies the items
      # and computes their statistics in the call, faiss builds its index (a copy, and for
      # cosine the normalisation) before it searches.
      one_off = r['faiss_build_s'] + r['peers']['faiss_search']['seconds']
      print(f"Q={q:<4d} {metric:<10s} {'one-off top-k':<15s} {one_off / r['fwjax_topk_s']:6.2f}x "
            f"(faiss build + search {one_off:.3f}s, fwjax topk {r['fwjax_topk_s']:.3f}s)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='N=20,000, Q in {1, 16}, 2 repeats')
  parser.add_argument('--num_items', type=int, default=None, help='N (default 200,000)')
  parser.add_argument('--dim', type=int, default=2048)
  parser.add_argument('--queries', default=None, help='comma-separated Q values (1,16,256)')
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=None)
  parser.add_argument('--subset', type=int, default=10_000,
                      help='items timed first; slow peers are scaled from it')
  parser.add_argument('--peer_budget_s', type=float, default=20.0,
                      help='a peer predicted slower than this at full N is scaled from --subset')
  parser.add_argument('--out', help='write the results as JSON here')
  args = parser.parse_args()
  num_items = args.num_items or (20_000 if args.quick else 200_000)
  query_counts = [int(v) for v in (args.queries or ('1,16' if args.quick else '1,16,256')).split(',')]
  repeats = args.repeats or (2 if args.quick else 3)
  print(f'N={num_items} D={args.dim} k={args.k} backend={jax.default_backend()} '
        f'devices={jax.local_device_count()} peers={peers.available()}')
  result = run(num_items, args.dim, query_counts, args.k, repeats, args.subset,
               args.peer_budget_s, args.quick)
  limits = result['limits']
  print(f"limits: memory {limits['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, matmul "
        f"{limits['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s")
  _summary(result)
  result['config'] = {'num_items': num_items, 'dim': args.dim, 'queries': query_counts,
                      'k': args.k, 'repeats': repeats, 'subset': args.subset,
                      'peer_budget_s': args.peer_budget_s, 'machine': platform.node(),
                      'backend': jax.default_backend(), 'jax': jax.__version__}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
