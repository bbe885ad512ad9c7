"""On-device augmentation against scipy.ndimage and exact properties (mirror, identity, keys)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fwjax import augment


def _images(n=6, height=13, width=9, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3)).astype(np.float32)


def test_nothing_asked_returns_the_batch_unchanged():
  images = jnp.asarray(_images())
  out = augment.augment_batch(images, jax.random.key(0), augment.Augment())
  assert out is images


def test_mirror_alone_is_exact():
  images = _images(n=32)
  out = np.asarray(augment.augment_batch(jnp.asarray(images), jax.random.key(1),
                                         augment.Augment(flip=True)))
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  unchanged = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(m or u for m, u in zip(mirrored, unchanged))
  assert 4 < sum(mirrored) < 28  # both outcomes occur, about half each


@pytest.mark.parametrize('sign,degrees,shift_y,shift_x', [
    (1.0, 7.0, 0.0, 0.0), (-1.0, -4.0, 0.1, -0.05), (1.0, 0.0, -0.2, 0.3), (-1.0, 180.0, 0, 0)])
def test_transform_matches_scipy_affine_transform(sign, degrees, shift_y, shift_x):
  image = _images(n=1, height=21, width=11, seed=2)[0]
  params = jnp.asarray([sign, math.radians(degrees), shift_y, shift_x], jnp.float32)
  got = np.asarray(augment.transform(jnp.asarray(image), params))
  # scipy maps output o to input M o + offset; the same map written out independently.
  h, w = image.shape[:2]
  c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  matrix = np.array([[c, -s], [sign * s, sign * c]])
  offset = centre - matrix @ (centre + np.array([shift_y * h, shift_x * w]))
  for ch in range(3):
    want = ndimage.affine_transform(image[..., ch].astype(np.float64), matrix, offset, order=1,
                                    mode='nearest')
    np.testing.assert_allclose(got[..., ch], want, atol=2e-3, err_msg=f'channel {ch}')


def test_rotation_by_half_turn_is_a_point_mirror():
  image = _images(n=1, height=12, width=8, seed=3)[0]
  params = jnp.asarray([1.0, math.pi, 0.0, 0.0])
  got = np.asarray(augment.transform(jnp.asarray(image), params))
  np.testing.assert_allclose(got, image[::-1, ::-1], atol=1e-3)


def test_draws_stay_within_their_limits():
  spec = augment.Augment(flip=True, max_rotation=5.0, max_shift=0.1)
  params = np.asarray(jax.vmap(lambda k: augment.draw(k, spec))(
      jax.random.split(jax.random.key(4), 2000)))
  assert set(np.unique(params[:, 0])) == {-1.0, 1.0}
  assert np.abs(params[:, 1]).max() <= math.radians(5.0) + 1e-7
  assert np.abs(params[:, 1]).max() > math.radians(4.5)
  assert np.abs(params[:, 2:]).max() <= 0.1 + 1e-7
  no_flip = np.asarray(augment.draw(jax.random.key(5), augment.Augment(max_shift=0.1)))
  assert no_flip[0] == 1.0


def test_each_image_is_keyed_by_its_global_index():
  """A batch split in two with offsets gives the whole batch's result (any device count)."""
  spec = augment.Augment(flip=True, max_rotation=10.0, max_shift=0.1)
  images, key = jnp.asarray(_images(n=8)), jax.random.key(6)
  whole = augment.augment_batch(images, key, spec)
  halves = [augment.augment_batch(images[i:i + 4], key, spec, offset=i) for i in (0, 4)]
  np.testing.assert_array_equal(np.asarray(whole), np.concatenate(halves))
  assert not np.array_equal(np.asarray(whole), np.asarray(images))


@pytest.mark.parametrize('kwargs,match', [({'max_rotation': -1.0}, 'max_rotation'),
                                          ({'max_shift': 1.5}, 'max_shift')])
def test_bad_settings_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    augment.Augment(**kwargs)
