"""The pre-resized cache: every original decoded and resized once per interpolation.

Decoding a 100-megapixel scan takes longer than a training step, so training never reads the
originals: :func:`build_cache` resizes each image once per method (nearest, bilinear, Hamming)
to the network size and stores uint8 planes as memory-mapped ``.npy`` files. Any of the paper's
nine channel compositions is then a stack of three cached planes (:meth:`ResizedCache.images`),
so all nine cost one pass over the originals.

The resizing calls Pillow itself (:func:`fwjax.resample.resize_pillow`), not the numpy reference
:func:`fwjax.resample.resize`: the two give the same bits (tests/test_resample.py checks it) and
Pillow is faster on the host, which leaves decoding as most of a build's time
(kernels/bench_cache.py measures both).

Layout of ``cache_dir``::

    CURRENT                  name of the complete version (written last, atomically)
    v-<digest>/meta.json     size, policy, methods, paths, file fingerprints, array sizes
    v-<digest>/labels.npy    (N, 17) uint8
    v-<digest>/<method>.npy  (N, H, W) uint8 per method

Rebuilding is incremental: an image whose path, size and modification time are unchanged is
copied from the previous version, only new or changed ones are decoded. A build writes a new
version folder and switches ``CURRENT`` only when it is complete, so an interrupted build leaves
the previous cache intact. :meth:`ResizedCache.open` checks every array's size against the
metadata and says to rebuild if they disagree.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
from absl import logging

from fwjax import descriptors, resample
from fwjax import progress as progress_lib
from fwjax.data import images as images_lib


class CacheError(RuntimeError):
  """A cache folder that is missing, incomplete or inconsistent."""


def _fingerprint(path: pathlib.Path) -> list:
  stat = path.stat()
  return [str(path), stat.st_size, stat.st_mtime_ns]


def _resize_one(path: str, height: int, width: int, policy: str, methods: tuple[str, ...],
                max_pixels: int) -> dict[str, np.ndarray]:
  image = images_lib.load_greyscale(path, max_pixels=max_pixels)
  top, left, inner_h, inner_w = resample.fit_size(*image.shape, height, width, policy)
  fill = resample.background_level(image) if policy == 'pad' else 0
  planes = {}
  for method in methods:
    plane = np.full((height, width), fill, np.uint8)
    plane[top:top + inner_h, left:left + inner_w] = resample.resize_pillow(image, inner_h, inner_w,
                                                                           method)
    planes[method] = plane
  return planes


class ResizedCache:
  """A complete cache version, opened read-only (memory-mapped)."""

  def __init__(self, directory: pathlib.Path, meta: dict):
    self.directory, self.meta = directory, meta
    self.height, self.width = meta['height'], meta['width']
    self.methods = tuple(meta['methods'])
    self.paths = [pathlib.Path(p) for p in meta['paths']]
    self.labels = np.load(directory / 'labels.npy', mmap_mode='r')
    self._planes = {m: np.load(directory / f'{m}.npy', mmap_mode='r') for m in self.methods}

  @classmethod
  def open(cls, cache_dir: str | os.PathLike) -> ResizedCache:
    """Opens the current version of a cache folder, checking it is complete.

    Raises:
      CacheError: no complete version, or arrays whose size disagrees with the metadata.
    """
    cache_dir = pathlib.Path(cache_dir)
    pointer = cache_dir / 'CURRENT'
    if not pointer.is_file():
      raise CacheError(f'{cache_dir}: no complete cache here (no CURRENT file); build it with '
                       'fwjax.data.cache.build_cache')
    directory = cache_dir / pointer.read_text().strip()
    try:
      meta = json.loads((directory / 'meta.json').read_text())
    except (OSError, ValueError) as error:
      raise CacheError(f'{directory}: unreadable metadata ({error}); delete {cache_dir} and '
                       'rebuild') from None
    n, h, w = len(meta['paths']), meta['height'], meta['width']
    for method in meta['methods']:
      array = directory / f'{method}.npy'
      expected = meta['array_bytes'][method]
      if not array.is_file() or array.stat().st_size != expected:
        raise CacheError(f'{array}: expected {expected} bytes for {n} images of {h}x{w}; the '
                         f'cache is damaged: delete {cache_dir} and rebuild')
    return cls(directory, meta)

  def __len__(self) -> int:
    return len(self.paths)

  def planes(self, method: str) -> np.ndarray:
    """(N, H, W) uint8 memory-mapped planes of one interpolation method."""
    if method not in self._planes:
      raise KeyError(f'method {method!r} is not in this cache (it has {self.methods})')
    return self._planes[method]

  def images(self, composition: str, indices: Sequence[int] | np.ndarray | None = None
             ) -> np.ndarray:
    """(n, H, W, 3) uint8: the composition's planes stacked as R, G, B for the given rows."""
    methods = resample.composition_methods(composition)
    index = np.arange(len(self)) if indices is None else np.asarray(indices)
    return np.stack([self.planes(m)[index] for m in methods], axis=-1)


