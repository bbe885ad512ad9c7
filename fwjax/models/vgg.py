"""VGG16 and VGG19 in Flax with Keras's exact layout (``keras.applications.VGG16``/``VGG19``).

Convolutions are named as Keras names its layers (``block{b}_conv{i}``), so a Keras weights file
maps onto this module one layer to one module (see
:func:`fwjax.models.keras_names.vgg_layers`). Conventions that matter for Keras weights:

* 3x3 convolutions, stride 1, TensorFlow ``'same'`` padding (one pixel on every side), with
  bias, followed by ReLU.
* 2x2/2 max-pools with ``'valid'`` padding after every block: an odd size loses its last row
  or column (Keras's VGG16/VGG19). HED (:mod:`fwjax.models.hed`) was trained with ``'same'``
  pools instead, which keep it (``ceil(n/2)``, padding one row or column after); the two agree
  on even sizes. ``pool_padding`` chooses.
* ``include_top=False, pooling='avg'`` in Keras is the global average of ``block5_pool`` (the
  pooled map, not ``block5_conv3``): that is ``feats['features']`` here.

Keras's classifier top (``flatten``, ``fc1``, ``fc2``, ``predictions``) is not implemented: it
only fits 224x224 inputs and the similarity bodies use the pooled features.

Example:
  >>> model = VGG(depth=16)
  >>> variables = fwjax.models.pretrained.load_keras('vgg16_notop.h5', 'vgg16')
  >>> _, feats = model.apply(variables, fwjax.models.imagenet.caffe(images), train=False)
  >>> feats['features'].shape  # (B, 512)
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Precision = jax.lax.Precision | str | None

FEATURE_KEYS = ('block1', 'block2', 'block3', 'block4', 'block5', 'features')
"""Keys of the feature dict every VGG forward pass returns, in network order."""

CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
"""Convolutions in each of the five blocks, per depth."""

# Keras's Conv2D defaults: Glorot-uniform kernels, zero biases.
keras_conv_init = nn.initializers.glorot_uniform()


class VGG(nn.Module):
  """VGG16/VGG19 body (no classifier top), returning named feature maps.

  Parameter tree (``params``)::

    block{b}_conv{i}/{kernel,bias}      b = 1..5, i = 1..CONVS_PER_BLOCK[depth][b - 1]

  Attributes:
    depth: 16 or 19.
    width: channels of block 1 (64 for the real network; 8 makes a tiny test model with the
      same structure). Blocks use ``width * (1, 2, 4, 8, 8)``.
    pool_padding: ``'VALID'`` (Keras VGG16/VGG19) or ``'SAME'`` (HED's pools, TensorFlow's
      convention: ``ceil(n/2)`` outputs, the missing row or column padded after).
    dtype: computation dtype; parameters stay ``param_dtype``. ``features`` is float32.
    param_dtype: dtype of the parameters.
    precision: convolution precision (``'highest'`` for exact float32 on GPUs/TPUs); None uses
      JAX's default.
  """
  depth: int = 16
  width: int = 64
  pool_padding: str = 'VALID'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: (B, H, W, 3) images preprocessed as the weights expect (Keras's ``caffe`` mode for
        ImageNet and HED weights: BGR, mean subtracted, 0..255). Any H and W of at least 32.
      train: unused (VGG has no BatchNorm or dropout without its top); kept so every body is
        called the same way.

    Returns:
      ``(None, feats)``: feats maps each of :data:`FEATURE_KEYS` to its activation:
      'block1'..'block5' the last convolution of each block after ReLU and before its pool,
      (B, h, w, C) in ``dtype``, and 'features' (B, C) float32, the global average of the
      pooled block-5 map.

    Raises:
      ValueError: ``depth`` is not 16 or 19, or ``pool_padding`` is not 'VALID' or 'SAME'.
    """
    del train
    if self.depth not in CONVS_PER_BLOCK:
      raise ValueError(f'VGG depth must be one of {sorted(CONVS_PER_BLOCK)}, got {self.depth}')
    if self.pool_padding not in ('VALID', 'SAME'):
      raise ValueError(f"pool_padding must be 'VALID' or 'SAME', got {self.pool_padding!r}")
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             precision=self.precision, kernel_init=keras_conv_init)
    feats = {}
    x = jnp.asarray(x, self.dtype)
    for b, num_convs in enumerate(CONVS_PER_BLOCK[self.depth]):
      if b > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=self.pool_padding)
      channels = self.width * 2**min(b, 3)
      for i in range(num_convs):
        x = nn.relu(conv(channels, name=f'block{b + 1}_conv{i + 1}')(x))
      feats[f'block{b + 1}'] = x
    # lax's 'SAME' for windows is TensorFlow's (total//2 before, the rest after; -inf padding
    # for max), so it is HED's pool exactly.
    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=self.pool_padding)
    feats['features'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return None, feats


def vgg16(**kwargs: Any) -> VGG:
  """Keras's VGG16 body; keyword arguments set :class:`VGG` attributes."""
  return VGG(depth=16, **kwargs)


def vgg19(**kwargs: Any) -> VGG:
  """Keras's VGG19 body; keyword arguments set :class:`VGG` attributes."""
  return VGG(depth=19, **kwargs)
