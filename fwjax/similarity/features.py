"""Batched CNN feature extraction for similarity ranking, cached on disk by image content.

A seized collection is ranked many times (new references, other metrics), and it changes little
between runs. Features are therefore cached per *configuration* (model identity, stage, resolution,
channel composition, resize policy) and, inside it, per *image content* (sha256 of the file's
bytes): a re-run extracts only the images that are new or changed, renamed files are free, and a
file replaced under the same name is re-extracted.

The cache itself (an append-only matrix plus a content-hash index per configuration) is in
``fwjax.similarity.feature_cache``.

Example::

  model = build_model('resnet50.pth')
  result = extract_features(model, paths, stage='features', height=352, width=144,
                            cache_dir='~/.cache/fwjax/features', out_path='features.npy')
  result.features  # (N, 2048) float32, rows in the order of result.paths
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fwjax import progress as progress_lib
from fwjax import resample
from fwjax.data import images as images_lib
from fwjax import runs
from fwjax.models import bodies, feature_model
from fwjax.models.feature_model import FeatureError, FeatureModel  # noqa: F401 (re-exported)
from fwjax.similarity import feature_cache

# Bumped when extraction or the cache's format changes: old caches are then ignored. 2: the index
# holds a checksum per row; 3: any body with its own preprocessing, colour images as RGB.
_CACHE_VERSION = 3


class Extractor:
  """A compiled, device-sharded feature function for one (model, stage, batch shape).

  The batch is split over every local device on its leading axis; the variables are replicated.
  ``batch_size`` is rounded up to a multiple of the device count, and a short last batch is
  padded with zeros (and the padding sliced off), so one compiled program serves every batch.
  """

  def __init__(self, model: FeatureModel, stage: str, height: int, width: int, batch_size: int):
    low = bodies.MIN_SIZE[model.arch]
    if height < low or width < low:
      raise FeatureError(f'resolution {height}x{width} is too small for {model.arch} (min '
                         f'{low}x{low})')
    devices = jax.local_devices()
    self.batch_size = -(-max(batch_size, 1) // len(devices)) * len(devices)
    self.shape = (self.batch_size, height, width, 3)
    mesh = Mesh(np.array(devices), ('data',))
    self._data = NamedSharding(mesh, PartitionSpec('data'))
    replicated = NamedSharding(mesh, PartitionSpec())
    self._variables = jax.device_put(model.variables, replicated)
    fn = jax.jit(feature_model.make_extract_fn(model, stage), in_shardings=(replicated, self._data),
                 out_shardings=self._data)
    # Compiled ahead of time so that model build (weights + compile) is timed apart from
    # extraction, as the thesis reports them.
    self._compiled = fn.lower(self._variables,
                              jax.ShapeDtypeStruct(self.shape, jnp.uint8)).compile()
    self.dim = int(self._compiled.out_info.shape[1])

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Features of ``images`` (n <= batch_size, H, W, 3) uint8 -> (n, D) float32 numpy."""
    n = len(images)
    if n < self.batch_size:
      pad = np.zeros((self.batch_size - n,) + self.shape[1:], np.uint8)
      images = np.concatenate([images, pad])
    out = self._compiled(self._variables, jax.device_put(images, self._data))
    return np.asarray(out)[:n]


_EXTRACTORS: dict[tuple[Any, ...], Extractor] = {}


def cached_extractor(model: FeatureModel, stage: str, height: int, width: int,
                     batch_size: int) -> Extractor:
  """An ``Extractor``, reused within this process for the same weights, stage and shape.

  Ranking runs repeated in one process (a notebook, a grid, the tests) then compile the network
  once. The key is the model's identity (a hash of its weights file, or its random seed and
  width), so another model with the same identity has the same variables.
  """
  key = (model.identity, stage, height, width, batch_size,
         tuple(d.id for d in jax.local_devices()))
  if key not in _EXTRACTORS:
    _EXTRACTORS[key] = Extractor(model, stage, height, width, batch_size)
  return _EXTRACTORS[key]


def clear_extractors() -> None:
  """Forgets the extractors :func:`cached_extractor` kept: the next run compiles its own.

  Repeated timings (``fwjax.similarity.compare``) call this so that each repeat's model build
  includes compilation, as a fresh process's would.
  """
  _EXTRACTORS.clear()


