"""Xception (Chollet 2017) in Flax with ``keras.applications.Xception``'s exact conventions.

The layout follows Keras's application layer by layer, so its weight files fill this model
through the explicit layer list :func:`fwjax.models.keras_names.xception_layers`:

* entry flow: ``block1`` (3x3/2 and 3x3 convolutions, both 'valid'), then ``block2``..``block4``,
  each two 3x3 separable convolutions and a 3x3/2 'same' max-pool, added to a strided 1x1
  convolution of the block input (the residual);
* middle flow: ``block5``..``block12``, three ReLU -> separable convolution -> BatchNorm units
  added to the block input;
* exit flow: ``block13`` (like the entry blocks, 728 then 1024 channels) and ``block14``
  (separable convolutions to 1536 and 2048 channels, each followed by BatchNorm and ReLU).

Keras conventions that matter for its weights:

* Separable convolutions are a depthwise 3x3 convolution (channel multiplier 1) followed by a
  pointwise 1x1 convolution, neither with a bias and nothing in between.
* TensorFlow's 'same' padding pads ``max((ceil(n/s) - 1) s + k - n, 0)`` cells, half (rounded
  down) before and the rest after. ``jax.lax``'s ``'SAME'`` (and so Flax's) uses exactly this
  rule, including the asymmetric split for stride 2, so 'same' layers use ``'SAME'`` as is.
  (torchvision's ResNet pads symmetrically instead; see :mod:`fwjax.models.resnet`.)
* Max-pooling pads with -inf, so padded cells never win.
* BatchNorm ``epsilon=1e-3`` and ``momentum=0.99`` (Keras's defaults; Flax's momentum is the
  same quantity as Keras's, the weight of the old running average).
* The input is scaled to [-1, 1] (Keras's ``'tf'`` preprocessing mode: ``x / 127.5 - 1``).

Example:
  >>> model = Xception()
  >>> _, feats = model.apply(variables, x, train=False)  # x: (B, H, W, 3) in [-1, 1]
  >>> feats['features'].shape  # (B, 2048), Keras's include_top=False, pooling='avg'
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fwjax.models import resnet

ModuleDef = Any
Precision = jax.lax.Precision | str | None

FEATURE_KEYS = (*(f'block{i}' for i in range(1, 15)), 'features')
"""Keys of the feature dict every Xception forward pass returns, in network order."""

PREPROCESS_MODE = 'tf'
"""Keras's ``imagenet_utils.preprocess_input`` mode the weights expect: ``x / 127.5 - 1``."""

MIN_SIZE = 71
"""Keras's smallest accepted input height and width."""

# Keras initialises every kernel with glorot_uniform; for a depthwise kernel Keras's fans
# (9C in, 9 out) and Flax's (9 in, 9C out) differ only by a swap, which glorot ignores.
conv_init = nn.initializers.glorot_uniform()


def batch_norm(axis_name: str | None = None, *, momentum: float = 0.99,
               epsilon: float = 1e-3) -> Callable[..., nn.BatchNorm]:
  """The BatchNorm factory Xception expects as its ``norm`` argument (Keras's defaults).

  Args:
    axis_name: a mapped axis name (e.g. ``'data'`` under ``shard_map``) over which batch
      statistics are averaged (cross-device BatchNorm); None keeps statistics per device.
    momentum: weight of the old running average (Keras's and Flax's meaning agree).
    epsilon: variance epsilon (Keras's default 1e-3).

  Returns:
    ``functools.partial(nn.BatchNorm, ...)``; the model adds ``use_running_average`` and the
    dtypes when it calls it.
  """
  return resnet.batch_norm(axis_name, momentum=momentum, epsilon=epsilon)


def scaled(channels: int, width: float) -> int:
  """Channels of a layer in a model of relative ``width`` (at least 1)."""
  return max(1, round(channels * width))


class SeparableConv(nn.Module):
  """Keras's ``SeparableConv2D`` without bias: depthwise 3x3 ('same'), then pointwise 1x1.

  Attributes:
    features: output channels of the pointwise convolution.
    conv: convolution factory (dtype, precision and initialiser already bound, no bias).
  """
  features: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = self.conv(channels, (3, 3), padding='SAME', feature_group_count=channels,
                  name='depthwise')(x)
    return self.conv(self.features, (1, 1), name='pointwise')(x)


class EntryBlock(nn.Module):
  """``block2``..``block4`` and ``block13``: two separable units, max-pool, strided residual.

  Attributes:
    features: output channels of the two separable convolutions.
    relu_first: start with a ReLU (every such block but ``block2``, whose input is already
      activated); the residual always takes the block input before it.
    conv: convolution factory.
    norm: BatchNorm factory (running-average mode and dtypes bound).
  """
  features: tuple[int, int]
  relu_first: bool
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = self.conv(self.features[1], (1, 1), strides=(2, 2), padding='SAME',
                         name='residual_conv')(x)
    residual = self.norm(name='residual_bn')(residual)
    if self.relu_first:
      x = nn.relu(x)
    x = SeparableConv(self.features[0], self.conv, name='sepconv1')(x)
    x = nn.relu(self.norm(name='sepconv1_bn')(x))
    x = SeparableConv(self.features[1], self.conv, name='sepconv2')(x)
    x = self.norm(name='sepconv2_bn')(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    return x + residual


class EntryStem(nn.Module):
  """``block1``: 3x3/2 and 3x3 convolutions ('valid'), each with BatchNorm and ReLU."""
  features: tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.features[0], (3, 3), strides=(2, 2), padding='VALID', name='conv1')(x)
    x = nn.relu(self.norm(name='conv1_bn')(x))
    x = self.conv(self.features[1], (3, 3), padding='VALID', name='conv2')(x)
    return nn.relu(self.norm(name='conv2_bn')(x))


