"""Streaming MCNCC over a reference collection: probe preparation, chunks, devices, top-k.

The implementation behind :func:`fwjax.matching.mcncc`, ``topk`` and ``rank`` (documented
there): probes are validated, transformed and grouped by canvas once; references are read in
chunks (numpy, jax, memory map or .npy path), split over all local devices, scored by
:mod:`fwjax.matching.kernels`, and merged into a running top-k.
"""

import concurrent.futures
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from fwjax.distances import stream as _ranking
from fwjax.matching import kernels

ArrayLike = Any

_WORK_BYTES = 512 << 20  # per device: ~10 canvas-sized float32 arrays per reference in a chunk
_AXIS = 'items'


def transforms(flip: bool = False, rotations: Sequence[float] = ()) -> list[tuple[bool, float]]:
  """The (flip, angle in degrees) of each transform index, flip-major, identity first."""
  _check_rotations(rotations)
  return [(f, float(angle)) for f in ((False, True) if flip else (False,))
          for angle in (0.0, *rotations)]


def _check_rotations(rotations) -> None:
  angles = [float(a) for a in rotations]
  if any(not math.isfinite(a) or a == 0 for a in angles) or len(set(angles)) != len(angles):
    raise ValueError(f'rotations: expected distinct finite non-zero angles (0 is always '
                     f'included), got {list(rotations)}')