@dataclasses.dataclass
class FeatureSet:
  """Features of a collection, with what was left out.

  Attributes:
    features: (N, D) float32, an array or a memory-mapped .npy, row i for ``paths[i]``.
    paths: the images that were read, in input order.
    skipped: (path, reason) for every image that could not be read; never silently dropped.
    num_extracted: images computed in this call (the rest came from the cache).
    extract_seconds: wall time spent decoding and computing those images.
    repaired: images whose cached row was damaged (failed its checksum, or lay past the end of
      a truncated file) and was extracted again; also counted in ``num_extracted``.
  """
  features: np.ndarray
  paths: list[pathlib.Path]
  skipped: list[tuple[pathlib.Path, str]]
  num_extracted: int
  extract_seconds: float
  repaired: int = 0


def _load(path: pathlib.Path, composition: str, height: int, width: int, policy: str,
          colour: str = 'rgb', max_pixels: int = images_lib.MAX_PIXELS
          ) -> tuple[np.ndarray | None, str]:
  try:
    image = images_lib.load_image(path, colour=colour, max_pixels=max_pixels)
  except (images_lib.BadImageError, OSError) as error:
    return None, str(error) or type(error).__name__
  return resample.compose_image(image, composition, height, width, policy=policy), ''


def _batches(items: Sequence[tuple[str, pathlib.Path]], batch_size: int, load: Callable[..., Any],
             workers: int) -> Iterator[list[tuple[str, pathlib.Path, np.ndarray | None, str]]]:
  """Decodes batches on a thread pool, one batch ahead of the device."""
  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    def submit(start: int) -> list[Any]:
      return [pool.submit(load, path) for _, path in items[start:start + batch_size]]
    pending = submit(0)
    for start in range(0, len(items), batch_size):
      current = pending
      pending = submit(start + batch_size)
      yield [(d, p, *f.result()) for (d, p), f in zip(items[start:start + batch_size], current)]


