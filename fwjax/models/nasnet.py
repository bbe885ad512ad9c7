"""NASNet-A (Zoph et al. 2018) in Flax, as ``keras.applications.NASNetLarge`` computes it (NHWC).

The defaults are NASNetLarge (``NASNet (6 @ 4032)``: stem of 96 channels, three stacks of six
normal cells with reduction cells between, ``skip_reduction=True``, filter multiplier 2);
``penultimate_filters=96, num_blocks=1, stem_block_filters=8`` gives a tiny network with the
same structure for tests. Weights come from Keras through the explicit layer map of
:mod:`fwjax.models.keras_names`: every Flax module of a cell carries Keras's layer name
under ``cell_<block id>`` (``cell_0/normal_conv_1_0``, ``cell_reduce_6/adjust_bn_reduce_6``).

Keras conventions that matter for its weights (each one, done Flax's default way, changes
activations):

* Stride-2 separable convolutions run 'valid' on an explicit ``ZeroPadding2D`` of
  ``imagenet_utils.correct_pad``: ``k//2`` after, ``k//2`` before on odd sizes and
  ``k//2 - 1`` on even ones. That equals TensorFlow's (and ``lax``'s) 'SAME' for stride 2 at
  every size, so a convolution gets it as explicit padding. Stride-1 'same' is symmetric.
* A reduction cell's 3x3/2 max and average pools run 'valid' on the same zero padding of the
  cell's 1x1-convolved input: the pads are real zeros, so the max pool takes 0 where all of a
  border window is negative (a ``-inf``-padded 'SAME' max pool would not) and the average
  divides by 9 at the border (a 'SAME' average would divide by the cells inside).
* The 3x3/1 'same' average pools inside cells divide by the cells inside the image
  (``count_include_pad=False``), as Keras's 'same' average pooling does.
* ``_adjust_block``'s factorised reduction of the previous input: two 1x1/2 'valid' average
  pools (a pick of every other cell) of the ReLU'd input, the second shifted by one cell (pad
  one zero row/column after, crop one before) so it samples the odd cells and a zero row and
  column past the edge on odd sizes; each goes through its own 1x1 convolution of
  ``filters // 2``, then concatenation and BatchNorm. Whether a cell adjusts its previous input
  this way, by a 1x1 projection, or not at all is decided from shapes, as Keras decides it.
* BatchNorm ``epsilon=1e-3`` and ``momentum=0.9997`` everywhere (Flax's momentum is Keras's).
* A final ReLU before the global average pool; the stem BatchNorm has none after it (the
  next cells start with their own ReLU).

Example:
  >>> model = NASNet()  # NASNetLarge, include_top=False
  >>> _, feats = model.apply(variables, x, train=False)  # x: (B, H, W, 3) in [-1, 1]
  >>> feats['features'].shape  # (B, 4032): Keras's include_top=False, pooling='avg' output
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Precision = jax.lax.Precision | str | None

FEATURE_KEYS = ('stem', 'stem_1', 'stem_2', 'normal_1', 'reduce_1', 'normal_2', 'reduce_2',
                'normal_3', 'last_relu', 'features')
"""Keys of the feature dict every NASNet forward pass returns, in network order."""

MIN_SIZE = 32
"""Smallest input height and width (Keras's ``min_size``); below it cells decide differently."""

# Keras's initialisers: he_normal for NASNet's Conv2D layers, its default glorot_uniform for
# SeparableConv2D and Dense (for the depthwise kernel, Keras's (h, w, C, 1) and Flax's
# (h, w, 1, C) have the same fan_in + fan_out, hence the same glorot scale).
conv_init = nn.initializers.he_normal()
glorot_init = nn.initializers.glorot_uniform()


def batch_norm(axis_name: str | None = None, *, momentum: float = 0.9997,
               epsilon: float = 1e-3) -> Callable[..., nn.BatchNorm]:
  """The BatchNorm factory NASNet expects as its ``norm`` argument.

  Args:
    axis_name: a mapped axis name over which batch statistics are averaged (cross-device
      BatchNorm); None keeps statistics per device.
    momentum: weight of the old running average (Keras's NASNet uses 0.9997).
    epsilon: variance epsilon (Keras's NASNet uses 1e-3).

  Returns:
    ``functools.partial(nn.BatchNorm, ...)``; the model adds ``use_running_average`` and
    ``dtype`` when it calls it.
  """
  return functools.partial(nn.BatchNorm, momentum=momentum, epsilon=epsilon,
                           axis_name=axis_name)


def correct_pad(size: int, kernel: int) -> tuple[int, int]:
  """Keras's ``imagenet_utils.correct_pad`` for one axis: zero padding before a stride-2 'valid'.

  Args:
    size: the input's length along the axis.
    kernel: the window's length along the axis.

  Returns:
    ``(before, after)``.
  """
  return kernel // 2 - (1 - size % 2), kernel // 2


class SeparableConv2D(nn.Module):
  """Keras's ``SeparableConv2D`` without bias: a depthwise convolution, then a 1x1 one.

  Attributes:
    features: output channels of the pointwise convolution.
    kernel_size: the depthwise window, square.
    strides: stride of the depthwise convolution (the pointwise one has stride 1).
    padding: explicit ``((top, bottom), (left, right))`` zero padding of the depthwise step.
    conv: convolution factory (no bias; dtype and precision already bound).
  """
  features: int
  kernel_size: int
  strides: int
  padding: tuple[tuple[int, int], tuple[int, int]]
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.strides
    x = self.conv(x.shape[-1], (k, k), strides=(s, s), padding=self.padding,
                  feature_group_count=x.shape[-1], kernel_init=glorot_init,
                  name='depthwise')(x)
    return self.conv(self.features, (1, 1), kernel_init=glorot_init, name='pointwise')(x)


def _separable_conv_block(x: jax.Array, filters: int, kernel: int, block_id: str,
                          conv: ModuleDef, norm: ModuleDef, strides: int = 1) -> jax.Array:
  """Keras's ``_separable_conv_block``: (ReLU, separable conv, BN) twice, the first strided."""
  same = ((kernel // 2, kernel // 2),) * 2
  if strides == 2:
    first = (correct_pad(x.shape[1], kernel), correct_pad(x.shape[2], kernel))
  else:
    first = same
  x = SeparableConv2D(filters, kernel, strides, first, conv,
                      name=f'separable_conv_1_{block_id}')(nn.relu(x))
  x = norm(name=f'separable_conv_1_bn_{block_id}')(x)
  x = SeparableConv2D(filters, kernel, 1, same, conv,
                      name=f'separable_conv_2_{block_id}')(nn.relu(x))
  return norm(name=f'separable_conv_2_bn_{block_id}')(x)


def _adjust_block(p: jax.Array | None, ip: jax.Array, filters: int, block_id: str,
                  conv: ModuleDef, norm: ModuleDef) -> jax.Array:
  """Keras's ``_adjust_block``: fits the previous input ``p`` to the cell input ``ip``."""
  if p is None:
    return ip
  # Keras compares widths only; for inputs of at least MIN_SIZE, heights agree with them.
  if p.shape[2] != ip.shape[2]:
    p = nn.relu(p)
    p1 = p[:, ::2, ::2]  # AveragePooling2D((1, 1), strides=2, 'valid')
    # ZeroPadding2D(((0, 1), (0, 1))) then Cropping2D(((1, 0), (1, 0))): a shift by one cell.
    p2 = jnp.pad(p, ((0, 0), (0, 1), (0, 1), (0, 0)))[:, 1:, 1:][:, ::2, ::2]
    p1 = conv(filters // 2, (1, 1), kernel_init=conv_init, name=f'adjust_conv_1_{block_id}')(p1)
    p2 = conv(filters // 2, (1, 1), kernel_init=conv_init, name=f'adjust_conv_2_{block_id}')(p2)
    return norm(name=f'adjust_bn_{block_id}')(jnp.concatenate([p1, p2], axis=-1))
  if p.shape[-1] != filters:
    p = conv(filters, (1, 1), kernel_init=conv_init,
             name=f'adjust_conv_projection_{block_id}')(nn.relu(p))
    return norm(name=f'adjust_bn_{block_id}')(p)
  return p


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """Keras's ``AveragePooling2D((3, 3), strides=1, padding='same')``: padded cells not counted."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class NormalCell(nn.Module):
  """NASNet-A normal cell (Keras's ``_normal_a_cell``), with its layers named as Keras's.

  Attributes:
    filters: channels of each of its five branches (the cell outputs ``6 * filters``).
    block_id: Keras's block id (``'0'``, ``'7'``, ...), the suffix of every layer name.
    conv: convolution factory (no bias; dtype and precision already bound).
    norm: BatchNorm factory (running-average mode and dtype already bound).
  """
  filters: int
  block_id: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, ip: jax.Array, p: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Returns ``(output, ip)``: the cell's input is the next cell's previous input."""
    f, b, conv, norm = self.filters, self.block_id, self.conv, self.norm
    p = _adjust_block(p, ip, f, b, conv, norm)
    h = conv(f, (1, 1), kernel_init=conv_init, name=f'normal_conv_1_{b}')(nn.relu(ip))
    h = norm(name=f'normal_bn_1_{b}')(h)
    x1 = (_separable_conv_block(h, f, 5, f'normal_left1_{b}', conv, norm)
          + _separable_conv_block(p, f, 3, f'normal_right1_{b}', conv, norm))
    x2 = (_separable_conv_block(p, f, 5, f'normal_left2_{b}', conv, norm)
          + _separable_conv_block(p, f, 3, f'normal_right2_{b}', conv, norm))
    x3 = _avg_pool_same(h) + p
    x4 = _avg_pool_same(p) + _avg_pool_same(p)  # two Keras layers, one value
    x5 = _separable_conv_block(h, f, 3, f'normal_left5_{b}', conv, norm) + h
    return jnp.concatenate([p, x1, x2, x3, x4, x5], axis=-1), ip


class ReductionCell(nn.Module):
  """NASNet-A reduction cell (Keras's ``_reduction_a_cell``): halves height and width.

  Attributes:
    filters: channels of each of its four branches (the cell outputs ``4 * filters``).
    block_id: Keras's block id (``'stem_1'``, ``'reduce_6'``, ...).
    conv: convolution factory (no bias; dtype and precision already bound).
    norm: BatchNorm factory (running-average mode and dtype already bound).
  """
  filters: int
  block_id: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, ip: jax.Array, p: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Returns ``(output, ip)``; ``p`` None (the first stem cell) means ``ip`` itself."""
    f, b, conv, norm = self.filters, self.block_id, self.conv, self.norm
    p = _adjust_block(p, ip, f, b, conv, norm)
    h = conv(f, (1, 1), kernel_init=conv_init, name=f'reduction_conv_1_{b}')(nn.relu(ip))
    h = norm(name=f'reduction_bn_1_{b}')(h)
    pad = (correct_pad(h.shape[1], 3), correct_pad(h.shape[2], 3))
    h3 = jnp.pad(h, ((0, 0), *pad, (0, 0)))  # real zeros, seen by the max and average pools
    max_pool = nn.max_pool(h3, (3, 3), strides=(2, 2), padding='VALID')
    x1 = (_separable_conv_block(h, f, 5, f'reduction_left1_{b}', conv, norm, 2)
          + _separable_conv_block(p, f, 7, f'reduction_right1_{b}', conv, norm, 2))
    x2 = max_pool + _separable_conv_block(p, f, 7, f'reduction_right2_{b}', conv, norm, 2)
    x3 = (nn.avg_pool(h3, (3, 3), strides=(2, 2), padding='VALID')
          + _separable_conv_block(p, f, 5, f'reduction_right3_{b}', conv, norm, 2))
    x4 = x2 + _avg_pool_same(x1)
    x5 = _separable_conv_block(x1, f, 3, f'reduction_left4_{b}', conv, norm) + max_pool
    return jnp.concatenate([x2, x3, x4, x5], axis=-1), ip


class NASNet(nn.Module):
  """NASNet-A with Keras's layout, returning logits (or None) and named feature maps.

  Parameter tree (``batch_stats`` mirrors every BatchNorm with ``mean``/``var``)::

    stem_conv1/kernel, stem_bn1/{scale,bias},
    cell_<id>/<Keras layer name>/...   for id in stem_1, stem_2, 0.., reduce_<n>, ..
      separable convolutions: <name>/depthwise/kernel, <name>/pointwise/kernel
    predictions/{kernel,bias}                          (only with include_top)

  Attributes:
    num_blocks: normal cells per stack (6 for NASNetLarge).
    penultimate_filters: channels of the last feature map (4032); a multiple of
      ``24 * filter_multiplier**2``.
    stem_block_filters: channels of the stem convolution (96).
    skip_reduction: the first normal cell after a reduction takes the cell before the
      reduction as its previous input (True for NASNetLarge, False for NASNetMobile).
    filter_multiplier: factor between the filters of successive stacks (2).
    num_classes: outputs of the classifier ``predictions``.
    include_top: build ``predictions``; its logits are returned before Keras's softmax.
      False (the default) returns None as logits.
    dtype: computation dtype; parameters stay ``param_dtype``. Logits and ``features`` are
      float32.
    param_dtype: dtype of the parameters.
    norm: BatchNorm factory, see :func:`batch_norm`. A bare ``nn.BatchNorm`` would use Flax's
      momentum 0.99 and epsilon 1e-5.
    precision: convolution precision (``'highest'`` for exact float32 on GPUs/TPUs); None uses
      JAX's default.
  """
  num_blocks: int = 6
  penultimate_filters: int = 4032
  stem_block_filters: int = 96
  skip_reduction: bool = True
  filter_multiplier: int = 2
  num_classes: int = 1000
  include_top: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = batch_norm()
  precision: Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) images scaled to [-1, 1] (Keras's 'tf' preprocessing), H and W at
        least :data:`MIN_SIZE`; 331x331 is NASNetLarge's training size.
      train: batch statistics (and updates to ``batch_stats``, which must then be mutable)
        instead of running averages.

    Returns:
      ``(logits, feats)``: logits (B, num_classes) float32 or None without a top; feats maps
      each of :data:`FEATURE_KEYS` to its activation in ``dtype``: 'stem' (stem_bn1), the
      outputs of the stem reduction cells 'stem_1' and 'stem_2', of the three stacks of
      normal cells 'normal_1'..'normal_3' and of the reductions between them 'reduce_1',
      'reduce_2' (see :func:`~fwjax.models.keras_names.nasnet_stage_layers` for
      Keras's names), 'last_relu' (the final ReLU, Keras's ``pooling=None`` output), and
      'features' (B, penultimate_filters) float32, its global average (``pooling='avg'``).

    Raises:
      ValueError: an input smaller than :data:`MIN_SIZE`, or ``penultimate_filters`` not a
        multiple of ``24 * filter_multiplier**2``.
    """
    mult = self.filter_multiplier
    if self.penultimate_filters % (24 * mult**2):
      raise ValueError(f'penultimate_filters ({self.penultimate_filters}) must be a multiple '
                       f'of 24 * filter_multiplier**2 = {24 * mult**2}')
    if x.ndim != 4 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'NASNet takes (B, H, W, C) images of at least {MIN_SIZE}x{MIN_SIZE} '
                       f'(as Keras does), got shape {x.shape}')
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, precision=self.precision)
    norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    filters = self.penultimate_filters // 24
    n = self.num_blocks
    feats = {}
    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_block_filters, (3, 3), strides=(2, 2), padding='VALID',
             kernel_init=conv_init, name='stem_conv1')(x)
    x = norm(name='stem_bn1')(x)
    feats['stem'] = x
    x, p = ReductionCell(filters // mult**2, 'stem_1', conv, norm, name='cell_stem_1')(x, None)
    feats['stem_1'] = x
    x, p = ReductionCell(filters // mult, 'stem_2', conv, norm, name='cell_stem_2')(x, p)
    feats['stem_2'] = x
    for stack in range(3):
      if stack:
        block_id = f'reduce_{stack * n}'
        x, p0 = ReductionCell(filters, block_id, conv, norm, name=f'cell_{block_id}')(x, p)
        p = p if self.skip_reduction else p0
        feats[f'reduce_{stack}'] = x
      for i in range(n):
        block_id = f'{i if stack == 0 else stack * n + i + 1}'
        x, p = NormalCell(filters, block_id, conv, norm, name=f'cell_{block_id}')(x, p)
      feats[f'normal_{stack + 1}'] = x
      filters *= mult
    x = nn.relu(x)
    feats['last_relu'] = x
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats['features'] = features
    if not self.include_top:
      return None, feats
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, kernel_init=glorot_init,
                      name='predictions')(features.astype(self.dtype))
    return logits.astype(jnp.float32), feats
