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
import hashlib
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fwjax.similarity import feature_cache
from fwjax import resample
from fwjax.data import images as images_lib
from fwjax.models import resnet

# 'features' is layer4 globally average-pooled (the input of the classifier); the earlier stages
# are average-pooled the same way, as de Bie (2020) compared them.
STAGES = ('features', 'layer1', 'layer2', 'layer3', 'layer4')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bumped when extraction changes in a way that changes the numbers: old caches are then ignored.
_CACHE_VERSION = 1


class FeatureError(ValueError):
  """A model, stage or setting that cannot be used for extraction (the message says why)."""


@dataclasses.dataclass(frozen=True)
class FeatureModel:
  """A ResNet-50 body with its variables and a stable name for the cache key.

  Attributes:
    module: the Flax ResNet-50 (``apply`` returns ``(logits, feats)``).
    variables: ``{'params': ..., 'batch_stats': ...}`` of the body.
    identity: what makes its features what they are: ``'sha256:<hash of the weights>'`` or
      ``'random-seed-<seed>'``, plus the width.
    width: the base width (64 for a standard ResNet-50; 8 in tests).
  """
  module: Any
  variables: Any
  identity: str
  width: int


def _weights_identity(path: pathlib.Path) -> str:
  if path.is_dir():  # an orbax checkpoint is a folder: hash every file in it, in a fixed order
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob('*') if p.is_file()):
      digest.update(str(file.relative_to(path)).encode())
      digest.update(feature_cache.file_sha256(file).encode())
    return 'sha256:' + digest.hexdigest()
  return 'sha256:' + feature_cache.file_sha256(path)


def _stem_width(params: Any) -> int:
  """The base width of a ResNet-50 parameter tree: the output channels of its 7x7 stem conv."""
  for leaf in jax.tree_util.tree_leaves(params):
    if getattr(leaf, 'ndim', 0) == 4 and tuple(leaf.shape[:3]) == (7, 7, 3):
      return int(leaf.shape[3])
  raise FeatureError('no 7x7x3 stem convolution found in the weights: not a ResNet-50 body')


