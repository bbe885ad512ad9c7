"""Distances between feature vectors, and ranking of collections larger than device memory.

Metrics (``METRICS``), for a query ``a`` and an item ``b`` of length n:

* ``euclidean`` ``||a - b||``, ``sqeuclidean`` ``||a - b||^2``, ``manhattan`` ``sum |a - b|``,
* ``cosine`` ``1 - a.b / (||a|| ||b||)``,
* ``modified`` (Ivanov, Gorlushkina & Govorov 2018, as printed for 3-vectors in de Bie 2020),
  generalised to n dimensions with centred vectors ``ca = a - mean(a)``::

      t1 = (||a - b||^2 / (sum(a) sum(b)))^2
      t2 = (cos(a, b) - 1)^2
      t3 = (||ca - cb||^2 / (2 (||ca||^2 + ||cb||^2)))^2       distance = t1 + t2 + t3

  For n = 3 this is the printed formula term by term (its third term reads
  ``9||ca-cb||^2 / (9(||ca||^2+||cb||^2))`` squared and divided by 4).

Euclidean, cosine and modified come from ONE float32 matrix product at full precision
(``Precision.HIGHEST``: never TF32) plus per-row squared norms and sums; manhattan is a blocked
reduction. Expanded forms lose accuracy for near-duplicates (``||a||^2 + ||b||^2 - 2a.b``), so
results are clamped at 0 and :func:`topk` can re-score its answer exactly in float64.

Ranking (:func:`topk`, :func:`rank`) streams the items in chunks from a numpy array, a jax array,
an ``np.memmap`` or the path of a .npy file, splits each chunk over all local devices, and returns
exactly what the unchunked computation returns: ties are broken by the lower item index, and an
item's distance has the same bits whatever the chunk size or number of devices.

Input rules (checked where the data enters, never a silent NaN in a ranking); each raises
``ValueError`` naming the argument and row:

* dimensions: queries and items must have the same feature length D >= 1; no empty inputs.
* NaN or Inf features (or features so large that a squared norm overflows float32): refused.
  Items are checked chunk by chunk while streaming (from the statistics the kernel computes
  anyway), and the error names the global row index.
* zero vectors: refused for ``cosine`` and ``modified`` (no direction); fine for the others.
* ``modified`` needs every feature sum > 0 (``t1`` divides by ``sum(a) sum(b)``); non-negative
  CNN features (after a ReLU) satisfy it unless a row is all zeros. When both centred vectors
  are zero (two constant vectors) ``t3`` is 0/0 and is defined as 0.
* unknown metric or fusion names, ``k < 1`` or ``k > N``.

Many queries against one collection: wrap the items in a :class:`Collection` once. It computes
and checks the per-item statistics a single time, so each later call reads the items once for a
matrix product and nothing more; results are bit for bit those of the bare items.

Several references per query: pass queries of shape (Q, R, D), fused by ``fusion``:

* ``'sum'`` (default): the sum of the R distances, the thesis's method (de Bie 2020), so results
  compare with it; an item must be close to every reference, and per query the ranking equals
  that of the mean distance.
* ``'mean_feature'``: the distance to the mean of the R reference vectors (the thesis's future
  work): one distance per item, R times cheaper, but it changes the geometry (the mean of two
  views is not a view).
* ``'min'``: the smallest of the R distances: an item close to any one reference ranks high;
  a single poor reference cannot hide a match, but one outlying reference pulls in its own
  neighbours.

Ragged reference sets: pad to the largest R and pass ``reference_mask`` (Q, R) bool; masked
references are ignored (they need not be valid vectors).
"""

import contextlib
import functools
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fwjax.distances import kernels as K
from fwjax.distances import stream as _ranking

METRICS = K.METRICS
FUSIONS = K.FUSIONS

ArrayLike = Any  # np.ndarray, np.memmap, jax.Array, or (items only) a .npy path

_REASONS = {
    K.NON_FINITE: 'has a NaN or Inf feature (or its squared norm overflows float32)',
    K.ZERO_NORM: ('is a zero vector, which has no direction for the {metric} distance; drop it '
                  'or use euclidean/manhattan'),
    K.NON_POSITIVE_SUM: ('has a feature sum <= 0, where the modified distance\'s first term '
                         '||a-b||^2/(sum(a)sum(b)) is undefined; use non-negative features '
                         '(e.g. after a ReLU) or another metric'),
}


def _check_metric(metric: str, fusion: str = 'sum') -> None:
  if metric not in METRICS:
    raise ValueError(f'metric: unknown metric {metric!r}; valid: {", ".join(METRICS)}')
  if fusion not in FUSIONS:
    raise ValueError(f'fusion: unknown fusion {fusion!r}; valid: {", ".join(FUSIONS)}')


def _raise_bad_row(name: str, row: str, code: int, metric: str) -> None:
  raise ValueError(f'{name} row {row} {_REASONS[code].format(metric=metric)}')


_stats = jax.jit(K.row_stats)


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


def _source(items) -> _ranking.ItemSource:
  if isinstance(items, Collection):
    return items.source
  if isinstance(items, _ranking.ItemSource):
    return items
  source = _ranking.ItemSource(items)
  if source.num == 0 or source.dim == 0:
    raise ValueError(f'items: empty, shape {(source.num, source.dim)}')
  return source