class MiddleBlock(nn.Module):
  """``block5``..``block12``: three ReLU -> separable convolution -> BatchNorm, plus input."""
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    for i in (1, 2, 3):
      x = SeparableConv(self.features, self.conv, name=f'sepconv{i}')(nn.relu(x))
      x = self.norm(name=f'sepconv{i}_bn')(x)
    return x + residual


class ExitBlock(nn.Module):
  """``block14``: two separable convolutions, each with BatchNorm and ReLU; no residual."""
  features: tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, features in enumerate(self.features, 1):
      x = SeparableConv(features, self.conv, name=f'sepconv{i}')(x)
      x = nn.relu(self.norm(name=f'sepconv{i}_bn')(x))
    return x


class Xception(nn.Module):
  """Xception as in ``keras.applications``, returning logits and named feature maps.

  Parameter tree (``params``; ``batch_stats`` mirrors every ``*_bn`` with ``mean``/``var``).
  Module ``blockI/SUB`` is Keras's layer ``blockI_SUB``, except the residual convolutions,
  which Keras leaves unnamed (``conv2d``, ``batch_normalization``, numbered per session)::

    block1/{conv1, conv1_bn, conv2, conv2_bn}
    block{2,3,4,13}/{sepconv1, sepconv1_bn, sepconv2, sepconv2_bn, residual_conv, residual_bn}
    block{5..12}/{sepconv1, sepconv1_bn, sepconv2, sepconv2_bn, sepconv3, sepconv3_bn}
    block14/{sepconv1, sepconv1_bn, sepconv2, sepconv2_bn}
    predictions/{kernel, bias}                        (only with include_top)

  where ``sepconvN`` holds ``depthwise/kernel`` (3, 3, 1, C) and ``pointwise/kernel``.

  Attributes:
    num_classes: outputs of the classifier ``predictions`` (Keras's top, whose softmax is left
      out: the model returns logits).
    width: channel multiplier (1.0 is Xception; e.g. 0.125 gives a tiny model with the same
      structure for fast tests; Keras has no such option).
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``. Logits
      and ``features`` are returned in float32.
    param_dtype: dtype of the parameters.
    norm: BatchNorm factory, see :func:`batch_norm` (pass ``batch_norm(axis_name='data')``
      for cross-device statistics).
    precision: matmul/convolution precision (``'highest'`` for exact float32 on GPUs/TPUs);
      None uses JAX's default.
    include_top: whether to build ``predictions``; without it the first return value is None.
  """
  num_classes: int = 1000
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = batch_norm()
  precision: Precision = None
  include_top: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) images scaled to [-1, 1] (Keras's 'tf' mode), H and W at least 71.
      train: batch statistics (and updates to ``batch_stats``, which must then be mutable)
        instead of running averages.

    Returns:
      ``(logits, feats)``: logits (B, num_classes) float32, or None without a top; feats maps
      each of :data:`FEATURE_KEYS` to its activation: 'block1'..'block14' (B, h, w, C) in
      ``dtype`` ('block1' is Keras's ``block1_conv2_act``, 'block2'..'block13' the outputs
      of its ``add`` layers, 'block14' its ``block14_sepconv2_act``), and 'features' (B, C)
      float32, the global average of 'block14' (Keras's ``pooling='avg'`` output).

    Raises:
      ValueError: H or W below 71, Keras's minimum.
    """
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'Xception needs images of at least {MIN_SIZE}x{MIN_SIZE} '
                       f'(as Keras); got {x.shape[1]}x{x.shape[2]}')
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, precision=self.precision,
                             kernel_init=conv_init)
    norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    c = functools.partial(scaled, width=self.width)
    feats = {}
    x = jnp.asarray(x, self.dtype)

    x = feats['block1'] = EntryStem((c(32), c(64)), conv, norm, name='block1')(x)
    entry = ((2, 128, 128, False), (3, 256, 256, True), (4, 728, 728, True))
    for i, first, second, relu_first in entry:
      x = EntryBlock((c(first), c(second)), relu_first, conv, norm, name=f'block{i}')(x)
      feats[f'block{i}'] = x
    for i in range(5, 13):
      x = feats[f'block{i}'] = MiddleBlock(c(728), conv, norm, name=f'block{i}')(x)
    x = EntryBlock((c(728), c(1024)), True, conv, norm, name='block13')(x)
    feats['block13'] = x
    x = feats['block14'] = ExitBlock((c(1536), c(2048)), conv, norm, name='block14')(x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats['features'] = features
    if not self.include_top:
      return None, feats
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, kernel_init=conv_init,
                      name='predictions')(features.astype(self.dtype))
    return logits.astype(jnp.float32), feats
