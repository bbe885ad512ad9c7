"""A collection prepared once for many queries (the role of a built faiss index)."""

import contextlib
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fwjax.distances import kernels as K
from fwjax.distances import stream as _ranking

ArrayLike = Any  # np.ndarray, np.memmap, jax.Array, or a .npy path

_REASONS = {
    K.NON_FINITE: 'has a NaN or Inf feature (or its squared norm overflows float32)',
    K.ZERO_NORM: ('is a zero vector, which has no direction for the {metric} distance; drop it '
                  'or use euclidean/manhattan'),
    K.NON_POSITIVE_SUM: ('has a feature sum <= 0, where the modified distance\'s first term '
                         '||a-b||^2/(sum(a)sum(b)) is undefined; use non-negative features '
                         '(e.g. after a ReLU) or another metric'),
}

def _raise_bad_row(name: str, row: str, code: int, metric: str) -> None:
  raise ValueError(f'{name} row {row} {_REASONS[code].format(metric=metric)}')


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
  (and modified its sum); a ``Collection`` computes them once and checks every row for NaN and
  Inf, so a later query costs one matrix product over the items and nothing else. It plays the
  part of a built faiss index, and like one it keeps its own float32 copy of an in-memory array
  (``copy=False`` reads the caller's array instead). A memory map or .npy path stays on disk and
  is streamed; a jax array stays where it is.

  Every function here that takes items takes a ``Collection``, with results bit for bit those
  of the bare items.

  Args:
    items: (N, D) numpy array, jax array, ``np.memmap`` or .npy path.
    chunk_size: items per chunk while computing the statistics (default: a memory budget).
    block: item rows per kernel block (default: a function of N), for tests; queries must use
      the same.
    copy: keep a private copy of an in-memory numpy array (default True). False uses the
      caller's array: no extra memory, but later changes to it show in later results, and calls
      may copy each chunk.

  Attributes:
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
      # The copy is float32 on a 64-byte boundary, which JAX's CPU client adopts without a copy
      # (see stream.host_pieces). Between calls the Collection keeps the host buffers chunks are
      # copied into, so they are not page-faulted in again each call.
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

