"""Inception-ResNet-v2 (Szegedy et al. 2017) with ``keras.applications``' exact conventions.

The layout follows Keras's ``InceptionResNetV2`` layer by layer, so its weight files fill this
model through the explicit layer list
:func:`fwjax.models.keras_names.inception_resnet_v2_layers`:

* ``stem``: 3x3/2 'valid', 3x3 'valid', 3x3 'same', max-pool 3x3/2, 1x1 'valid', 3x3 'valid',
  max-pool 3x3/2 (both pools 'valid');
* ``mixed_5b`` (Inception-A): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool 3x3/1 'same' -> 1x1;
* 10 x ``block35`` (Inception-ResNet-A, residual scale 0.17);
* ``mixed_6a`` (Reduction-A): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool 3x3/2, all 'valid' at the
  stride;
* 20 x ``block17`` (Inception-ResNet-B, scale 0.1, 1x7 and 7x1 convolutions);
* ``mixed_7a`` (Reduction-B): three convolution branches and a max-pool, 'valid' at stride 2;
* 10 x ``block8`` (Inception-ResNet-C, scale 0.2; the last one with scale 1 and no ReLU);
* ``conv_7b``: 1x1 convolution to 1536 channels.

Keras conventions that matter for its weights:

* Each ``conv2d_bn`` is a convolution without bias, BatchNorm with ``scale=False`` (no gamma:
  a ReLU follows, so a scale would only rescale the next layer's weights) and
  ``epsilon=1e-3``, and a ReLU. The 1x1 up-projection that closes each residual block is
  the exception: a convolution *with* bias and neither BatchNorm nor activation.
* A residual block computes ``x + scale * up`` (Keras's ``CustomScaleLayer``), then ReLU.
* 'same' padding is TensorFlow's; here every 'same' layer has stride 1 and an odd kernel, so
  it pads symmetrically, and ``jax.lax``'s ``'SAME'`` is the same rule anyway. Every stride-2
  layer is 'valid'.
* The average pool of ``mixed_5b`` ('same') divides by the number of cells inside the image
  (Keras's ``AveragePooling2D`` does not count padding: ``count_include_pad=False``).
* The input is scaled to [-1, 1] (Keras's ``'tf'`` preprocessing mode: ``x / 127.5 - 1``).

Example:
  >>> model = InceptionResNetV2()
  >>> _, feats = model.apply(variables, x, train=False)  # x: (B, H, W, 3) in [-1, 1]
  >>> feats['features'].shape  # (B, 1536), Keras's include_top=False, pooling='avg'
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fwjax.models import xception

ModuleDef = Any
Precision = jax.lax.Precision | str | None
KernelSize = int | tuple[int, int]

FEATURE_KEYS = ('stem', 'mixed_5b', 'block35', 'mixed_6a', 'block17', 'mixed_7a', 'block8',
                'conv_7b', 'features')
"""Keys of the feature dict every forward pass returns, in network order."""

PREPROCESS_MODE = 'tf'
"""Keras's ``imagenet_utils.preprocess_input`` mode the weights expect: ``x / 127.5 - 1``."""

MIN_SIZE = 75
"""Keras's smallest accepted input height and width (``mixed_7a`` is then 1x1)."""

# Keras initialises kernels with glorot_uniform and biases with zeros.
conv_init = nn.initializers.glorot_uniform()

BRANCHES: dict[str, tuple[tuple[tuple[int, KernelSize], ...], ...]] = {
    'block35': (((32, 1),), ((32, 1), (32, 3)), ((32, 1), (48, 3), (64, 3))),
    'block17': (((192, 1),), ((128, 1), (160, (1, 7)), (192, (7, 1)))),
    'block8': (((192, 1),), ((192, 1), (224, (1, 3)), (256, (3, 1)))),
}
"""(channels, kernel) of each stride-1 'same' ``conv2d_bn`` in each residual block's branches.

Branch ``i``'s ``j``-th convolution is the module ``branch{i}_{j}``.
"""

SCALES = {'block35': 0.17, 'block17': 0.1, 'block8': 0.2}
"""Residual scale of each block type (the last ``block8`` uses 1.0)."""

REPEATS = {'block35': 10, 'block17': 20, 'block8': 10}
"""How many blocks of each type, named ``block35_1`` .. ``block35_10`` and so on."""


# Keras's BatchNorm defaults and the width rule are Xception's: one definition serves both (the
# model adds ``use_scale=False``, as Keras's conv2d_bn does).
batch_norm = xception.batch_norm
scaled = xception.scaled


