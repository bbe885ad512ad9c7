"""Learnable 3 -> 3 channel preprocessing layers placed before the pretrained body.

Budka et al. (2021) compare five front ends (their figure shows the layouts, not the widths):

* ``no_tfm``: identity.
* ``cbn_1``: 1x1 convolution (3 -> 3) + BatchNorm: a learnt per-pixel colour mixing of the three
  interpolation planes (B-H-N ...).
* ``cbn_3``: 3x3 convolution (3 -> 3) + BatchNorm: mixing plus a small spatial filter.
* ``inc``: an Inception block: parallel 1x1, 3x3 and 5x5 convolutions and a 3x3 max-pool followed
  by a 1x1 convolution, each branch ``branch_features`` channels with ReLU, concatenated and
  projected back to 3 channels by a 1x1 convolution + BatchNorm.
* ``inc_d``: the same, with the input densely concatenated (DenseNet style) to the branches
  before the projection, so the projection can pass the original planes straight through.

Branch widths chosen here: 8 channels per branch (32 concatenated; 35 with the dense input).
The layer sees only 3 channels, so wider branches add parameters (cost grows with the 5x5
branch at full input resolution) without obvious benefit; 8 keeps the front end at about 1k
parameters and about 2% of the body's FLOPs (0.9k multiply-adds per pixel against the body's
~41k). Change it with ``branch_features``.

Every layer ends in BatchNorm (except ``no_tfm``) so the body sees inputs with roughly the unit
variance that ImageNet-normalised images have, whatever the learnt mixing.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fwjax.models import resnet

PREPROCESSING = ('no_tfm', 'cbn_1', 'cbn_3', 'inc', 'inc_d')
"""Names of the preprocessing layers, as the paper and the experiment flags spell them."""

ModuleDef = Any


class NoTransform(nn.Module):
  """``no_tfm``: passes the image through unchanged (no parameters)."""
  dtype: Any = jnp.float32
  norm: ModuleDef = resnet.batch_norm()
  precision: resnet.Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return jnp.asarray(x, self.dtype)


class ConvBatchNorm(nn.Module):
  """``cbn_1`` / ``cbn_3``: a ``kernel_size`` convolution 3 -> 3 (no bias) + BatchNorm.

  Attributes:
    kernel_size: 1 for ``cbn_1``, 3 for ``cbn_3`` (padded to keep height and width).
  """
  kernel_size: int
  dtype: Any = jnp.float32
  norm: ModuleDef = resnet.batch_norm()
  precision: resnet.Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pad = self.kernel_size // 2
    x = nn.Conv(x.shape[-1], (self.kernel_size,) * 2, padding=((pad, pad), (pad, pad)),
                use_bias=False, dtype=self.dtype, precision=self.precision, name='conv')(x)
    return self.norm(use_running_average=not train, dtype=self.dtype, name='bn')(x)


class Inception(nn.Module):
  """``inc`` / ``inc_d``: 1x1, 3x3, 5x5 and pool branches -> concat -> 1x1 to 3 -> BatchNorm.

  Attributes:
    dense: also concatenate the input before the projection (``inc_d``).
    branch_features: channels of each branch.
  """
  dense: bool = False
  branch_features: int = 8
  dtype: Any = jnp.float32
  norm: ModuleDef = resnet.batch_norm()
  precision: resnet.Precision = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    conv = functools.partial(nn.Conv, self.branch_features, dtype=self.dtype,
                             precision=self.precision)
    branches = [
        conv((1, 1), name='branch1x1')(x),
        conv((3, 3), padding=((1, 1), (1, 1)), name='branch3x3')(x),
        conv((5, 5), padding=((2, 2), (2, 2)), name='branch5x5')(x),
        conv((1, 1), name='branch_pool')(
            nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))),
    ]
    y = nn.relu(jnp.concatenate(branches, axis=-1))
    if self.dense:
      y = jnp.concatenate([x, y], axis=-1)
    y = nn.Conv(x.shape[-1], (1, 1), use_bias=False, dtype=self.dtype, precision=self.precision,
                name='project')(y)
    return self.norm(use_running_average=not train, dtype=self.dtype, name='bn')(y)


def make_preprocess(name: str, *, dtype: Any = jnp.float32,
                    norm: ModuleDef = resnet.batch_norm(), precision: resnet.Precision = None,
                    branch_features: int = 8, module_name: str | None = 'preprocess'
                    ) -> nn.Module:
  """Builds the preprocessing layer called ``name``.

  Args:
    name: one of :data:`PREPROCESSING`.
    dtype: computation dtype.
    norm: BatchNorm factory (see :func:`fwjax.models.resnet.batch_norm`).
    precision: convolution precision.
    branch_features: channels per Inception branch (``inc``, ``inc_d``).
    module_name: the Flax name of the module (its top-level key in a parent's params).

  Returns:
    A module mapping (B, H, W, 3) to (B, H, W, 3); call it with ``train``.

  Raises:
    ValueError: unknown ``name``.
  """
  common = dict(dtype=dtype, norm=norm, precision=precision, name=module_name)
  if name == 'no_tfm':
    return NoTransform(**common)
  if name in ('cbn_1', 'cbn_3'):
    return ConvBatchNorm(int(name[-1]), **common)
  if name in ('inc', 'inc_d'):
    return Inception(dense=name == 'inc_d', branch_features=branch_features, **common)
  raise ValueError(f'unknown preprocessing {name!r}; expected one of {PREPROCESSING}')