def build_cache(examples: Sequence, cache_dir: str | os.PathLike, height: int, width: int, *,
                methods: Sequence[str] = resample.METHODS, policy: str = 'squish',
                workers: int | None = None, max_pixels: int = images_lib.MAX_PIXELS
                ) -> ResizedCache:
  """Builds (or brings up to date) the cache of ``examples`` at ``height`` x ``width``.

  Args:
    examples: objects with ``.path`` and ``.labels`` (NFRC codes), e.g.
      :class:`fwjax.data.manifest.Example`; the cache keeps their order.
    cache_dir: folder of the cache (one per size and policy).
    height: network input height.
    width: network input width.
    methods: interpolation methods to cache.
    policy: ``'squish'`` or ``'pad'`` (:func:`fwjax.resample.fit_size`).
    workers: decoding threads (default: the CPU count, at most 8).
    max_pixels: decompression-bomb guard for the decoder.

  Returns:
    The opened cache.

  Raises:
    fwjax.data.images.BadImageError: an image cannot be decoded (validate with
      :func:`fwjax.data.manifest.read_manifest` first, which can skip and report such rows).
  """
  for method in methods:
    if method not in resample.METHODS:
      raise ValueError(f'unknown method {method!r}; expected some of {resample.METHODS}')
  resample.fit_size(1, 1, height, width, policy)  # validates size and policy
  cache_dir = pathlib.Path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  paths = [pathlib.Path(e.path) for e in examples]
  fingerprints = [_fingerprint(p) for p in paths]
  labels = descriptors.encode_many([e.labels for e in examples])
  config = {'height': height, 'width': width, 'policy': policy, 'methods': list(methods)}
  digest = hashlib.sha256(json.dumps([config, fingerprints, labels.tolist()]).encode()).hexdigest()
  name = f'v-{digest[:16]}'
  try:
    current = ResizedCache.open(cache_dir)
  except CacheError:
    current = None
  if current is not None and current.directory.name == name:
    return current

  reusable = {}
  if current is not None and {k: current.meta[k] for k in config} == config:
    reusable = {tuple(f): i for i, f in enumerate(current.meta['fingerprints'])}
  build = cache_dir / f'{name}.partial-{os.getpid()}'
  shutil.rmtree(build, ignore_errors=True)
  build.mkdir()
  arrays = {m: np.lib.format.open_memmap(build / f'{m}.npy', mode='w+', dtype=np.uint8,
                                         shape=(len(paths), height, width)) for m in methods}
  todo = []
  for row, fingerprint in enumerate(fingerprints):
    old = reusable.get(tuple(fingerprint))
    if old is None:
      todo.append(row)
    else:
      for m in methods:
        arrays[m][row] = current.planes(m)[old]
  logging.info('cache %s: %d images, %d reused, %d to resize to %dx%d (%s)', cache_dir,
               len(paths), len(paths) - len(todo), len(todo), height, width, policy)
  if todo:
    progress = progress_lib.Progress(len(todo), f'resizing into {cache_dir.name}')
    workers = workers or min(os.cpu_count() or 1, 8)
    args = (height, width, policy, tuple(methods), max_pixels)
    if workers == 1 or len(todo) < 32:
      results = (_resize_one(str(paths[r]), *args) for r in todo)
      for row, planes in zip(todo, results):
        for m in methods:
          arrays[m][row] = planes[m]
        progress.update()
    else:
      # Threads, not processes: Pillow's decoders and resampler release the GIL, and
      # forking a process whose JAX runtime has started threads can deadlock.
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_resize_one, str(paths[r]), *args): r for r in todo}
        for future in concurrent.futures.as_completed(futures):
          row = futures[future]
          planes = future.result()
          for m in methods:
            arrays[m][row] = planes[m]
          progress.update()
    progress.close()
  for array in arrays.values():
    array.flush()
  del arrays
  np.save(build / 'labels.npy', labels)
  meta = dict(config, paths=[str(p) for p in paths], fingerprints=fingerprints,
              array_bytes={m: (build / f'{m}.npy').stat().st_size for m in methods})
  (build / 'meta.json').write_text(json.dumps(meta))
  final = cache_dir / name
  shutil.rmtree(final, ignore_errors=True)
  os.replace(build, final)
  tmp_pointer = cache_dir / f'CURRENT.tmp-{os.getpid()}'
  tmp_pointer.write_text(name)
  os.replace(tmp_pointer, cache_dir / 'CURRENT')  # the commit point
  if current is not None and current.directory != final:
    shutil.rmtree(current.directory, ignore_errors=True)
  return ResizedCache.open(cache_dir)