class ConvBN(nn.Module):
  """Keras's ``conv2d_bn``: convolution (no bias) -> BatchNorm (no scale) -> ReLU.

  Attributes:
    features: output channels.
    kernel_size: an int for a square kernel or (h, w).
    strides: stride in both directions.
    padding: ``'SAME'`` or ``'VALID'`` as in Keras.
    conv: convolution factory (dtype, precision and initialiser bound, no bias).
    norm: BatchNorm factory (running-average mode and dtypes bound).
  """
  features: int
  kernel_size: KernelSize
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = (k, k) if isinstance(k, int) else tuple(k)
    x = self.conv(self.features, kernel, strides=(self.strides, self.strides),
                  padding=self.padding, name='conv')(x)
    return nn.relu(self.norm(use_scale=False, name='bn')(x))


class Stem(nn.Module):
  """The stem (``conv1``..``conv5`` and two 3x3/2 'valid' max-pools): 3 -> 192 channels."""
  width: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(scaled, width=self.width)
    x = ConvBN(c(32), 3, self.conv, self.norm, strides=2, padding='VALID', name='conv1')(x)
    x = ConvBN(c(32), 3, self.conv, self.norm, padding='VALID', name='conv2')(x)
    x = ConvBN(c(64), 3, self.conv, self.norm, name='conv3')(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = ConvBN(c(80), 1, self.conv, self.norm, padding='VALID', name='conv4')(x)
    x = ConvBN(c(192), 3, self.conv, self.norm, padding='VALID', name='conv5')(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class Mixed5b(nn.Module):
  """Inception-A (``mixed_5b``): four branches concatenated to 320 channels."""
  width: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(scaled, width=self.width)
    cbn = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    b0 = cbn(c(96), 1, name='branch0_0')(x)
    b1 = cbn(c(48), 1, name='branch1_0')(x)
    b1 = cbn(c(64), 5, name='branch1_1')(b1)
    b2 = cbn(c(64), 1, name='branch2_0')(x)
    b2 = cbn(c(96), 3, name='branch2_1')(b2)
    b2 = cbn(c(96), 3, name='branch2_2')(b2)
    pool = nn.avg_pool(x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False)
    pool = cbn(c(64), 1, name='branch_pool')(pool)
    return jnp.concatenate([b0, b1, b2, pool], axis=-1)


class Mixed6a(nn.Module):
  """Reduction-A (``mixed_6a``): 35x35x320 -> 17x17x1088 at full size."""
  width: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(scaled, width=self.width)
    cbn = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    b0 = cbn(c(384), 3, strides=2, padding='VALID', name='branch0_0')(x)
    b1 = cbn(c(256), 1, name='branch1_0')(x)
    b1 = cbn(c(256), 3, name='branch1_1')(b1)
    b1 = cbn(c(384), 3, strides=2, padding='VALID', name='branch1_2')(b1)
    pool = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b0, b1, pool], axis=-1)


class Mixed7a(nn.Module):
  """Reduction-B (``mixed_7a``): 17x17x1088 -> 8x8x2080 at full size."""
  width: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(scaled, width=self.width)
    cbn = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    b0 = cbn(c(256), 1, name='branch0_0')(x)
    b0 = cbn(c(384), 3, strides=2, padding='VALID', name='branch0_1')(b0)
    b1 = cbn(c(256), 1, name='branch1_0')(x)
    b1 = cbn(c(288), 3, strides=2, padding='VALID', name='branch1_1')(b1)
    b2 = cbn(c(256), 1, name='branch2_0')(x)
    b2 = cbn(c(288), 3, name='branch2_1')(b2)
    b2 = cbn(c(320), 3, strides=2, padding='VALID', name='branch2_2')(b2)
    pool = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b0, b1, b2, pool], axis=-1)


class InceptionResNetBlock(nn.Module):
  """Keras's ``inception_resnet_block``: ``act(x + scale * conv(concat(branches(x))))``.

  Attributes:
    branches: (channels, kernel) of each branch's stride-1 'same' ``conv2d_bn``s, one of
      :data:`BRANCHES` (channels before ``width`` is applied).
    scale: residual scale.
    activation: apply the closing ReLU (False only for the last ``block8``).
    width: channel multiplier of the branches; the up-projection ``conv`` always restores the
      input's channels.
    conv: convolution factory (no bias; the up-projection adds its own).
    norm: BatchNorm factory.
  """
  branches: Sequence[Sequence[tuple[int, KernelSize]]]
  scale: float
  activation: bool
  width: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outs = []
    for i, branch in enumerate(self.branches):
      y = x
      for j, (channels, kernel) in enumerate(branch):
        y = ConvBN(scaled(channels, self.width), kernel, self.conv, self.norm,
                   name=f'branch{i}_{j}')(y)
      outs.append(y)
    up = self.conv(x.shape[-1], (1, 1), use_bias=True, name='conv')(jnp.concatenate(outs, -1))
    x = x + up * self.scale
    return nn.relu(x) if self.activation else x


