"""Light training augmentation, on the device: mirror, small rotation, small translation.

A footwear impression keeps its descriptors under a left/right mirror (a left and a right shoe
of one model carry the same pattern), a few degrees of rotation and a small shift (marks are
never perfectly aligned), so these are the augmentations that cannot change a label. Each
image of a batch gets its own transform, drawn from its own key::

    key_i = fold_in(step_key, i)      # i: the image's index in the *global* batch

so the augmented batch is the same whether the batch is split over 1 or N devices, and a
resumed run draws exactly the transforms an uninterrupted one would.

The transform is one affine map about the image centre, sampled bilinearly with
``jax.scipy.ndimage.map_coordinates``; pixels that come from outside the image take the
nearest edge value (an impression's border is background). With a mirror alone every sample
lands on a pixel centre, so a mirrored image is exactly ``image[:, ::-1]``; with no transform the
image is returned unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augment:
  """What the training step may do to an image (the default does nothing).

  Attributes:
    flip: mirror left/right with probability 1/2.
    max_rotation: rotate by an angle drawn uniformly from +-``max_rotation`` degrees.
    max_shift: shift by up to this fraction of the height (vertically) and of the width
      (horizontally), drawn uniformly and independently.
  """
  flip: bool = False
  max_rotation: float = 0.0
  max_shift: float = 0.0

  def __post_init__(self):
    if not 0 <= self.max_rotation <= 180:
      raise ValueError(f'max_rotation must be in [0, 180] degrees, got {self.max_rotation}')
    if not 0 <= self.max_shift < 1:
      raise ValueError(f'max_shift must be a fraction of the image in [0, 1), got '
                       f'{self.max_shift}')

  @property
  def active(self) -> bool:
    return self.flip or self.max_rotation > 0 or self.max_shift > 0


def draw(key: jax.Array, augment: Augment) -> jax.Array:
  """One image's transform parameters: (mirror sign, angle in radians, shift y, shift x).

  Shifts are fractions of the image size.
  """
  k_flip, k_angle, k_shift = jax.random.split(key, 3)
  sign = jnp.where(jax.random.bernoulli(k_flip) & augment.flip, -1.0, 1.0)
  limit = math.radians(augment.max_rotation)
  angle = jax.random.uniform(k_angle, minval=-limit, maxval=limit)
  shift = jax.random.uniform(k_shift, (2,), minval=-augment.max_shift, maxval=augment.max_shift)
  return jnp.stack([sign, angle, shift[0], shift[1]])


def transform(image: jax.Array, params: jax.Array) -> jax.Array:
  """Applies one draw to an (H, W, C) float image: output pixel p samples input ``A p + b``.

  The map takes each output pixel back to where it comes from: undo the shift, rotate by the
  angle about the centre, and mirror the column.
  """
  height, width = image.shape[:2]
  sign, angle, shift_y, shift_x = params[0], params[1], params[2], params[3]
  cy, cx = (height - 1) / 2, (width - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing='ij')
  y = yy - cy - shift_y * height
  x = xx - cx - shift_x * width
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y = cos * y - sin * x + cy
  src_x = sign * (sin * y + cos * x) + cx

  def sample(plane):
    return jax.scipy.ndimage.map_coordinates(plane, [src_y, src_x], order=1, mode='nearest')

  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def augment_batch(images: jax.Array, key: jax.Array, augment: Augment,
                  offset: jax.Array | int = 0) -> jax.Array:
  """Augments a (B, H, W, C) batch, image ``i`` with ``fold_in(key, offset + i)``.

  Args:
    images: float images (any scale: bilinear sampling commutes with a per-channel affine
      normalisation, so augmenting before or after it gives the same result).
    key: the step's augmentation key.
    augment: what to draw.
    offset: global index of the first image (a device's slice of a global batch starts at
      ``device_index * local_batch``).

  Returns:
    The augmented batch, same shape and dtype.
  """
  if not augment.active:
    return images
  index = offset + jnp.arange(images.shape[0])
  params = jax.vmap(lambda i: draw(jax.random.fold_in(key, i), augment))(index)
  out = jax.vmap(transform)(images.astype(jnp.float32), params)
  return out.astype(images.dtype)