class Collection:
  """Items prepared once for many queries: their row statistics computed and checked.

  Ranking every crime-scene mark against the same reference collection reads the whole
  collection once per query batch. Euclidean, cosine and modified need each item's squared norm
  (and modified its sum); a ``Collection`` computes them once, and checks every row for NaN and
  Inf, so a query costs one matrix product over the items and nothing else (for one query on
  the CPU, one batched matrix-vector product at the memory bandwidth). It plays the part of a
  built faiss index, and like one it keeps its own copy of an in-memory array: float32 on a
  64-byte boundary, which JAX's CPU client adopts without a copy, followed by zero rows up to a
  whole number of default chunks (a few blocks of rows per chunk; for both default chunkings,
  a query's and one query's manhattan's smaller one), so every chunk of a query with the
  default ``chunk_size`` goes to the device as a view. A memory map or .npy path stays on
  disk and is streamed; a jax array stays where it is. Between calls it keeps the host buffers
  chunks are copied into (three of ``chunk_size`` rows, 64 MiB each by default), so they are not
  page-faulted in again each call.

  Every function here that takes items takes a ``Collection``, with results bit for bit those
  of the bare items (the statistics are computed by the same blocked kernel).

  Args:
    items: (N, D) numpy array, jax array, ``np.memmap`` or .npy path.
    chunk_size: items per chunk while computing the statistics (default ~64 MiB).
    block: item rows per kernel block (default: a function of N); queries must use the same.
    copy: keep an aligned float32 copy of an in-memory numpy array (default True); False
      reads the caller's array (no extra memory, but a copy per chunk unless it is float32 on
      a 64-byte boundary, and changes to it show in later results).

  Attributes:
    source: where the items are read from.
    block: the kernel block the statistics were computed with.
    sqnorm, sums: (N,) float32 squared norms and sums of the rows.

  Raises:
    ValueError: empty or malformed items; a row with a NaN or Inf feature (named by index).

  Example:
    >>> refs = Collection(np.random.default_rng(0).random((1000, 64), dtype=np.float32))
    >>> topk(np.ones((2, 64)), refs, 5, 'cosine')[1].shape
    (2, 5)
  """

  def __init__(self, items: ArrayLike | str | os.PathLike, *, chunk_size: int | None = None,
               block: int | None = None, copy: bool = True):
    source = _source(items)
    self.block = _ranking.block_size(source.num, block)
    if copy and isinstance(source.items, np.ndarray) and not isinstance(source.items, np.memmap):
      # Zero rows after the items, up to a whole number of default query chunks for both
      # default chunkings (a query's, and one query's manhattan's smaller one): every chunk, the
      # last one too, is then a view (default chunks are balanced, so this is a few blocks of
      # rows per chunk: 3,000 rows for 200,000 items of D = 2048).
      length = max(-(-source.num // rows) * rows for rows in (
          _ranking.chunk_rows(None, source.dim, self.block, jax.local_device_count(),
                              source.num, _ranking.rows_align(source.dim), budget)
          for budget in (None, K.ONE_QUERY_MANHATTAN_BYTES)))
      aligned = _ranking.aligned_empty((length, source.dim))
      aligned[:source.num] = source.items
      aligned[source.num:] = 0.0
      source = _ranking.ItemSource(aligned[:source.num], padded=aligned)
    self.source = source
    rows = _ranking.chunk_rows(chunk_size, source.dim, self.block, 1, source.num)
    self.sqnorm = np.empty(source.num, np.float32)
    self.sums = np.empty(source.num, np.float32)
    buffer = (None if isinstance(source.items, jax.Array)
              else _ranking.aligned_empty((rows, source.dim)))
    for start in range(0, source.num, rows):
      stop = min(start + rows, source.num)
      # Each chunk's results are copied out before the next read, so one buffer serves all.
      x = jax.device_put(source.read(start, stop, rows, out=buffer))
      sqnorm, sums = K.item_stats(x, self.block)
      self.sqnorm[start:stop] = np.asarray(sqnorm)[:stop - start]
      self.sums[start:stop] = np.asarray(sums)[:stop - start]
    self._checked = set()
    self._check('euclidean')
    # Chunk buffers kept between calls (see _ranking.stream); one call uses them at a time.
    self._buffer_pool = {}
    self._buffer_lock = threading.Lock()

  @property
  def shape(self) -> tuple[int, int]:
    return self.source.num, self.source.dim

  def __len__(self) -> int:
    return self.source.num

  def __repr__(self) -> str:
    return f'Collection(N={self.source.num}, D={self.source.dim}, block={self.block})'

  def _check(self, metric: str) -> None:
    """Raises for the first item row ``metric`` cannot use (from the stored statistics)."""
    if metric in self._checked:
      return
    codes = np.asarray(K.row_codes(jnp.asarray(self.sqnorm), jnp.asarray(self.sums), metric))
    bad = np.flatnonzero(codes != K.OK)
    if bad.size:
      _raise_bad_row('items', str(bad[0]), int(codes[bad[0]]), metric)
    self._checked.add(metric)

  @contextlib.contextmanager
  def _lend_buffers(self):
    """The kept chunk buffers for one call at a time; None (new buffers) for a concurrent one."""
    if not self._buffer_lock.acquire(blocking=False):
      yield None
      return
    try:
      yield self._buffer_pool
    finally:
      self._buffer_lock.release()

  def _prepared_for(self, metric: str, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    if block is not None and block != self.block:
      raise ValueError(f'block: the Collection was prepared with block={self.block}, got {block}')
    self._check(metric)
    return self.sqnorm, self.sums


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