class InceptionResNetV2(nn.Module):
  """Inception-ResNet-v2 as in ``keras.applications``, returning logits and named features.

  Parameter tree (``params``; ``batch_stats`` mirrors every ``bn`` with ``mean``/``var``; a
  ``bn`` has only ``bias``, Keras's beta, in ``params``)::

    stem/conv{1..5}/{conv, bn}
    mixed_5b/{branch0_0, branch1_{0,1}, branch2_{0,1,2}, branch_pool}/{conv, bn}
    block35_{1..10}/{branch0_0, branch1_{0,1}, branch2_{0,1,2}}/{conv, bn}, block35_I/conv
    mixed_6a/{branch0_0, branch1_{0,1,2}}/{conv, bn}
    block17_{1..20}/{branch0_0, branch1_{0,1,2}}/{conv, bn}, block17_I/conv
    mixed_7a/{branch0_{0,1}, branch1_{0,1}, branch2_{0,1,2}}/{conv, bn}
    block8_{1..10}/{branch0_0, branch1_{0,1,2}}/{conv, bn}, block8_I/conv
    conv_7b/{conv, bn}
    predictions/{kernel, bias}                        (only with include_top)

  ``blockNN_I/conv`` (kernel and bias) is Keras's ``blockNN_I_conv`` and ``conv_7b`` its
  ``conv_7b``/``conv_7b_bn``; Keras leaves every other layer unnamed (``conv2d_17``).

  Attributes:
    num_classes: outputs of the classifier ``predictions`` (Keras's top, whose softmax is left
      out: the model returns logits).
    width: channel multiplier (1.0 is the real network; e.g. 0.125 gives a tiny model with the
      same structure for fast tests; Keras has no such option).
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``. Logits
      and ``features`` are returned in float32.
    param_dtype: dtype of the parameters.
    norm: BatchNorm factory, see :func:`batch_norm` (the model adds ``use_scale=False``).
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
      x: (B, H, W, 3) images scaled to [-1, 1] (Keras's 'tf' mode), H and W at least 75.
      train: batch statistics (and updates to ``batch_stats``, which must then be mutable)
        instead of running averages.

    Returns:
      ``(logits, feats)``: logits (B, num_classes) float32, or None without a top; feats maps
      each of :data:`FEATURE_KEYS` to its activation (B, h, w, C) in ``dtype``: 'stem' (the
      second max-pool), 'mixed_5b', 'block35' (after ``block35_10``), 'mixed_6a', 'block17'
      (after ``block17_20``), 'mixed_7a', 'block8' (after ``block8_10``, no ReLU), 'conv_7b'
      (Keras's ``conv_7b_ac``); and 'features' (B, C) float32, the global average of
      'conv_7b' (Keras's ``pooling='avg'`` output).

    Raises:
      ValueError: H or W below 75, Keras's minimum.
    """
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'InceptionResNetV2 needs images of at least {MIN_SIZE}x{MIN_SIZE} '
                       f'(as Keras); got {x.shape[1]}x{x.shape[2]}')
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, precision=self.precision,
                             kernel_init=conv_init)
    norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    feats = {}
    x = jnp.asarray(x, self.dtype)
    x = feats['stem'] = Stem(self.width, conv, norm, name='stem')(x)
    x = feats['mixed_5b'] = Mixed5b(self.width, conv, norm, name='mixed_5b')(x)

    def repeat(block: str, x: jax.Array) -> jax.Array:
      for i in range(1, REPEATS[block] + 1):
        # Keras closes the network's last block8 with scale 1 and no ReLU before conv_7b.
        last = block == 'block8' and i == REPEATS[block]
        x = InceptionResNetBlock(BRANCHES[block], 1.0 if last else SCALES[block], not last,
                                 self.width, conv, norm, name=f'{block}_{i}')(x)
      return x

    x = feats['block35'] = repeat('block35', x)
    x = feats['mixed_6a'] = Mixed6a(self.width, conv, norm, name='mixed_6a')(x)
    x = feats['block17'] = repeat('block17', x)
    x = feats['mixed_7a'] = Mixed7a(self.width, conv, norm, name='mixed_7a')(x)
    x = feats['block8'] = repeat('block8', x)
    x = feats['conv_7b'] = ConvBN(scaled(1536, self.width), 1, conv, norm, name='conv_7b')(x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats['features'] = features
    if not self.include_top:
      return None, feats
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, kernel_init=conv_init,
                      name='predictions')(features.astype(self.dtype))
    return logits.astype(jnp.float32), feats
