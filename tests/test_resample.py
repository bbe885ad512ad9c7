"""fwjax.resample against the installed Pillow: zero differing pixels, on every path."""

import numpy as np
import pytest
from PIL import Image

from fwjax import resample

PIL_METHODS = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'hamming': Image.Resampling.HAMMING,
}


def pillow(image, height, width, method):
  return np.asarray(Image.fromarray(image).resize((width, height), PIL_METHODS[method]))


def assert_same(got, image, height, width, method):
  expected = pillow(image, height, width, method)
  differ = int((np.asarray(got) != expected).sum())
  assert got.shape == expected.shape and differ == 0, (
      f'{method} {image.shape} -> {(height, width)}: {differ} pixels differ from Pillow')


def _image(rng, h, w):
  kind = rng.integers(3)
  if kind == 0:
    return rng.integers(0, 256, (h, w), dtype=np.uint8)
  if kind == 1:   # smooth gradients: rounding sits on .5 boundaries more often
    return (np.add.outer(np.arange(h), 2 * np.arange(w)) % 256).astype(np.uint8)
  return np.where(rng.random((h, w)) < 0.2, 0, 255).astype(np.uint8)   # ink on paper


def _shapes(seed, count, max_size):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    yield rng, *map(int, rng.integers(1, max_size, 4))


@pytest.mark.parametrize('method', resample.METHODS)
def test_random_shapes_up_and_down(method):
  for rng, ih, iw, oh, ow in _shapes(hash(method) % 1000, 150, 160):
    image = _image(rng, ih, iw)
    assert_same(resample.resize(image, oh, ow, method), image, oh, ow, method)


@pytest.mark.parametrize('method', resample.METHODS)
@pytest.mark.parametrize('in_shape, out_shape', [
    ((3000, 20), (352, 144)),    # extreme aspect ratio, width upscaled
    ((20, 3000), (352, 144)),
    ((1, 1), (352, 144)),
    ((2, 700), (1, 5)),
    ((352, 144), (352, 60)),     # one axis unchanged: that pass is skipped
    ((500, 144), (352, 144)),
    ((1200, 500), (928, 384)),
    ((401, 799), (224, 224)),
])
def test_extreme_and_unchanged_axes(method, in_shape, out_shape):
  image = _image(np.random.default_rng(sum(in_shape)), *in_shape)
  assert_same(resample.resize(image, *out_shape, method), image, *out_shape, method)


def test_pass_order_rule_matters_and_matches_pillow():
  # Shapes where the two pass orders give different pixels, on both sides of the rule.
  rng = np.random.default_rng(0)
  for (ih, iw, oh), (h_first, v_first) in {(100, 100, 50): (75, 76), (80, 60, 20): (30, 31),
                                           (60, 80, 40): (70, 71)}.items():
    assert not resample.vertical_first(ih, iw, oh, h_first)
    assert resample.vertical_first(ih, iw, oh, v_first)
    for ow in (h_first, v_first):
      image = rng.integers(0, 256, (ih, iw), dtype=np.uint8)
      assert_same(resample.resize(image, oh, ow, 'bilinear'), image, oh, ow, 'bilinear')
  assert not resample.vertical_first(10, 10, 40, 12)   # growing height: horizontal first


@pytest.mark.parametrize('size', [(352, 144), (224, 224), (928, 384)])
def test_real_fid300_reference(shared_dir, size):
  path = sorted((shared_dir / 'data' / 'fid300_dev' / 'references').glob('*.png'))[7]
  image = np.asarray(Image.open(path).convert('L'))
  for method in resample.METHODS:
    assert_same(resample.resize(image, *size, method), image, *size, method)


def _log_size(rng, low, high):
  return int(np.exp(rng.uniform(np.log(low), np.log(high))))


