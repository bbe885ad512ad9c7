"""pairwise, topk and rank: the public distance functions (documented in ``fwjax.distances``)."""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fwjax.distances import kernels as K
from fwjax.distances import stream as _ranking

from fwjax.distances.collection import Collection, _raise_bad_row, _source

ArrayLike = Any  # np.ndarray, np.memmap, jax.Array, or (items only) a .npy path

_stats = jax.jit(K.row_stats)


def _check_metric(metric: str, fusion: str = 'sum') -> None:
  if metric not in K.METRICS:
    raise ValueError(f'metric: unknown metric {metric!r}; valid: {", ".join(K.METRICS)}')
  if fusion not in K.FUSIONS:
    raise ValueError(f'fusion: unknown fusion {fusion!r}; valid: {", ".join(K.FUSIONS)}')

def _prepare_queries(queries: ArrayLike, reference_mask, metric: str, fusion: str, dim: int):
  """Validated (rows, sqnorm, sum, mask) for the kernels, and R; rows are (Q*R, D)."""
  q = np.asarray(queries, np.float32)
  if q.ndim == 2:
    q = q[:, None, :]
  if q.ndim != 3:
    raise ValueError(f'queries: expected (Q, D) or (Q, R, D), got shape {np.shape(queries)}')
  num_queries, num_refs, qdim = q.shape
  if num_queries == 0 or num_refs == 0:
    raise ValueError(f'queries: empty, shape {q.shape}')
  if qdim != dim:
    raise ValueError(f'queries have {qdim} features but items have {dim}: mismatched D')
  if reference_mask is None:
    mask = np.ones((num_queries, num_refs), bool)
  else:
    mask = np.asarray(reference_mask)
    if mask.shape != (num_queries, num_refs) or mask.dtype != bool:
      raise ValueError(f'reference_mask: expected bool of shape {(num_queries, num_refs)}, '
                       f'got {mask.dtype} {mask.shape}')
  empty = np.flatnonzero(~mask.any(axis=1))
  if empty.size:
    raise ValueError(f'reference_mask: query row {empty[0]} has no reference')
  bad = np.argwhere(mask & ~np.isfinite(q).all(axis=-1))
  if bad.size:
    _raise_bad_row('queries', _where(bad[0], num_refs), K.NON_FINITE, metric)
  if fusion == 'mean_feature' and num_refs > 1:
    weights = mask[:, :, None].astype(np.float64)
    q = np.where(mask[:, :, None], q, 0.0)  # padding may hold NaN: 0 * NaN is NaN
    q = ((q * weights).sum(axis=1) / weights.sum(axis=1)).astype(np.float32)[:, None, :]
    mask = np.ones((num_queries, 1), bool)
    num_refs = 1
  elif not mask.all():
    # masked references may hold anything: replace them by a valid one so the kernels stay
    # finite; the fusion ignores them.
    first = mask.argmax(axis=1)
    q = np.where(mask[:, :, None], q, q[np.arange(num_queries), first][:, None, :])
  rows = q.reshape(num_queries * num_refs, dim)
  sqnorm, total = _stats(rows)
  codes = np.asarray(K.row_codes(sqnorm, total, metric)).reshape(num_queries, num_refs)
  bad = np.argwhere(codes != K.OK)
  if bad.size:
    _raise_bad_row('queries', _where(bad[0], num_refs, fusion), int(codes[tuple(bad[0])]), metric)
  return (rows, np.asarray(sqnorm), np.asarray(total), mask), num_refs


def _where(qr, num_refs: int, fusion: str = 'sum') -> str:
  if fusion == 'mean_feature':
    return f'{qr[0]} (mean of its references)'
  return f'{qr[0]}' if num_refs == 1 else f'{qr[0]} reference {qr[1]}'

