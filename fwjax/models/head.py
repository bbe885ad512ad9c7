"""The multilabel head of Budka et al. (2021), fastai's ``create_head`` for a ResNet body.

concat pooling (global max, then global average) -> BatchNorm -> Dropout(0.25) -> Dense(512)
-> ReLU -> BatchNorm -> Dropout(0.5) -> Dense(17); Glorot-uniform kernels (the paper's choice;
fastai's default would be Kaiming), zero biases. Outputs are logits: apply a sigmoid per label.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fwjax.models import resnet

ModuleDef = Any


def concat_pool(x: jax.Array) -> jax.Array:
  """fastai's ``AdaptiveConcatPool2d``: global max then global average over H and W.

  Args:
    x: (B, H, W, C) feature map.

  Returns:
    (B, 2C) float32: ``[max over H,W, mean over H,W]``.
  """
  x = x.astype(jnp.float32)
  return jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)


class MultilabelHead(nn.Module):
  """Concat pooling -> [BN -> Dropout -> Dense -> ReLU] per hidden layer -> BN -> Dropout -> Dense.

  Attributes:
    num_labels: outputs (17 NFRC descriptors).
    hidden: widths of the hidden Dense layers ((512,) in the paper).
    dropout_rates: one rate before each Dense layer, ``len(hidden) + 1`` of them.
    kernel_init: Dense kernel initialiser (Glorot uniform in the paper).
    dtype: computation dtype; logits are returned in float32.
    norm: BatchNorm factory (see :func:`fwjax.models.resnet.batch_norm`).
    precision: matmul precision.

  Parameter names: ``bn{i}``/``fc{i}`` for i = 1..len(hidden)+1 (BatchNorm ``bn*`` so optimizers
  can exempt them from weight decay by name).
  """
  num_labels: int = 17
  hidden: Sequence[int] = (512,)
  dropout_rates: Sequence[float] = (0.25, 0.5)
  kernel_init: Callable[..., jax.Array] = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32
  norm: ModuleDef = resnet.batch_norm()
  precision: resnet.Precision = None

  @nn.compact
  def __call__(self, feature_map: jax.Array, train: bool = False) -> jax.Array:
    """Maps a (B, H, W, C) feature map to (B, num_labels) float32 logits.

    Dropout draws from the ``'dropout'`` RNG stream when ``train`` is True.
    """
    if len(self.dropout_rates) != len(self.hidden) + 1:
      raise ValueError(f'dropout_rates {tuple(self.dropout_rates)} needs one rate per Dense '
                       f'layer: {len(self.hidden) + 1} for hidden={tuple(self.hidden)}')
    x = concat_pool(feature_map)
    widths = tuple(self.hidden) + (self.num_labels,)
    for i, (features, rate) in enumerate(zip(widths, self.dropout_rates), start=1):
      x = self.norm(use_running_average=not train, dtype=self.dtype, name=f'bn{i}')(x)
      x = nn.Dropout(rate, deterministic=not train)(x)
      x = nn.Dense(features, dtype=self.dtype, precision=self.precision,
                   kernel_init=self.kernel_init, name=f'fc{i}')(x)
      if i < len(widths):
        x = nn.relu(x)
    return x.astype(jnp.float32)