@pytest.mark.parametrize('method', resample.METHODS)
def test_pillow_path_equals_numpy_reference(method):
  # The two host paths agree on their own, whatever Pillow is installed: resize_pillow is what
  # the cache builds with, resize is the reference the device path shares its tables with.
  rng = np.random.default_rng(len(method))
  cases = [((6000, 25), (352, 144)), ((25, 6000), (352, 144)), ((1, 1), (352, 144)),
           ((1, 900), (300, 1)), ((352, 144), (352, 144)), ((3000, 1250), (352, 144))]
  for _ in range(80):
    # Log-uniform sides: ratios from 1000x down to 1000x up per axis, aspect ratios to 1:2000.
    in_h, in_w = _log_size(rng, 1, 2500), _log_size(rng, 1, 2500)
    if in_h * in_w > 1_500_000:
      in_w = max(1, 1_500_000 // in_h)
    cases.append(((in_h, in_w), (_log_size(rng, 1, 1000), _log_size(rng, 1, 1000))))
  scales = set()
  for in_shape, out_shape in cases:
    image = _image(rng, *in_shape)
    expected = resample.resize(image, *out_shape, method)
    got = resample.resize_pillow(image, *out_shape, method)
    differ = int((got != expected).sum()) if got.shape == expected.shape else -1
    assert got.dtype == np.uint8 and differ == 0, (
        f'{method} {in_shape} -> {out_shape}: {differ} pixels differ (-1: shapes differ)')
    scales.update(np.sign(np.subtract(in_shape, out_shape)).tolist())
  assert scales == {-1, 0, 1}   # upscaled, unchanged and downscaled axes were all exercised


@pytest.mark.parametrize('method', resample.METHODS)
def test_device_batch_equals_pillow(method):
  rng = np.random.default_rng(5)
  for ih, iw, oh, ow in [(300, 125, 72, 30), (50, 40, 120, 97), (700, 290, 352, 144),
                         (64, 64, 64, 20), (33, 500, 16, 10)]:
    batch = np.stack([_image(rng, ih, iw) for _ in range(3)])
    got = np.asarray(resample.resize_batch_jax(batch, oh, ow, method))
    for image, out in zip(batch, got):
      assert_same(out, image, oh, ow, method)


def test_compose_stacks_the_named_interpolations():
  image = _image(np.random.default_rng(2), 500, 210)
  out = resample.compose(image, 'B-H-N', 352, 144)
  assert out.shape == (352, 144, 3) and out.dtype == np.uint8
  for channel, method in enumerate(('bilinear', 'hamming', 'nearest')):
    assert_same(out[..., channel], image, 352, 144, method)
  assert len(resample.COMPOSITIONS) == 9
  assert {resample.composition_methods(c) for c in resample.COMPOSITIONS} == {
      tuple(m) for m in [
          ('bilinear',) * 3, ('bilinear', 'hamming', 'nearest'), ('bilinear', 'nearest', 'hamming'),
          ('hamming', 'bilinear', 'nearest'), ('hamming',) * 3, ('hamming', 'nearest', 'bilinear'),
          ('nearest', 'bilinear', 'hamming'), ('nearest', 'hamming', 'bilinear'), ('nearest',) * 3]}


def test_pad_policy_keeps_aspect_ratio_and_fills_with_the_background():
  image = np.full((200, 200), 250, np.uint8)
  image[50:150, 50:150] = 10
  out = resample.compose(image, 'H-H-H', 352, 144, policy='pad')
  top, left, inner_h, inner_w = resample.fit_size(200, 200, 352, 144, 'pad')
  assert (inner_h, inner_w) == (144, 144) and left == 0 and top == (352 - 144) // 2
  assert (out[:top] == 250).all() and (out[top + inner_h:] == 250).all()
  assert_same(out[top:top + inner_h, :, 0], image, 144, 144, 'hamming')


@pytest.mark.parametrize('call, message', [
    (lambda: resample.resize(np.zeros((4, 4), np.uint16), 2, 2, 'nearest'), 'uint8'),
    (lambda: resample.resize(np.zeros((4, 4, 3), np.uint8), 2, 2, 'nearest'), '2-D'),
    (lambda: resample.resize(np.zeros((0, 4), np.uint8), 2, 2, 'nearest'), 'empty'),
    (lambda: resample.resize(np.zeros((4, 4), np.uint8), 0, 2, 'nearest'), 'positive'),
    (lambda: resample.resize(np.zeros((4, 4), np.uint8), 2, 2, 'bicubic'), 'unknown resampling'),
    (lambda: resample.resize_pillow(np.zeros((4, 4), np.uint16), 2, 2, 'nearest'), 'uint8'),
    (lambda: resample.resize_pillow(np.zeros((4, 4), np.uint8), 2, 0, 'hamming'), 'positive'),
    (lambda: resample.resize_pillow(np.zeros((4, 4), np.uint8), 2, 2, 'lanczos'), 'unknown'),
    (lambda: resample.composition_methods('B-X-N'), 'bad channel composition'),
    (lambda: resample.fit_size(4, 4, 2, 2, 'crop'), 'unknown resize policy'),
    (lambda: resample.resize_batch_jax(np.zeros((1, 3000, 4), np.uint8), 2, 4, 'bilinear'),
     'over 128x'),
])
def test_bad_input_gets_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