def extract_features(
    model: FeatureModel,
    paths: Sequence[str | os.PathLike[str]],
    *,
    stage: str = 'features',
    height: int = 224,
    width: int = 224,
    composition: str = 'B-B-B',
    policy: str = 'pad',
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    extractor: Extractor | None = None,
    workers: int | None = None,
    progress: bool = True,
    colour: str = 'rgb',
    max_pixels: int = images_lib.MAX_PIXELS,
) -> FeatureSet:
  """Extracts (or reuses from the cache) the features of every readable image in ``paths``.

  Args:
    model: from ``build_model``.
    paths: image files; duplicates (same bytes) are computed once.
    stage: one of ``STAGES``.
    height: network input height.
    width: network input width.
    composition: channel composition of the greyscale image (``fwjax.resample.COMPOSITIONS``).
    policy: ``'pad'`` keeps each image's aspect ratio (padding to height x width) and
      ``'squish'`` stretches it; see ``fwjax.resample.compose``.
    batch_size: images per step over all devices (rounded up to a multiple of the device count).
    cache_dir: root of the feature cache; None keeps the cache in a temporary folder for this
      call only.
    out_path: where to write the (N, D) features as a memory-mapped ``.npy`` (streamed, for
      collections larger than memory); None returns them in memory.
    extractor: a compiled ``Extractor`` for this model/stage/shape (to time compilation apart);
      built here when None.
    workers: decoding threads (default: CPU count, at most 8).
    progress: show a progress bar on stderr.
    colour: ``'rgb'`` feeds colour photographs as RGB and replicates a greyscale image's
      composition to three channels; ``'luma'`` turns colour photographs into grey first
      (``fwjax.data.images.load_image``).
    max_pixels: refuse (skip, with the reason) images with more pixels than this.

  Returns:
    A ``FeatureSet``; unreadable images are in its ``skipped`` list with the reason. Cached rows
    that fail their checksum are extracted again (a warning names the cache file and rows).

  Raises:
    FeatureError: unknown stage, composition or policy.
  """
  feature_model.check_stage(stage, model.arch)
  if colour not in images_lib.COLOUR_MODES:
    raise FeatureError(f'unknown colour mode {colour!r}; valid: '
                       f'{", ".join(images_lib.COLOUR_MODES)}')
  if composition not in resample.COMPOSITIONS:
    raise FeatureError(f'unknown composition {composition!r}; valid: '
                       f'{", ".join(resample.COMPOSITIONS)}')
  if policy not in ('pad', 'squish'):
    raise FeatureError(f"unknown resize policy {policy!r}; valid: 'pad', 'squish'")
  if extractor is None:
    extractor = Extractor(model, stage, height, width, batch_size)
  elif extractor.shape[1:3] != (height, width):
    raise FeatureError(f'extractor compiled for {extractor.shape[1:3]}, asked for '
                       f'{(height, width)}')
  paths = [pathlib.Path(p) for p in paths]
  digests: list[str | None] = []
  skipped: dict[int, str] = {}
  for i, path in enumerate(paths):
    try:
      digests.append(runs.file_sha256(path))
    except OSError as error:
      digests.append(None)
      skipped[i] = f'cannot read file: {error.strerror or error}'
  config = dict(version=_CACHE_VERSION, model=model.identity, stage=stage, height=height,
                width=width, composition=composition, policy=policy, colour=colour)
  load = functools.partial(_load, composition=composition, height=height, width=width,
                           policy=policy, colour=colour, max_pixels=max_pixels)
  with tempfile.TemporaryDirectory(prefix='fwjax-features-') as scratch:
    cache = feature_cache.FeatureCache(cache_dir if cache_dir is not None else scratch, config,
                                       extractor.dim)
    todo: dict[str, pathlib.Path] = {}
    for digest, path in zip(digests, paths):
      if digest is not None and digest not in cache.rows:
        todo.setdefault(digest, path)
    failed, extract_seconds = _extract_missing(cache, extractor, list(todo.items()), load,
                                               workers, progress)
    num_extracted, repaired = len(todo) - len(failed), 0

    def gather() -> tuple[list[int], np.ndarray, list[int]]:
      for i, digest in enumerate(digests):
        if digest is not None and digest in failed:
          skipped[i] = failed[digest]
      keep = [i for i in range(len(paths)) if i not in skipped]
      return keep, *feature_cache.assemble(cache, [digests[i] for i in keep], out_path)

    keep, features, damaged = gather()
    if damaged:
      # Rows that fail their checksum or were cut off are extracted again from their images
      # (the cache gets new rows for them), then everything is gathered once more.
      redo = {digests[keep[j]]: paths[keep[j]] for j in damaged}
      cache.forget(list(redo))
      more_failed, seconds = _extract_missing(cache, extractor, list(redo.items()), load,
                                              workers, progress)
      failed.update(more_failed)
      extract_seconds += seconds
      repaired = len(redo) - len(more_failed)
      num_extracted += repaired
      keep, features, damaged = gather()
      if damaged:
        raise feature_cache.FeatureCacheError(
            f'{cache.data_path}: rows written again just now fail their checksum; the disk '
            'may be failing: move the cache elsewhere (--cache_dir)')
  return FeatureSet(features=features, paths=[paths[i] for i in keep],
                    skipped=[(paths[i], skipped[i]) for i in sorted(skipped)],
                    num_extracted=num_extracted, extract_seconds=extract_seconds,
                    repaired=repaired)


def _extract_missing(cache: feature_cache.FeatureCache, extractor: Extractor,
                     items: list[tuple[str, pathlib.Path]],
                     load: Callable[[pathlib.Path], tuple[np.ndarray | None, str]],
                     workers: int | None, progress: bool) -> tuple[dict[str, str], float]:
  """Computes and caches the features of ``items``; returns ({digest: reason}, seconds)."""
  failed: dict[str, str] = {}
  start = time.perf_counter()
  bar = progress_lib.Progress(len(items), 'extracting features', enabled=progress)
  workers = workers or min(os.cpu_count() or 1, 8)
  for batch in _batches(items, extractor.batch_size, load, workers):
    good = [(d, image) for d, _, image, _ in batch if image is not None]
    failed.update({d: reason for d, _, image, reason in batch if image is None})
    if good:
      cache.append([d for d, _ in good], extractor(np.stack([image for _, image in good])))
    bar.update(len(batch))
  bar.close()
  return failed, time.perf_counter() - start
