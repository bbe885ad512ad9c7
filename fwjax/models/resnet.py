"""ResNet-50 in Flax: v1.5 with torchvision's exact conventions, and Keras's v1 (NHWC).

Written with ``flax.linen`` rather than ``flax.nnx``: linen modules are pure functions of an
explicit ``{'params', 'batch_stats'}`` variable tree, which is what the rest of fwjax passes
around (pretrained loading builds that tree from a state dict, optax partitions it by path,
orbax saves it, ``jax.jit``/``shard_map`` steps take it as an argument), and linen's
``nn.BatchNorm(axis_name=...)`` gives cross-device statistics inside a sharded step with no
extra plumbing. nnx would keep state inside objects and need ``nnx.split``/``merge`` at every
one of those boundaries.

torchvision conventions that matter for pretrained weights (each one, done Flax's default way,
changes activations from the first layer on):

* stem: 7x7/2 convolution with explicit padding 3 on every side; max-pool 3x3/2 with padding 1
  filled with -inf. Flax's ``'SAME'`` pads stride-2 windows asymmetrically (0 before, 1 after
  on even sizes), which shifts every feature map by half a pixel.
* v1.5 bottleneck: the stride sits on the 3x3 convolution of the first block of a stage, and the
  projection shortcut is a strided 1x1 convolution followed by BatchNorm.
* BatchNorm ``epsilon=1e-5`` and ``momentum=0.9`` (PyTorch's momentum 0.1 is the weight of the
  *new* batch; Flax's momentum is the weight of the old average and defaults to 0.99).

Keras's ``keras.applications.ResNet50`` is ResNet v1, a variant of the same module
(:func:`keras_resnet50`): the stride sits on the first 1x1 convolution of a stage's first block
(and on its projection shortcut), every convolution has a bias, and BatchNorm uses
``epsilon=1.001e-5`` and Keras's momentum 0.99. Its stem is ``ZeroPadding2D(3)`` + 7x7/2
``'valid'`` convolution, i.e. torchvision's padding 3, and ``ZeroPadding2D(1)`` + 3x3/2
``'valid'`` max-pool: zeros rather than -inf, which is the same after the ReLU before it. Flax
names stay torchvision's (``layer1``..``layer4`` = Keras's ``conv2``..``conv5`` stages); the
Keras layer names are mapped in :func:`fwjax.models.keras_names.keras_resnet50_layers`.

Example:
  >>> model = ResNet50()
  >>> variables = fwjax.models.pretrained.load_torchvision('resnet50.pth')
  >>> logits, feats = model.apply(variables, x, train=False)  # x: (B, H, W, 3) float32
  >>> feats['layer4'].shape  # (B, H/32, W/32, 2048), rounded up as torchvision does
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Precision = jax.lax.Precision | str | None

FEATURE_KEYS = ('stem', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4', 'features')
"""Keys of the feature dict every ResNet forward pass returns, in network order."""

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


# Keras's Conv2D defaults: Glorot-uniform kernels (zero biases are Flax's default too).
keras_conv_init = nn.initializers.glorot_uniform()


def batch_norm(axis_name: str | None = None, *, momentum: float = 0.9,
               epsilon: float = 1e-5) -> Callable[..., nn.BatchNorm]:
  """The BatchNorm factory ResNet50 expects as its ``norm`` argument.

  Args:
    axis_name: a mapped axis name (e.g. ``'data'`` under ``shard_map``/``pmap``) over which
      batch statistics are averaged, giving cross-device (synchronised) BatchNorm; None keeps
      statistics per device.
    momentum: weight of the old running average (torchvision's 0.1 corresponds to 0.9).
    epsilon: variance epsilon (torchvision uses 1e-5).

  Returns:
    ``functools.partial(nn.BatchNorm, ...)``; the model adds ``use_running_average`` and
    ``dtype`` when it calls it.
  """
  return functools.partial(nn.BatchNorm, momentum=momentum, epsilon=epsilon,
                           axis_name=axis_name)


def keras_batch_norm(axis_name: str | None = None) -> Callable[..., nn.BatchNorm]:
  """Keras ResNet50's BatchNorm: ``epsilon=1.001e-5`` and Keras's default momentum 0.99."""
  return batch_norm(axis_name, momentum=0.99, epsilon=1.001e-5)


class Bottleneck(nn.Module):
  """The bottleneck block: 1x1 -> 3x3 -> 1x1 (x4), plus shortcut.

  torchvision's (v1.5) strides the 3x3 convolution; Keras's ResNet50 (v1, ``stride_in_1x1``)
  strides the first 1x1 convolution.

  Attributes:
    width: channels of the 1x1 and 3x3 convolutions; the block outputs ``4 * width``.
    strides: stride of the 3x3 (or first 1x1) convolution and of the projection shortcut.
    conv: convolution factory (dtype and precision already bound).
    norm: BatchNorm factory (running-average mode and dtype already bound).
    zero_init_residual: start the last BatchNorm's scale at 0 so the block starts as identity
      (torchvision's ``zero_init_residual``; helps training from scratch).
    stride_in_1x1: stride the first 1x1 convolution instead of the 3x3 (ResNet v1, Keras).
  """
  width: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_channels = 4 * self.width
    residual = x
    stride1, stride2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    # A strided 1x1 'SAME' convolution pads nothing (total padding max((ceil(n/s)-1)s+1-n, 0)
    # is 0), so it is Keras's 'valid' one.
    y = self.conv(self.width, (1, 1), strides=(stride1, stride1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.width, (3, 3), strides=(stride2, stride2),
                  padding=((1, 1), (1, 1)), name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out_channels, (1, 1), name='conv3')(y)
    scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(scale_init=scale_init, name='bn3')(y)
    if residual.shape[-1] != out_channels or self.strides != 1:
      residual = self.conv(out_channels, (1, 1), strides=(self.strides, self.strides),
                           name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNetStage(nn.Module):
  """One stage (torchvision's ``layerN``): ``num_blocks`` bottlenecks named block0, block1..."""
  num_blocks: int
  width: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = Bottleneck(self.width, self.strides if i == 0 else 1, self.conv, self.norm,
                     self.zero_init_residual, self.stride_in_1x1, name=f'block{i}')(x)
    return x


class ResNet50(nn.Module):
  """ResNet-50 (v1.5 torchvision, or v1 Keras), returning logits and named feature maps.

  Parameter tree (``params``; ``batch_stats`` mirrors every ``bn*`` with ``mean``/``var``)::

    conv1/kernel, bn1/{scale,bias},
    layer{1..4}/block{i}/{conv1,bn1,conv2,bn2,conv3,bn3}[, downsample_conv, downsample_bn],
    fc/{kernel,bias}                                  (only with include_top)

  With ``conv_bias`` every convolution also has a ``bias``.

  Attributes:
    num_classes: outputs of the final Dense layer ``fc``.
    width: channels of the first stage's 3x3 convolutions (64 for the real network; 8 makes
      a tiny test model with the same structure). Stage ``i`` uses ``width * 2**i``.
    stage_sizes: bottlenecks per stage; (3, 4, 6, 3) is ResNet-50.
    dtype: computation dtype (e.g. ``jnp.bfloat16`` for mixed precision); parameters stay
      ``param_dtype``. Logits and ``features`` are returned in float32.
    param_dtype: dtype of the parameters.
    norm: BatchNorm factory, see :func:`batch_norm` (pass ``batch_norm(axis_name='data')`` for
      cross-device statistics). A bare ``nn.BatchNorm`` would use Flax's momentum 0.99.
    precision: matmul/convolution precision (``'highest'`` for exact float32 on GPUs/TPUs,
      whose default for float32 is TF32/bf16 passes); None uses JAX's default.
    include_top: whether to build ``fc``; without it the first return value is None.
    zero_init_residual: zero-initialise the last BatchNorm scale of every block.
    stride_in_1x1: ResNet v1 (Keras): stride the first 1x1 convolution of a stage's first
      block instead of its 3x3 (v1.5, torchvision).
    conv_bias: give every convolution a bias (Keras's ResNet50 does; torchvision's does not).
    kernel_init: convolution kernel initialiser (torchvision's Kaiming fan-out by default;
      :data:`keras_conv_init` for Keras's).
  """
  num_classes: int = 1000
  width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = batch_norm()
  precision: Precision = None
  include_top: bool = True
  zero_init_residual: bool = False
  stride_in_1x1: bool = False
  conv_bias: bool = False
  kernel_init: Callable[..., jax.Array] = conv_init

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) images, normalised the way the weights expect (ImageNet mean/std for
        torchvision weights, Keras's ``caffe`` mode for Keras's; see
        :mod:`fwjax.models.imagenet`). Any H and W of at least 32.
      train: batch statistics (and updates to ``batch_stats``, which must then be mutable)
        instead of running averages.

    Returns:
      ``(logits, feats)``: logits (B, num_classes) float32 or None without a top; feats maps
      each of :data:`FEATURE_KEYS` to its activation: 'stem' (after conv1/bn1/relu),
      'maxpool', 'layer1'..'layer4' (B, h, w, C) in ``dtype``, and 'features' (B, C) float32,
      the global average of 'layer4'.
    """
    conv = functools.partial(nn.Conv, use_bias=self.conv_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype, precision=self.precision,
                             kernel_init=self.kernel_init)
    norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    feats = {}
    x = jnp.asarray(x, self.dtype)
    x = conv(self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    feats['stem'] = x
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats['maxpool'] = x
    for i, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(num_blocks, self.width * 2**i, 1 if i == 0 else 2, conv, norm,
                      self.zero_init_residual, self.stride_in_1x1, name=f'layer{i + 1}')(x)
      feats[f'layer{i + 1}'] = x
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats['features'] = features
    if not self.include_top:
      return None, feats
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, name='fc')(features.astype(self.dtype))
    return logits.astype(jnp.float32), feats


def keras_resnet50(**kwargs: Any) -> ResNet50:
  """Keras's ``ResNet50`` (v1) as a :class:`ResNet50`; keyword arguments override attributes.

  Args:
    **kwargs: :class:`ResNet50` attributes, e.g. ``include_top=False`` (Keras's
      ``include_top=False, pooling='avg'``: ``feats['features']``), ``width=8`` for a tiny
      model, ``norm=keras_batch_norm('data')`` for cross-device statistics.

  Returns:
    ``ResNet50(stride_in_1x1=True, conv_bias=True, norm=keras_batch_norm(),
    kernel_init=keras_conv_init, **kwargs)``. With a top, ``fc`` is Keras's ``predictions``
    before its softmax.
  """
  config = dict(stride_in_1x1=True, conv_bias=True, norm=keras_batch_norm(),
                kernel_init=keras_conv_init)
  return ResNet50(**{**config, **kwargs})