def pairwise(queries: ArrayLike, items: ArrayLike, metric: str = 'euclidean', *,
             block: int | None = None) -> jax.Array:
  """All distances between query rows and item rows.

  Args:
    queries: (Q, D) array.
    items: (N, D) array (numpy, jax or a memory map; it is read whole onto the default device;
      use :func:`topk` or :func:`rank` for collections larger than memory), or a
      :class:`Collection` of one.
    metric: one of ``METRICS``.
    block: item rows per kernel block (default: a function of N); exposed for tests.

  Returns:
    (Q, N) float32 jax array, >= 0.

  Raises:
    ValueError: unknown metric; bad shapes, empty inputs or rows (see the module docstring).

  Example:
    >>> pairwise(np.eye(2, 3), np.ones((4, 3)), 'cosine').shape
    (2, 4)
  """
  _check_metric(metric)
  if np.ndim(queries) != 2:
    raise ValueError(f'queries: pairwise takes (Q, D), got shape {np.shape(queries)}; '
                     'use topk/rank for several references per query')
  source = _source(items)
  (rows, sqnorm, total, mask), _ = _prepare_queries(queries, None, metric, 'sum', source.dim)
  stats = ()
  checked = isinstance(items, Collection)  # its rows were checked when it was built
  if checked:
    stats = items._prepared_for(metric, block)  # pylint: disable=protected-access
    block = items.block
    if metric == 'manhattan':
      stats = ()  # manhattan needs no statistics
  block = _ranking.block_size(source.num, block)
  x = source.read(0, source.num, source.num)
  most = K.piece_bytes(metric, rows.shape[0])
  pieces = _ranking.host_pieces(x, most // (4 * source.dim)) if most else None
  parts = [K.chunk_distances(rows, sqnorm, total, mask, piece, jnp.int32(start),
                             jnp.int32(source.num), *stats, metric=metric, block=block,
                             num_refs=1, fusion='sum', batched=K.whole_blocks(source.num, block))
           for start, piece in pieces or [(0, x)]]
  d, codes = parts[0][0], parts[0][2]
  if len(parts) > 1:
    d = jnp.concatenate([p[0] for p in parts], axis=1)
    codes = jnp.concatenate([p[2] for p in parts])
  if not checked:
    codes = np.asarray(codes)
    bad = np.flatnonzero(codes != K.OK)
    if bad.size:
      _raise_bad_row('items', str(bad[0]), int(codes[bad[0]]), metric)
  return d


def _run(queries, items, metric, fusion, reference_mask, k, chunk_size, block, out_full):
  _check_metric(metric, fusion)
  source = _source(items)
  prepared, num_refs = _prepare_queries(queries, reference_mask, metric, fusion, source.dim)
  if k is not None:
    _check_k(k, source.num)
  stats = None
  if isinstance(items, Collection):
    stats = items._prepared_for(metric, block)  # pylint: disable=protected-access
    block = items.block
    if metric == 'manhattan':
      stats = None  # manhattan needs no statistics: none are sent with the chunks

  def on_bad_row(row, code):
    _raise_bad_row('items', str(row), code, metric)

  out = np.empty((prepared[3].shape[0], source.num), np.float32) if out_full else None
  run = functools.partial(_ranking.stream, source, prepared, metric=metric, fusion=fusion,
                          num_refs=num_refs, k=k or 0, chunk_size=chunk_size, block=block,
                          on_bad_row=on_bad_row, out=out, stats=stats)
  if isinstance(items, Collection):
    with items._lend_buffers() as pool:  # pylint: disable=protected-access
      result = run(buffer_pool=pool)
  else:
    result = run()
  return source, num_refs, result, out


def topk(queries: ArrayLike, items: ArrayLike | str | os.PathLike, k: int,
         metric: str = 'euclidean', *, fusion: str = 'sum', reference_mask: ArrayLike = None,
         chunk_size: int | None = None, rescore: bool = False, rescore_pool: int | None = None,
         block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` nearest items of each query, streaming the items in chunks over all devices.

  Args:
    queries: (Q, D), or (Q, R, D) for R references per query (fused by ``fusion``).
    items: (N, D) numpy array, jax array, ``np.memmap``, the path of a .npy file (memory-mapped;
      resident memory stays bounded), or a :class:`Collection` (faster for repeated queries).
    k: how many, 1 <= k <= N.
    metric: one of ``METRICS``.
    fusion: one of ``FUSIONS`` (module docstring); ignored when R = 1.
    reference_mask: (Q, R) bool, False for padding references of ragged reference sets.
    chunk_size: items per chunk (rounded up to a multiple of block x devices); default ~64 MiB.
    rescore: re-score a candidate pool in float64 from the original features (no cancellation)
      and return the best ``k`` of it by the exact distance. The pool is the float32 top
      ``rescore_pool`` (default ``max(2k, k + 16)``, at most N), so an item outside it is not
      recovered.
    rescore_pool: see ``rescore``.
    block: item rows per kernel block (default: a function of N); exposed for tests.

  Returns:
    (distances (Q, k) float32 ascending, indices (Q, k) int64); equal distances are ordered by
    index.

  Raises:
    ValueError: see the module docstring; an item row is named by its global index.
  """
  if rescore:
    if not isinstance(items, Collection):
      items = _source(items)  # opened once for both passes
    source = _source(items)
    _check_k(k, source.num)
    pool = min(_ranking_pool(k, rescore_pool), source.num)
    source, _, (_, index), _ = _run(queries, items, metric, fusion, reference_mask, pool,
                                    chunk_size, block, False)
    return _rescore(queries, reference_mask, source, index, metric, fusion, k)
  _, _, (dist, index), _ = _run(queries, items, metric, fusion, reference_mask, k, chunk_size,
                                block, False)
  return dist, index


def rank(queries: ArrayLike, items: ArrayLike | str | os.PathLike, metric: str = 'euclidean', *,
         fusion: str = 'sum', reference_mask: ArrayLike = None, chunk_size: int | None = None,
         block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Every item ordered by distance to each query (the full ranking).

  Args: as :func:`topk` (without ``k`` and re-scoring).

  Returns:
    (distances (Q, N) float32 ascending, order (Q, N) int64 item indices); equal distances are
    ordered by index. Host memory: 12 bytes per (query, item).

  Raises:
    ValueError: see the module docstring.
  """
  _, _, _, full = _run(queries, items, metric, fusion, reference_mask, None, chunk_size, block,
                       True)
  order = np.argsort(full, axis=1, kind='stable')
  return np.take_along_axis(full, order, axis=1), order.astype(np.int64)


def _check_k(k: int, num_items: int) -> None:
  if not 1 <= k <= num_items:
    raise ValueError(f'k: must be in [1, N={num_items}], got {k}; use rank() for a full order')


def _ranking_pool(k: int, rescore_pool: int | None) -> int:
  if rescore_pool is None:
    return max(2 * k, k + 16)
  if rescore_pool < k:
    raise ValueError(f'rescore_pool: must be >= k={k}, got {rescore_pool}')
  return rescore_pool


def _rescore(queries, reference_mask, source, index, metric, fusion, k):
  """Exact float64 distances for each query's candidates; best ``k`` by (distance, index)."""
  q = np.asarray(queries, np.float64)
  q = q[:, None, :] if q.ndim == 2 else q
  mask = (np.ones(q.shape[:2], bool) if reference_mask is None
          else np.asarray(reference_mask, bool))
  dist_out = np.empty((q.shape[0], k), np.float32)
  index_out = np.empty((q.shape[0], k), np.int64)
  for i in range(q.shape[0]):
    candidates = np.unique(index[i])
    x = source.gather(candidates)
    refs = q[i][mask[i]]
    if fusion == 'mean_feature':
      d = K.exact_distances(refs.mean(axis=0, keepdims=True), x, metric)[0]
    else:
      d = K.exact_distances(refs, x, metric)
      d = d.min(axis=0) if fusion == 'min' else d.sum(axis=0)
    best = np.lexsort((candidates, d))[:k]
    dist_out[i], index_out[i] = d[best], candidates[best]
  return dist_out, index_out
