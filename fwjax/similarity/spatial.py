"""Spatial matching for the similarity job: feature maps of every image, ranked by MCNCC.

Global pooling throws away where a pattern sits on the sole; a crime-scene mark is a partial,
shifted piece of a print. ``--matcher=mcncc`` keeps each image's feature *map* at ``--stage``
and ranks references by multi-channel normalised cross-correlation over offsets
(:mod:`fwjax.matching`, Kong et al. 2019).

Maps keep each image's own shape: an image is scaled by ``--match_scale`` (both sides, so its
aspect and, for FID-300, its 20 px/cm scale are kept), padded with its background level up to
a multiple of 32 pixels so that images of similar size share one compiled network, and its map
is cropped back to the cells that cover the image. Maps are float32 in memory (about 0.6 MB
per FID-300 reference at scale 0.25 and ``block3``); they are not cached between runs.

A cheap first stage is optional (``--shortlist=K``): the references are first ranked by the
cosine distance of the maps' global averages (the pooled features of the same network), and
only the top K of each probe are re-ranked by MCNCC; the rest keep their global order after
them.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fwjax import distances
from fwjax import matching
from fwjax import progress as progress_lib
from fwjax import resample
from fwjax.data import images as images_lib
from fwjax.models import bodies, feature_model

_MULTIPLE = 32  # every body's total stride divides it, so a map covers its padded input exactly


@dataclasses.dataclass
class MapSet:
  """Feature maps of a list of images, with what was left out.

  Attributes:
    maps: one (h, w, C) float32 map per readable image, in input order.
    paths: the images that were read.
    skipped: (path, reason) for every image that could not be read.
    seconds: wall time of decoding and computing.
  """
  maps: list[np.ndarray]
  paths: list[pathlib.Path]
  skipped: list[tuple[pathlib.Path, str]]
  seconds: float

  def pooled(self) -> np.ndarray:
    """(N, C) global averages of the maps: the pooled features of the same network."""
    return np.stack([m.mean(axis=(0, 1)) for m in self.maps]).astype(np.float32)


def _scaled(image: np.ndarray, scale: float, composition: str) -> np.ndarray:
  height = max(1, round(image.shape[0] * scale))
  width = max(1, round(image.shape[1] * scale))
  return resample.compose_image(image, composition, height, width, 'squish')


def _padded(image: np.ndarray, minimum: int) -> tuple[np.ndarray, tuple[int, int]]:
  """``image`` (h, w, 3) padded bottom-right to a multiple of 32 (and at least ``minimum``)."""
  h, w = image.shape[:2]
  height = max(minimum, -(-h // _MULTIPLE) * _MULTIPLE)
  width = max(minimum, -(-w // _MULTIPLE) * _MULTIPLE)
  out = np.empty((height, width, 3), np.uint8)
  for c in range(3):
    out[..., c] = resample.background_level(image[..., c])
  out[:h, :w] = image
  return out, (h, w)


def extract_maps(model: feature_model.FeatureModel, paths: Sequence[pathlib.Path], *,
                 stage: str, scale: float, composition: str = 'B-B-B', colour: str = 'rgb',
                 batch_size: int = 8, progress: bool = True,
                 max_pixels: int = images_lib.MAX_PIXELS) -> MapSet:
  """Feature maps of ``paths`` at ``stage``, each image scaled by ``scale`` with its aspect.

  Args:
    model: from :func:`fwjax.models.feature_model.build_model`.
    paths: image files.
    stage: a spatial stage of the model's body (e.g. ``'block3'`` for VGG16).
    scale: image scale before the network (0.5 halves both sides).
    composition: channel composition of greyscale images (colour keeps its channels).
    colour: ``'rgb'`` or ``'luma'`` (:func:`fwjax.data.images.load_image`).
    batch_size: images per network call (images are grouped by padded size).
    progress: show progress on stderr.
    max_pixels: refuse images with more pixels (``--max_pixels``; a decompression-bomb guard).

  Returns:
    A :class:`MapSet`; unreadable images are in ``skipped`` with the reason.

  Raises:
    FeatureError: an unknown stage, a pooled stage, or a scale that is not positive.
  """
  feature_model.check_stage(stage, model.arch)
  if stage == 'features':
    raise feature_model.FeatureError("--stage=features is pooled; MCNCC needs a spatial stage "
                                     f'of {model.arch}: one of {", ".join(model.stages[:-1])}')
  if not scale > 0:
    raise feature_model.FeatureError(f'--match_scale must be > 0, got {scale}')
  start = time.perf_counter()
  minimum = bodies.MIN_SIZE[model.arch]
  inputs, skipped = {}, []
  for i, path in enumerate(paths):
    try:
      image = images_lib.load_image(path, colour=colour, max_pixels=max_pixels)
    except (images_lib.BadImageError, OSError) as error:
      skipped.append((pathlib.Path(path), str(error) or type(error).__name__))
      continue
    padded, size = _padded(_scaled(image, scale, composition), minimum)
    inputs.setdefault(padded.shape, []).append((i, padded, size))

  @jax.jit
  def forward(images: jax.Array) -> jax.Array:
    _, feats = model.module.apply(model.variables, model.preprocess(images), train=False)
    return feats[stage].astype(jnp.float32)

  maps: dict[int, np.ndarray] = {}
  bar = progress_lib.Progress(len(paths) - len(skipped), f'feature maps ({stage})',
                              enabled=progress)
  for shape, group in inputs.items():
    for b in range(0, len(group), batch_size):
      batch = group[b:b + batch_size]
      stack = np.stack([x for _, x, _ in batch])
      if len(batch) < batch_size:  # one compiled shape per size group
        stack = np.concatenate([stack, np.repeat(stack[-1:], batch_size - len(batch), 0)])
      out = np.asarray(forward(stack))
      stride = shape[0] // out.shape[1]
      for (i, _, (h, w)), fmap in zip(batch, out):
        maps[i] = np.ascontiguousarray(fmap[:math.ceil(h / stride), :math.ceil(w / stride)])
      bar.update(len(batch))
  bar.close()
  order = sorted(maps)
  return MapSet([maps[i] for i in order], [pathlib.Path(paths[i]) for i in order], skipped,
                time.perf_counter() - start)


def rank(query_maps: Sequence[Sequence[np.ndarray]], references: MapSet, *, margin: float,
         flip: bool, rotations: Sequence[float], fusion: str = 'sum', shortlist: int = 0,
         pooled_queries: np.ndarray | None = None, progress: bool = True
         ) -> tuple[np.ndarray, np.ndarray]:
  """Every reference ranked for each query by MCNCC (fused over a query's R probes).

  Args:
    query_maps: per query, the maps of its R probe images.
    references: the collection's maps.
    margin, flip, rotations: as :func:`fwjax.matching.mcncc`.
    fusion: ``'sum'`` (the sum of the R scores, the thesis's fusion of distances) or ``'min'``
      (the best of the R scores, as the smallest of R distances).
    shortlist: 0 scores every pair; K > 0 re-ranks only each query's top K by the cosine
      distance of pooled maps (``pooled_queries``, (Q, C) means of the query's probe maps).
    pooled_queries: required with ``shortlist``.
    progress: show the queries matched so far on stderr.

  Returns:
    ``(dist, order)``, each (Q, N): ``dist = 1 - score`` (with R > 1, ``R - sum`` or
    ``1 - max``), ascending like every distance of the job; shortlisted-out references follow in
    their global order with distance ``inf``.

  Raises:
    ValueError: an unknown fusion, or a shortlist without pooled queries.
  """
  if fusion not in ('sum', 'min'):
    raise ValueError(f"--fusion={fusion!r} with --matcher=mcncc: use 'sum' or 'min' "
                     "('mean_feature' averages vectors, and maps of marks do not align)")
  num_items = len(references.maps)
  packed, sizes = matching.pack_references(references.maps)
  dist = np.full((len(query_maps), num_items), np.inf, np.float32)
  order = np.empty((len(query_maps), num_items), np.int64)
  candidates = None
  if shortlist:
    if pooled_queries is None:
      raise ValueError('a shortlist needs the pooled query features')
    _, candidates = distances.rank(pooled_queries, distances.Collection(references.pooled()),
                                   metric='cosine')
    candidates = np.asarray(candidates)
  bar = progress_lib.Progress(len(query_maps), 'MCNCC matching', unit='queries',
                              enabled=progress)
  for q, probes in enumerate(query_maps):
    columns = np.arange(num_items) if candidates is None else np.sort(candidates[q, :shortlist])
    scores = matching.mcncc(list(probes), packed[columns], reference_sizes=sizes[columns],
                            margin=margin, flip=flip, rotations=tuple(rotations)).scores
    fused = scores.sum(axis=0) if fusion == 'sum' else scores.max(axis=0)
    best = len(probes) if fusion == 'sum' else 1.0
    # Highest score first, ties by lower index (a stable sort of the negated scores).
    ranked = columns[np.argsort(-fused, kind='stable')]
    dist[q, columns] = best - fused
    if candidates is None:
      order[q] = ranked
    else:
      rest = candidates[q, shortlist:]
      order[q] = np.concatenate([ranked, rest])
    bar.update()
  bar.close()
  return np.take_along_axis(dist, order, axis=1), order
