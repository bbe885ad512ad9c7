"""Streaming machinery behind :func:`fwjax.distances.topk` and :func:`fwjax.distances.rank`.

Items are read in chunks (from a numpy array, a memory map, a .npy path or a jax array), each
chunk is split over all local devices along the item axis, and the chunk's distances are reduced
on device to a running top-k (or copied out for a full ranking). A worker thread reads, converts
and transfers the next chunk while the devices compute the current one. Pages of a memory map are
released after each chunk is copied, so resident memory does not grow with the collection.
"""

import concurrent.futures
import functools
import mmap
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fwjax.distances import kernels as K

_AXIS = 'items'
_CHUNK_BYTES = 64 << 20  # default chunk: ~64 MiB of float32 items copied on the host
_VIEW_CHUNK_BYTES = 256 << 20  # ~256 MiB when chunks are views (no host memory): fewer steps
_ALIGN = 64  # bytes: JAX's CPU client adopts host buffers aligned like this without a copy
_HUGE_PAGE = 2 << 20


class ItemSource:
  """Chunked float32 access to a (N, D) collection; releases memory-map pages after use."""

  def __init__(self, items, name: str = 'items', padded: np.ndarray | None = None):
    """``padded``: optionally, a buffer that begins with ``items`` and continues with spare
    rows (a Collection's aligned copy), so that a last, partial chunk is read as a view too."""
    if isinstance(items, (str, os.PathLike)):
      try:
        items = np.load(items, mmap_mode='r')
      except (OSError, ValueError) as e:
        raise ValueError(f'{name}: cannot memory-map {os.fspath(items)!r} as a .npy file: {e}') from e
    if not isinstance(items, (np.ndarray, jax.Array)):
      items = np.asarray(items)
    if items.ndim != 2:
      raise ValueError(f'{name}: expected a (N, D) array, got shape {tuple(items.shape)}')
    if not (np.issubdtype(items.dtype, np.floating) or np.issubdtype(items.dtype, np.integer)):
      raise ValueError(f'{name}: expected real numbers, got dtype {items.dtype}')
    self.items = items
    self.num, self.dim = items.shape
    self._padded = padded
    self._map = getattr(items, '_mmap', None)
    self._map_start = (np.frombuffer(self._map, np.uint8).ctypes.data
                       if isinstance(self._map, mmap.mmap) else None)
    self._file, self._file_offset = None, None
    if (self._map_start is not None and getattr(items, 'filename', None)
        and items.dtype == np.dtype('<f4') and items.flags.c_contiguous):
      # Read the file with pread instead of faulting the mapping in page by page: it runs at
      # copy speed from the page cache and leaves nothing resident.
      map_offset = items.offset - items.offset % mmap.ALLOCATIONGRANULARITY
      self._file = items.filename
      self._file_offset = map_offset + (items.ctypes.data - self._map_start)

  @property
  def cheap_reads(self) -> bool:
    """Whether reading a chunk costs next to nothing on the host: a jax array (sliced on the
    device), or an in-memory float32 array whose chunks are 64-byte aligned views."""
    if isinstance(self.items, jax.Array):
      return True
    return self._map_start is None and _adoptable(self.items) and rows_align(self.dim)

  def read(self, start: int, stop: int, rows: int, out: np.ndarray | None = None):
    """Rows [start, stop) as float32, padded to ``rows`` rows (host or device array).

    A whole chunk of an in-memory float32 array that starts on a 64-byte boundary is returned
    as a view (the device adopts it without a copy); anything else is copied into ``out`` (a
    (rows, D) buffer from :func:`aligned_empty`, reused by the caller) or a new buffer. Padding
    rows are left as the buffer had them (zeros when new, an earlier chunk's rows when reused):
    the kernels mask them, and a row's result never depends on another row's values, so
    filling them would only cost time (page faults for a fresh buffer).
    """
    if isinstance(self.items, jax.Array):
      part = self.items if (start, stop) == (0, self.num) else self.items[start:stop]
      part = part.astype(jnp.float32)  # no copy when already float32
      if rows == part.shape[0]:
        return part
      return jnp.pad(part, ((0, rows - part.shape[0]), (0, 0)))
    if self._map_start is None and stop - start == rows and _adoptable(self.items[start:stop]):
      return self.items[start:stop]
    if (self._padded is not None and start + rows <= len(self._padded)
        and _adoptable(self._padded[start:start + rows])):
      return self._padded[start:start + rows]
    if out is None:
      out = aligned_empty((rows, self.dim))
    if self._file is not None:
      self._pread(out[:stop - start], self._file_offset + 4 * self.dim * start)
      return out
    part = self.items[start:stop]
    out[:stop - start] = part  # the copy that takes the pages out of the memory map
    self._release(part)
    return out

  def _pread(self, out: np.ndarray, offset: int) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(self._file, os.O_RDONLY)
    try:
      done = 0
      while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
          raise ValueError(f'items: {self._file} ended early (truncated file?)')
        done += n
    finally:
      os.close(fd)

  def gather(self, indices: np.ndarray) -> np.ndarray:
    """Rows at sorted unique ``indices`` (float64), for re-scoring."""
    return np.asarray(self.items[indices], np.float64)

  def _release(self, part: np.ndarray) -> None:
    # Touched pages of a file mapping count in the resident set until unmapped; dropping them
    # (the page cache keeps the data) keeps peak RSS independent of the collection size.
    if self._map_start is None or part.size == 0:
      return
    page = mmap.PAGESIZE
    offset = part.ctypes.data - self._map_start
    low = (offset // page) * page
    high = min(offset + part.nbytes, len(self._map))
    if 0 <= low < high:
      self._map.madvise(mmap.MADV_DONTNEED, low, high - low)


def rows_align(dim: int) -> bool:
  """Whether every row of a 64-byte-aligned float32 (N, dim) array starts on a 64-byte boundary
  (so all its chunks are views the device adopts)."""
  return (4 * dim) % _ALIGN == 0


def host_pieces(x, max_rows: int) -> list[tuple[int, np.ndarray]] | None:
  """(start, rows) pieces of ``x`` of about ``max_rows`` rows that are views of its memory, for
  a kernel that runs faster on smaller pieces; None where that memory is not the CPU's.

  ``x`` is a host array (an aligned view from :meth:`ItemSource.read`) or a jax array on one
  CPU device, whose buffer numpy reads in place. The pieces are balanced over the fewest of
  ``max_rows`` and start on multiples of 16 rows (so on 64-byte boundaries for any D, and they
  go to the device without a copy): a piece may be up to 15 rows longer than ``max_rows``.
  """
  if jax.default_backend() != 'cpu':
    return None
  if isinstance(x, jax.Array):
    if not x.is_fully_addressable or len(x.devices()) != 1 or next(
        iter(x.devices())).platform != 'cpu':
      return None
    x = np.asarray(x)  # a view of the device buffer on the CPU
  if not _adoptable(x):
    return None
  count = -(-len(x) // max(max_rows, 16))
  rows = -(-len(x) // count // 16) * 16 if count > 1 else len(x)
  pieces = [(start, x[start:start + rows]) for start in range(0, len(x), rows)]
  return pieces if all(_adoptable(piece) for _, piece in pieces) else None


def _adoptable(a: np.ndarray) -> bool:
  """Float32, C-contiguous and 64-byte aligned: JAX's CPU client takes it without a copy."""
  return a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0


def aligned_empty(shape: tuple[int, int]) -> np.ndarray:
  """An uninitialised float32 host array on a 64-byte boundary.

  JAX's CPU client adopts such a buffer without copying it (device_put is then nearly free);
  numpy's own allocations are only 16-byte aligned and cost a slow copy per chunk. A buffer
  handed to the device is written again only once the computation that read it has finished
  (see :func:`stream`). Large buffers are anonymous memory maps (page-aligned) that ask for
  transparent huge pages: first-touch page faults otherwise dominate filling a fresh buffer.
  """
  nbytes = 4 * shape[0] * shape[1]
  if nbytes >= _HUGE_PAGE:
    buffer = mmap.mmap(-1, nbytes)
    if hasattr(mmap, 'MADV_HUGEPAGE'):
      buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, np.float32).reshape(shape)
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  offset = -raw.ctypes.data % _ALIGN
  return raw[offset:offset + nbytes].view(np.float32).reshape(shape)


def mesh() -> Mesh:
  """A 1-D mesh over all local devices, axis name 'items'."""
  return Mesh(np.array(jax.local_devices()), (_AXIS,))


def block_size(num_items: int, block: int | None) -> int:
  """Item rows per kernel block: a function of N only, so chunking never changes the bits.

  Up to 1,024 items, the next power of two; beyond, the largest divisor of N from 512 to 1,024
  where there is one, so that N is a whole number of blocks and one query's product is a single
  batched product (``kernels.whole_blocks``), else 1,024.
  """
  if block is not None:
    if block < 1:
      raise ValueError(f'block: must be positive, got {block}')
    return block
  if num_items <= 1024:
    return 1 << max(0, (num_items - 1).bit_length())
  return next((b for b in range(1024, 511, -1) if num_items % b == 0), 1024)


def chunk_rows(chunk_size: int | None, dim: int, block: int, num_devices: int,
               num_items: int, views: bool = False, max_bytes: int | None = None) -> int:
  """Chunk length: a multiple of block * devices, no larger than needed for the collection.

  The default is at most about ~64 MiB of items, or ~256 MiB when ``views`` (chunks are read
  without a copy), or ``max_bytes`` where that is smaller (a kernel that runs faster on smaller
  chunks), with the items split evenly over the fewest such chunks: the last chunk's padding,
  which is computed like real rows, is then at most ``block * devices`` rows per chunk.
  """
  unit = block * num_devices
  if chunk_size is None:
    budget = _VIEW_CHUNK_BYTES if views else _CHUNK_BYTES
    largest = min(budget, max_bytes or budget) // (4 * max(dim, 1))
    count = -(-num_items // max(unit, largest - largest % unit))  # the fewest chunks
    chunk_size = -(-num_items // count)
  if chunk_size < 1:
    raise ValueError(f'chunk_size: must be positive, got {chunk_size}')
  rows = -(-min(chunk_size, num_items) // unit) * unit
  return max(rows, unit)


@functools.lru_cache(maxsize=64)
def _step(the_mesh: Mesh, metric: str, block: int, num_refs: int, fusion: str, k: int,
          with_stats: bool, batched: bool):
  """Jitted per-chunk step: sharded distances, then a local top-k and a global merge."""
  replicated, by_item = P(), P(_AXIS)

  def per_shard(q, qn, qs, ref_mask, x, first_index, num_items, *stats):
    local_first = first_index + lax.axis_index(_AXIS) * x.shape[0]
    d, index, codes = K.chunk_distances(q, qn, qs, ref_mask, x, local_first, num_items, *stats,
                                        metric=metric, block=block, num_refs=num_refs,
                                        fusion=fusion, batched=batched)
    bad = jnp.where(codes != K.OK, index, K.NO_INDEX)
    where = jnp.argmin(bad)
    first_bad = jnp.stack([bad[where], codes[where]])[None]
    if k:
      d, index = K.local_topk(d, index, min(k, x.shape[0]))
    else:
      index = index[None]  # unused by a full ranking: positions are the indices
    return d, index, first_bad

  sharded = jax.shard_map(
      per_shard, mesh=the_mesh,
      in_specs=((replicated,) * 4 + (P(_AXIS, None), replicated, replicated)
                + (by_item,) * (2 if with_stats else 0)),
      out_specs=(P(None, _AXIS), P(None, _AXIS), P(_AXIS, None)))

  def step(best_d, best_i, q, qn, qs, ref_mask, x, first_index, num_items, *stats):
    d, index, first_bad = sharded(q, qn, qs, ref_mask, x, first_index, num_items, *stats)
    if k:
      d, index = K.merge_topk(best_d, best_i, d, index, k)
    return d, index, first_bad

  return jax.jit(step)


def stream(source: ItemSource, queries: tuple, *, metric: str, fusion: str, num_refs: int,
           k: int, chunk_size: int | None, block: int | None,
           on_bad_row: Callable[[int, int], None], out: np.ndarray | None = None,
           stats: tuple[np.ndarray, np.ndarray] | None = None,
           buffer_pool: dict[int, list] | None = None):
  """Runs the chunked computation; returns the (Q, k) top-k on the host, or fills ``out``.

  Args:
    queries: (q, sqnorm, sum, ref_mask) host arrays, already validated.
    k: top-k size, or 0 to write every distance into ``out`` (Q, N) float32.
    on_bad_row: called with (global row index, refusal code) of the first bad item row; raises.
    stats: (N,) squared norms and sums of the items (a checked Collection), or None.
    buffer_pool: chunk rows -> a ring of host buffers kept between calls (a Collection's, used
      by one call at a time), so they are not page-faulted in afresh on every call.
  """
  the_mesh = mesh()
  num_devices = the_mesh.devices.size
  block = block_size(source.num, block)
  rows = chunk_rows(chunk_size, source.dim, block, num_devices, source.num, source.cheap_reads,
                    K.piece_bytes(metric, queries[0].shape[0]))
  step = _step(the_mesh, metric, block, num_refs, fusion, k, stats is not None,
               K.whole_blocks(source.num, block))
  replicated = NamedSharding(the_mesh, P())
  by_item = NamedSharding(the_mesh, P(_AXIS, None))
  by_item_1d = NamedSharding(the_mesh, P(_AXIS))
  q = [jax.device_put(np.asarray(a), replicated) for a in queries]
  num_queries = q[3].shape[0]
  best_d = jax.device_put(np.full((num_queries, k), np.inf, np.float32), replicated)
  best_i = jax.device_put(np.full((num_queries, k), K.NO_INDEX, np.int32), replicated)
  num_items = jnp.int32(source.num)
  starts = list(range(0, source.num, rows))
  if stats is not None:  # padded once, so each chunk's statistics are views
    stats = [np.concatenate([s, np.zeros(len(starts) * rows - source.num, s.dtype)])
             for s in stats]
  # Host buffers for chunks that must be copied, reused in turn. Chunk n is loaded into
  # buffers[n % 3] while chunk n-1 computes; by then the host has waited for chunk n-2's
  # results (check below), so nothing still reads that buffer. A pooled ring was last used by
  # a call that has returned, so by finished computations.
  buffers = [None] * 3 if buffer_pool is None else buffer_pool.setdefault(rows, [None] * 3)

  def load(n):
    start = starts[n]
    stop = min(start + rows, source.num)
    if buffers[n % 3] is None and not isinstance(source.items, jax.Array):
      buffers[n % 3] = aligned_empty((rows, source.dim))
    x = jax.device_put(source.read(start, stop, rows, out=buffers[n % 3]), by_item)
    if stats is None:
      return x, ()
    return x, tuple(jax.device_put(s[start:start + rows], by_item_1d) for s in stats)

  def check(pending):
    start, first_bad, d = pending
    bad = np.asarray(first_bad)
    row = int(bad[:, 0].min())
    if row != K.NO_INDEX:
      on_bad_row(row, int(bad[bad[:, 0] == row][0, 1]))
    if out is not None:
      out[:, start:start + rows] = np.asarray(d)[:, :min(rows, source.num - start)]

  # Where reading costs host time (a copy, a file read), one worker prepares chunk i+1 while the
  # devices compute chunk i; where it costs nothing, a worker thread would only add hand-offs.
  # The host checks chunk i-1's bad rows one step behind, so it never waits on the device early.
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    submit = pool.submit if not source.cheap_reads else _done
    future = submit(load, 0)
    pending = None
    for n, start in enumerate(starts):
      x, chunk_stats = future.result()
      if n + 1 < len(starts):
        future = submit(load, n + 1)
      d, i, first_bad = step(best_d, best_i, *q, x, jnp.int32(start), num_items, *chunk_stats)
      if k:
        best_d, best_i = d, i
      del x, chunk_stats
      if pending is not None:
        check(pending)
      pending = (start, first_bad, None if k else d)
    check(pending)
  if k:
    return np.asarray(best_d), np.asarray(best_i).astype(np.int64)
  return None


def _done(fn, *args) -> concurrent.futures.Future:
  """``fn(*args)`` run now, as a finished future."""
  future = concurrent.futures.Future()
  future.set_result(fn(*args))
  return future