def pack_references(maps: Sequence[ArrayLike], path: str | os.PathLike | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Reference maps of different sizes as one (N, H, W, C) float32 array and their sizes.

  Each map goes to the top-left corner, zeros elsewhere (never read by the kernels).

  Args:
    maps: N arrays (H_i, W_i, C).
    path: write a .npy there and return it memory-mapped (for collections larger than memory).

  Returns:
    (array or read-only memmap (N, max H, max W, C), sizes (N, 2) int64).

  Raises:
    ValueError: no maps, or a map that is not (H, W, C) with the same C as the first.
  """
  if len(maps) == 0:
    raise ValueError('references: no maps given')
  shapes = []
  for i, m in enumerate(maps):
    shape = np.shape(m)
    if len(shape) != 3 or shape[2] != np.shape(maps[0])[2]:
      raise ValueError(f'reference {i}: expected (H, W, C) with C={np.shape(maps[0])[-1]}, '
                       f'got shape {shape}')
    shapes.append(shape)
  sizes = np.array([s[:2] for s in shapes], np.int64)
  shape = (len(maps), *(int(s) for s in sizes.max(axis=0)), int(shapes[0][2]))
  if path is None:
    out = np.zeros(shape, np.float32)
  else:
    out = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=shape)
  for i, m in enumerate(maps):
    out[i, :sizes[i, 0], :sizes[i, 1]] = np.asarray(m, np.float32)
  if path is not None:
    out.flush()
    del out
    out = np.load(path, mmap_mode='r')
  return out, sizes


class _Probes(NamedTuple):
  """Transformed, centred and normalised probes in canvas groups (kernels.plan)."""
  groups: list[kernels.ProbeGroup]
  unsort: np.ndarray  # (P * K,) position in the groups' concatenation of (probe, transform)
  num_probes: int
  num_transforms: int


def _as_maps(probes) -> list[np.ndarray]:
  if isinstance(probes, (np.ndarray, jax.Array)) and np.ndim(probes) == 4:
    return [np.asarray(p) for p in probes]
  if isinstance(probes, (np.ndarray, jax.Array)):
    raise ValueError(f'probes: expected (P, h, w, C) or a list of (h, w, C), got shape '
                     f'{np.shape(probes)}')
  return [np.asarray(p) for p in probes]


def _prepare_probes(probes, probe_masks, channels: int, margin: float, flip: bool, rotations,
                    ref_h: int, ref_w: int) -> _Probes:
  """Validated probes, transformed (flip-major), centred and grouped for the kernels."""
  maps = _as_maps(probes)
  if not maps:
    raise ValueError('probes: no probe given')
  if probe_masks is None:
    masks = [None] * len(maps)
  else:
    masks = (list(probe_masks) if not isinstance(probe_masks, (np.ndarray, jax.Array))
             else [np.asarray(m) for m in probe_masks])
    if len(masks) != len(maps):
      raise ValueError(f'probe_masks: {len(masks)} masks for {len(maps)} probes')
  chosen = transforms(flip, rotations)
  prepared = []
  for i, (p, m) in enumerate(zip(maps, masks)):
    if p.ndim != 3 or min(p.shape) == 0:
      raise ValueError(f'probe {i}: expected a non-empty (h, w, C) map, got shape {p.shape}')
    if p.shape[2] != channels:
      raise ValueError(f'probe {i} has {p.shape[2]} channels, the references {channels}')
    if not np.issubdtype(p.dtype, np.number) or not np.isfinite(p).all():
      raise ValueError(f'probe {i} has a NaN or Inf value (or is not numeric)')
    if m is None:
      m = np.ones(p.shape[:2], bool)
    m = np.asarray(m)
    if m.shape != p.shape[:2]:
      raise ValueError(f'probe {i}: mask of shape {m.shape} for a map of shape {p.shape[:2]}')
    m = m.astype(bool)
    if not m.any():
      raise ValueError(f'probe {i}: its mask has no true cell')
    for f, angle in chosen:
      pt, mt = kernels.transform_probe(p, m, f, angle)
      if not mt.any():
        raise ValueError(f'probe {i}: its mask has no true cell after rotating by {angle} deg')
      prepared.append((kernels.prepare_probe(pt, mt), mt))
  groups = kernels.plan(prepared, margin, ref_h, ref_w)
  unsort = np.argsort(np.concatenate([g.members for g in groups]))
  return _Probes(groups, unsort, len(maps), len(chosen))


class _References(NamedTuple):
  source: _ranking.ItemSource  # (N, H*W*C) rows
  sizes: np.ndarray  # (N, 2) int32
  shape: tuple[int, int, int]  # stored (H, W, C)


def _references(references, reference_sizes) -> _References:
  if isinstance(references, (list, tuple)):
    if reference_sizes is not None:
      raise ValueError('reference_sizes: only for a padded (N, H, W, C) array; a list of maps '
                       'carries its sizes')
    references, reference_sizes = pack_references(references)
  if isinstance(references, (str, os.PathLike)):
    try:
      references = np.load(references, mmap_mode='r')
    except (OSError, ValueError) as e:
      raise ValueError(f'references: cannot memory-map {os.fspath(references)!r} as a .npy '
                       f'file: {e}') from e
  if not isinstance(references, (np.ndarray, jax.Array)):
    references = np.asarray(references)
  if references.ndim != 4 or min(references.shape) == 0:
    raise ValueError(f'references: expected a non-empty (N, H, W, C) array or a list of '
                     f'(H, W, C) maps, got shape {tuple(references.shape)}')
  num, height, width, channels = references.shape
  if reference_sizes is None:
    sizes = np.tile(np.array([[height, width]], np.int32), (num, 1))
  else:
    sizes = np.asarray(reference_sizes)
    if sizes.shape != (num, 2) or not np.issubdtype(sizes.dtype, np.integer):
      raise ValueError(f'reference_sizes: expected ({num}, 2) integers, got {sizes.dtype} '
                       f'{sizes.shape}')
    bad = np.flatnonzero((sizes < 1).any(axis=1) | (sizes[:, 0] > height)
                         | (sizes[:, 1] > width))
    if bad.size:
      raise ValueError(f'reference {bad[0]}: size {tuple(sizes[bad[0]])} is empty or larger '
                       f'than the stored {(height, width)}')
    sizes = sizes.astype(np.int32)
  rows = references.reshape(num, height * width * channels)  # a view, memory maps included
  return _References(_ranking.ItemSource(rows, name='references'), sizes,
                     (height, width, channels))


def _merge(best, new, k: int):
  """(score, index, y, x, transform) running best ``k`` by score descending, then index."""
  keyed = [jnp.concatenate([b, n], axis=1) for b, n in zip(best, new)]
  neg, *rest = lax.sort((-keyed[0], *keyed[1:]), dimension=1, num_keys=2)
  return (-neg[:, :k], *(v[:, :k] for v in rest))


GROUP_FIELDS = ('a', 'masks', 'counts', 'geometry', 'new_mask')


@functools.lru_cache(maxsize=32)
def _step(the_mesh: Mesh, shape: tuple[int, int, int], canvases: tuple[tuple[int, int], ...],
          num_probes: int, num_transforms: int, k: int):
  """Jitted per-chunk step: sharded pair scores, the best transform, a running top-k."""
  height, width, channels = shape
  fields = len(GROUP_FIELDS)

  def per_shard(refs, sizes, unsort, first_index, num_items, *groups):
    refs = refs.reshape(refs.shape[0], height, width, channels)
    parts = [kernels.chunk_scores(refs, sizes, *groups[g * fields:(g + 1) * fields],
                                  canvas=canvas) for g, canvas in enumerate(canvases)]
    best, y, x = (jnp.concatenate([part[i] for part in parts])[unsort].reshape(
        num_probes, num_transforms, -1) for i in range(3))
    bad = parts[0][3]
    transform = jnp.argmax(best, axis=1).astype(jnp.int32)  # the first of equal maxima
    score, y, x = (jnp.take_along_axis(v, transform[:, None], axis=1)[:, 0] for v in (best, y, x))
    index = (first_index + lax.axis_index(_AXIS) * refs.shape[0]
             + jnp.arange(refs.shape[0], dtype=jnp.int32))
    valid = index < num_items
    score = jnp.where(valid[None], score, -jnp.inf)
    index = jnp.broadcast_to(jnp.where(valid, index, kernels.NO_INDEX), score.shape)
    first_bad = jnp.min(jnp.where(bad & valid, index[0], kernels.NO_INDEX))[None]
    found = (score, index, y, x, transform)
    if k:
      found = _merge(tuple(v[:, :0] for v in found), found, min(k, refs.shape[0]))
    return *found, first_bad

  replicated, by_item = P(), P(_AXIS)
  sharded = jax.shard_map(
      per_shard, mesh=the_mesh,
      in_specs=(P(_AXIS, None), P(_AXIS, None)) + (replicated,) * (3 + fields * len(canvases)),
      out_specs=(P(None, _AXIS),) * 5 + (by_item,))

  def step(best, refs, sizes, *rest):
    *found, first_bad = sharded(refs, sizes, *rest)
    if k:
      found = _merge(best, tuple(found), k)
    return tuple(found), first_bad

  return jax.jit(step)


def _chunk_rows(chunk_size: int | None, shape, canvases, num_devices: int, num: int) -> int:
  if chunk_size is None:
    per_ref = 10 * 4 * shape[2] * max(a * b for a, b in canvases)
    chunk_size = max(1, _WORK_BYTES // per_ref) * num_devices
  if chunk_size < 1:
    raise ValueError(f'chunk_size: must be positive, got {chunk_size}')
  chunk_size = min(chunk_size, -(-num // num_devices) * num_devices)
  return -(-chunk_size // num_devices) * num_devices


def _run(probes, references, *, probe_masks, reference_sizes, margin, flip, rotations, k,
         chunk_size):
  """Streams the references; returns the top-k (k > 0) or every pair (k = 0) on the host."""
  if not (math.isfinite(margin) and margin >= 0):
    raise ValueError(f'margin: expected a finite number >= 0, got {margin}')
  refs = _references(references, reference_sizes)
  num = refs.source.num
  if k and not 1 <= k <= num:
    raise ValueError(f'k: must be in [1, N={num}], got {k}; use rank() for a full order')
  prepared = _prepare_probes(probes, probe_masks, refs.shape[2], margin, flip, rotations,
                             int(refs.sizes[:, 0].max()), int(refs.sizes[:, 1].max()))
  canvases = tuple(g.canvas for g in prepared.groups)
  the_mesh = _ranking.mesh()
  num_devices = the_mesh.devices.size
  rows = _chunk_rows(chunk_size, refs.shape, canvases, num_devices, num)
  step = _step(the_mesh, refs.shape, canvases, prepared.num_probes, prepared.num_transforms, k)
  replicated = NamedSharding(the_mesh, P())
  by_item = NamedSharding(the_mesh, P(_AXIS, None))
  constants = [jax.device_put(prepared.unsort.astype(np.int32), replicated)]
  groups = [jax.device_put(getattr(g, name), replicated) for g in prepared.groups
            for name in GROUP_FIELDS]
  num_probes = prepared.num_probes
  best = (jnp.full((num_probes, k), -jnp.inf, jnp.float32),
          jnp.full((num_probes, k), kernels.NO_INDEX, jnp.int32),
          *(jnp.zeros((num_probes, k), jnp.int32) for _ in range(3)))
  best = jax.device_put(best, replicated)
  starts = list(range(0, num, rows))
  sizes = np.zeros((len(starts) * rows, 2), np.int32)  # padding rows: size (0, 0)
  sizes[:num] = refs.sizes
  full = None if k else [np.empty((num_probes, num), dt) for dt in (np.float32, *[np.int32] * 3)]
  buffers = [None] * 3

  def load(n):
    start = starts[n]
    stop = min(start + rows, num)
    if buffers[n % 3] is None and not isinstance(refs.source.items, jax.Array):
      buffers[n % 3] = _ranking.aligned_empty((rows, refs.source.dim))
    x = refs.source.read(start, stop, rows, out=buffers[n % 3])
    return (jax.device_put(x, by_item),
            jax.device_put(sizes[start:start + rows], by_item))

  def check(pending):
    start, first_bad, result = pending
    bad = int(np.asarray(first_bad).min())
    if bad != kernels.NO_INDEX:
      raise ValueError(f'reference {bad} has a NaN or Inf value within its size (or values '
                       'so large that their squares overflow float32)')
    if result is not None:
      count = min(rows, num - start)
      for out, part in zip(full, (result[0], *result[2:])):
        out[:, start:start + count] = np.asarray(part)[:, :count]

  # One worker reads chunk n+1 (a copy, a file read) while the devices compute chunk n; chunk
  # n-2's buffer is free by then, as the host has waited for chunk n-1's check below.
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    future = pool.submit(load, 0)
    pending = None
    for n, start in enumerate(starts):
      x, chunk_sizes = future.result()
      if n + 1 < len(starts):
        future = pool.submit(load, n + 1)
      result, first_bad = step(best, x, chunk_sizes, *constants, jnp.int32(start),
                               jnp.int32(num), *groups)
      if k:
        best = result
      del x, chunk_sizes
      if pending is not None:
        check(pending)
      pending = (start, first_bad, None if k else result)
    check(pending)
  score, index, y, x, transform = [np.asarray(b) for b in best] if k else [full[0], None,
                                                                           *full[1:]]
  return (score, None if index is None else index.astype(np.int64),
          np.stack([y, x], axis=-1).astype(np.int64), transform.astype(np.int64))


def _reorder(result):
  score, index, offset, transform = result
  return score, offset, transform, index