def random_variables(module: Any, seed: int) -> dict[str, Any]:
  """torchvision's initialisation of a ResNet, drawn on the host with numpy.

  Convolutions get Kaiming-normal weights (fan-out, ReLU gain), BatchNorm scale 1 and shift 0
  with running mean 0 and variance 1, as ``torchvision.models.resnet50()`` initialises them. Flax's
  own ``init`` would compile one random-number program per parameter shape (seconds on a CPU);
  numpy draws the same kind of weights in milliseconds, deterministically from ``seed``.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, 32, 32, 3), jnp.float32), train=False))
  rng = np.random.default_rng(seed)

  def draw(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    name = getattr(path[-1], 'key', str(path[-1]))
    if name == 'kernel' and len(leaf.shape) == 4:
      kh, kw, _, out = leaf.shape
      return rng.normal(0.0, np.sqrt(2.0 / (kh * kw * out)), leaf.shape).astype(leaf.dtype)
    if name == 'kernel':  # a dense layer: torchvision's uniform(+-1/sqrt(fan_in))
      bound = 1.0 / np.sqrt(leaf.shape[0])
      return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)
    fill = 1.0 if name in ('scale', 'var') else 0.0
    return np.full(leaf.shape, fill, leaf.dtype)

  return dict(jax.tree_util.tree_map_with_path(draw, shapes))


def build_model(weights: str | os.PathLike[str] | None = None, *, width: int = 64,
                seed: int = 0) -> FeatureModel:
  """Builds the ResNet-50 body features are taken from.

  Args:
    weights: None for random initialisation (tests, or a baseline); a torchvision state dict
      (``.pth``/``.pt``/``.safetensors``, e.g. ImageNet weights); or a folder holding a fwjax
      checkpoint written by ``experiments.descriptor`` (its ``body`` sub-tree is used, i.e. the
      fine-tuned ResNet-50 without the preprocessing layer and head).
    width: base width for random initialisation (weights files carry their own width).
    seed: PRNG seed for random initialisation.

  Returns:
    The model with its variables and identity.

  Raises:
    FileNotFoundError: ``weights`` does not exist.
    FeatureError: the file holds no ResNet-50 body.
  """
  if weights is None:
    module = resnet.ResNet50(width=width, include_top=False)
    variables = random_variables(module, seed)
    return FeatureModel(module, variables, f'random-seed-{seed}-width-{width}', width)
  path = pathlib.Path(weights).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'weights not found: {path} (give a torchvision .pth/.safetensors '
                            'state dict, a fwjax checkpoint folder, or no weights for random init)')
  if path.is_dir():
    variables = _load_checkpoint_body(path)
  elif path.suffix in ('.pth', '.pt', '.safetensors'):
    from fwjax.models import pretrained  # pylint: disable=import-outside-toplevel
    variables = pretrained.load_torchvision(path, include_fc=False)
  else:
    raise FeatureError(f'{path}: unknown weights format {path.suffix!r}; expected .pth, .pt, '
                       '.safetensors or a fwjax checkpoint folder')
  variables = {k: v for k, v in dict(variables).items() if k in ('params', 'batch_stats')}
  width = _stem_width(variables['params'])
  module = resnet.ResNet50(width=width, include_top=False)
  return FeatureModel(module, variables, f'{_weights_identity(path)}-width-{width}', width)


def _load_checkpoint_body(path: pathlib.Path) -> dict[str, Any]:
  """The ResNet-50 body of a fwjax checkpoint folder (``fwjax.models.checkpoint``).

  A DescriptorClassifier's variables hold the body under ``'body'`` (next to ``'preprocess'``
  and ``'head'``); a bare ``ResNet50`` checkpoint (e.g. converted torchvision weights) is used
  as it is. A training state that nests the variables one level down is searched once.
  """
  from fwjax.models import checkpoint  # pylint: disable=import-outside-toplevel
  variables = checkpoint.load_variables(path)
  if 'params' not in variables:
    nested = [v for v in variables.values() if isinstance(v, dict) and 'params' in v]
    if len(nested) != 1:
      raise FeatureError(f'{path}: no model variables in the checkpoint (top-level keys: '
                         f'{sorted(variables)}); expected {{"params", "batch_stats"}}')
    variables = nested[0]
  params, stats = variables['params'], variables.get('batch_stats', {})
  if 'body' in params:
    return {'params': params['body'], 'batch_stats': stats.get('body', {})}
  if 'conv1' in params and 'layer4' in params:
    return {'params': params, 'batch_stats': stats}
  raise FeatureError(f'{path}: checkpoint params have neither a "body" sub-tree nor a ResNet-50 '
                     f'(keys: {sorted(params)}); expected a fwjax descriptor-model checkpoint')


def check_stage(stage: str) -> None:
  """Raises FeatureError naming the valid stages when ``stage`` is not one of them."""
  if stage not in STAGES:
    raise FeatureError(f'unknown feature stage {stage!r}; valid stages: {", ".join(STAGES)}')


def make_extract_fn(model: FeatureModel, stage: str) -> Callable[[Any, jax.Array], jax.Array]:
  """Returns ``fn(variables, images uint8 (B,H,W,3)) -> (B, D) float32`` (not jitted)."""
  check_stage(stage)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0

  def extract(variables: Any, images: jax.Array) -> jax.Array:
    x = (images.astype(jnp.float32) - mean) / std  # ImageNet normalisation of [0, 1] pixels
    _, feats = model.module.apply(variables, x, train=False)
    out = feats[stage]
    if out.ndim == 4:  # a spatial stage: global average pool over H and W
      out = out.mean(axis=(1, 2))
    return out.astype(jnp.float32)

  return extract


class Extractor:
  """A compiled, device-sharded feature function for one (model, stage, batch shape).

  The batch is split over every local device on its leading axis; the variables are replicated.
  ``batch_size`` is rounded up to a multiple of the device count, and a short last batch is
  padded with zeros (and the padding sliced off), so one compiled program serves every batch.
  """

  def __init__(self, model: FeatureModel, stage: str, height: int, width: int, batch_size: int):
    if height < 32 or width < 32:
      raise FeatureError(f'resolution {height}x{width} is too small for a ResNet-50 (min 32x32)')
    devices = jax.local_devices()
    self.batch_size = -(-max(batch_size, 1) // len(devices)) * len(devices)
    self.shape = (self.batch_size, height, width, 3)
    mesh = Mesh(np.array(devices), ('data',))
    self._data = NamedSharding(mesh, PartitionSpec('data'))
    replicated = NamedSharding(mesh, PartitionSpec())
    self._variables = jax.device_put(model.variables, replicated)
    fn = jax.jit(make_extract_fn(model, stage), in_shardings=(replicated, self._data),
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


@dataclasses.dataclass
class FeatureSet:
  """Features of a collection, with what was left out.

  Attributes:
    features: (N, D) float32, an array or a memory-mapped .npy, row i for ``paths[i]``.
    paths: the images that were read, in input order.
    skipped: (path, reason) for every image that could not be read; never silently dropped.
    num_extracted: images computed in this call (the rest came from the cache).
    extract_seconds: wall time spent decoding and computing those images.
  """
  features: np.ndarray
  paths: list[pathlib.Path]
  skipped: list[tuple[pathlib.Path, str]]
  num_extracted: int
  extract_seconds: float


class _Progress:
  """A one-line progress bar on stderr: redrawn in place on a terminal (a few times a second);
  in a log file (not a terminal) only the final line is written, so logs stay readable."""

  def __init__(self, total: int, label: str, enabled: bool):
    self.total, self.label, self.enabled = total, label, enabled and total > 0
    self.tty = sys.stderr.isatty()
    self.done, self.start, self.last = 0, time.perf_counter(), 0.0

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    finished = self.done >= self.total
    if not self.enabled or not (finished or (self.tty and now - self.last > 0.5)):
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    filled = int(30 * self.done / self.total)
    start, end = ('\r' if self.tty else ''), ('\n' if finished else '')
    sys.stderr.write(f'{start}{self.label} [{"#" * filled}{"." * (30 - filled)}] '
                     f'{self.done}/{self.total} {rate:.1f} img/s{end}')
    sys.stderr.flush()


def _load(path: pathlib.Path, composition: str, height: int, width: int,
          policy: str) -> tuple[np.ndarray | None, str]:
  try:
    image = images_lib.load_greyscale(path)
  except (images_lib.BadImageError, OSError) as error:
    return None, str(error) or type(error).__name__
  return resample.compose(image, composition, height, width, policy=policy), ''


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

  Returns:
    A ``FeatureSet``; unreadable images are in its ``skipped`` list with the reason.

  Raises:
    FeatureError: unknown stage, composition or policy.
  """
  check_stage(stage)
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
      digests.append(feature_cache.file_sha256(path))
    except OSError as error:
      digests.append(None)
      skipped[i] = f'cannot read file: {error.strerror or error}'
  config = dict(version=_CACHE_VERSION, model=model.identity, stage=stage, height=height,
                width=width, composition=composition, policy=policy)
  with tempfile.TemporaryDirectory(prefix='fwjax-features-') as scratch:
    cache = feature_cache.FeatureCache(cache_dir if cache_dir is not None else scratch, config, extractor.dim)
    todo: dict[str, pathlib.Path] = {}
    for digest, path in zip(digests, paths):
      if digest is not None and digest not in cache.rows:
        todo.setdefault(digest, path)
    failed, extract_seconds = _extract_missing(cache, extractor, list(todo.items()), composition,
                                               height, width, policy, workers, progress)
    for i, digest in enumerate(digests):
      if digest is not None and digest in failed:
        skipped[i] = failed[digest]
    keep = [i for i in range(len(paths)) if i not in skipped]
    features = feature_cache.assemble(cache, [digests[i] for i in keep], out_path)
  return FeatureSet(features=features, paths=[paths[i] for i in keep],
                    skipped=[(paths[i], skipped[i]) for i in sorted(skipped)],
                    num_extracted=len(todo) - len(failed), extract_seconds=extract_seconds)


def _extract_missing(cache: feature_cache.FeatureCache, extractor: Extractor,
                     items: list[tuple[str, pathlib.Path]], composition: str, height: int,
                     width: int, policy: str, workers: int | None,
                     progress: bool) -> tuple[dict[str, str], float]:
  """Computes and caches the features of ``items``; returns ({digest: reason}, seconds)."""
  failed: dict[str, str] = {}
  start = time.perf_counter()
  bar = _Progress(len(items), 'extracting features', progress)
  load = lambda path: _load(path, composition, height, width, policy)  # noqa: E731
  workers = workers or min(os.cpu_count() or 1, 8)
  for batch in _batches(items, extractor.batch_size, load, workers):
    good = [(d, image) for d, _, image, _ in batch if image is not None]
    failed.update({d: reason for d, _, image, reason in batch if image is None})
    if good:
      cache.append([d for d, _ in good], extractor(np.stack([image for _, image in good])))
    bar.update(len(batch))
  return failed, time.perf_counter() - start
