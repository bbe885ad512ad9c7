"""The body features are taken from: a network, its variables and a stable identity.

:func:`build_model` builds it from a weights file (or randomly, for tests), and
:func:`make_extract_fn` turns it into a function from uint8 images to one feature vector per
image at a chosen stage. ``fwjax.similarity.features`` compiles, shards, batches and caches it.
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
from fwjax.models import checkpoint, pretrained, resnet

# 'features' is layer4 globally average-pooled (the input of the classifier); the earlier stages
# are average-pooled the same way, as de Bie (2020) compared them.
STAGES = ('features', 'layer1', 'layer2', 'layer3', 'layer4')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    variables = pretrained.load_torchvision(path, include_fc=False)
  else:
    raise FeatureError(f'{path}: unknown weights format {path.suffix!r}; expected .pth, .pt, '
                       '.safetensors or a fwjax checkpoint folder')
  variables = {k: v for k, v in dict(variables).items() if k in ('params', 'batch_stats')}
  width = _stem_width(variables['params'])
  module = resnet.ResNet50(width=width, include_top=False)
  return FeatureModel(module, variables, f'{runs.weights_identity(path)}-width-{width}', width)


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
