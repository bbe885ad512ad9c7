"""ImageNet input preprocessing: the one home of the constants and of each network's convention.

Each function takes RGB images (B, H, W, 3), uint8 or float in 0..255, and returns float32 as
the weights expect, with the operations of ``keras.applications.<arch>.preprocess_input`` on a
float32 numpy batch, in the same order. :func:`caffe` is bit for bit Keras's; :func:`tf` and
:func:`torch` can differ in the last bits, because XLA (on CPU at least) divides by a broadcast
constant as a multiplication by its reciprocal:

* :func:`caffe` (VGG16, VGG19, Keras ResNet50; also HED): RGB -> BGR, minus the ImageNet mean
  pixel in BGR order, no scaling (range about -124..152).
* :func:`tf` (Xception, InceptionResNetV2, NASNetLarge): ``x / 127.5 - 1``, range [-1, 1].
* :func:`torch` (torchvision's ResNet-50, and Keras's ``mode='torch'``): ``x / 255``, minus
  the mean, divided by the standard deviation, per RGB channel.

:func:`preprocess_for` gives the function an architecture's weights need
(:data:`fwjax.models.bodies.PREPROCESSING`). The functions use ``jax.numpy``, so they run on
device inside a jitted step, and also accept numpy arrays.

Example:
  >>> x = preprocess_for('vgg16')(images_uint8)  # (B, H, W, 3) float32, BGR, mean-subtracted
"""

from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fwjax.models import bodies

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
"""ImageNet channel means of [0, 1] RGB pixels (torchvision and Keras's ``torch`` mode)."""

IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
"""ImageNet channel standard deviations of [0, 1] RGB pixels."""

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
"""ImageNet mean pixel in BGR order on the 0..255 scale (Keras's ``caffe`` mode)."""

Preprocess = Callable[..., jax.Array]


def _float(images: Any) -> jax.Array:
  return jnp.asarray(images).astype(jnp.float32)


def caffe(images: Any, dtype: Any = jnp.float32) -> jax.Array:
  """Keras's ``caffe`` mode: RGB -> BGR, minus :data:`CAFFE_MEAN_BGR`, on the 0..255 scale.

  Args:
    images: (..., 3) RGB pixels in 0..255, uint8 or float.
    dtype: dtype of the result (computed in float32 first).

  Returns:
    BGR, mean-subtracted pixels.
  """
  return (_float(images)[..., ::-1] - CAFFE_MEAN_BGR).astype(dtype)


def tf(images: Any, dtype: Any = jnp.float32) -> jax.Array:
  """Keras's ``tf`` mode: ``x / 127.5 - 1`` (range [-1, 1]).

  Args:
    images: (..., 3) RGB pixels in 0..255, uint8 or float.
    dtype: dtype of the result (computed in float32 first).

  Returns:
    The scaled pixels, channel order unchanged.
  """
  return (_float(images) / np.float32(127.5) - np.float32(1.0)).astype(dtype)


def torch(images: Any, dtype: Any = jnp.float32) -> jax.Array:
  """torchvision's normalisation (Keras's ``torch`` mode): ``(x / 255 - mean) / std``.

  Args:
    images: (..., 3) RGB pixels in 0..255, uint8 or float.
    dtype: dtype of the result (computed in float32 first).

  Returns:
    The normalised pixels, RGB.
  """
  x = _float(images) / np.float32(255.0)
  return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)


MODES: dict[str, Preprocess] = {'caffe': caffe, 'tf': tf, 'torch': torch}
"""Keras's ``preprocess_input`` modes, by name."""


def preprocess_for(arch: str) -> Preprocess:
  """The preprocessing function the weights of ``arch`` expect.

  Args:
    arch: a name of :data:`fwjax.models.bodies.CONSTRUCTORS` (``'vgg16'``, ``'resnet50'``...).

  Returns:
    :func:`caffe`, :func:`tf` or :func:`torch`: ``fn(images, dtype=float32) -> array``.

  Raises:
    ValueError: an unknown architecture (the message lists the known ones).
  """
  return MODES[bodies.preprocessing_mode(arch)]
