"""Colour photographs for the similarity job: decoding (load_image) and resizing (compose_image)."""

import numpy as np
import pytest
from PIL import Image

from fwjax import resample
from fwjax.data import images


@pytest.fixture(scope='module')
def photos(shared_dir):
  paths = sorted((shared_dir / 'data' / 'imagenet_samples').glob('*.jpg'))
  assert len(paths) == 3
  return paths


def test_colour_photos_decode_to_pillows_rgb(photos):
  for path in photos:
    rgb = images.load_image(path)
    with Image.open(path) as image:
      np.testing.assert_array_equal(rgb, np.asarray(image.convert('RGB')))
    luma = images.load_image(path, colour='luma')
    with Image.open(path) as image:
      np.testing.assert_array_equal(luma, np.asarray(image.convert('RGB').convert('L')))
    with pytest.raises(images.ColourImageError, match='is a colour image'):
      images.load_greyscale(path)


def test_grey_images_stay_one_plane(shared_dir, tmp_path):
  reference = sorted((shared_dir / 'data' / 'fid300_dev' / 'references').iterdir())[0]
  grey = images.load_image(reference)
  assert grey.ndim == 2
  np.testing.assert_array_equal(grey, images.load_greyscale(reference))
  # A grey scan saved as RGB is still one plane: colour mode changes nothing for it.
  Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / 'grey_rgb.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'grey_rgb.png'), grey)


def test_transparency_and_bad_modes_are_still_refused(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[..., 3] = 128
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'half.png')
  with pytest.raises(images.BadImageError, match='transparency'):
    images.load_image(tmp_path / 'half.png')
  rgba[..., 3] = 255  # opaque colour is colour
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'opaque.png')
  assert images.load_image(tmp_path / 'opaque.png').shape == (8, 8, 3)
  with pytest.raises(ValueError, match="colour must be one of \\('rgb', 'luma'\\)"):
    images.load_image(tmp_path / 'opaque.png', colour='grey')


@pytest.mark.parametrize('composition, method', [('B-B-B', Image.BILINEAR),
                                                 ('H-N-B', Image.HAMMING),
                                                 ('N-N-N', Image.NEAREST)])
def test_compose_image_resizes_colour_like_pillow(photos, composition, method):
  rgb = images.load_image(photos[2])
  out = resample.compose_image(rgb, composition, 96, 80, 'squish')
  want = np.asarray(Image.fromarray(rgb).resize((80, 96), method))
  np.testing.assert_array_equal(out, want)


def test_compose_image_letterboxes_colour_per_channel():
  rgb = np.zeros((40, 10, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 120, 250
  out = resample.compose_image(rgb, 'B-B-B', 32, 32, 'pad')
  top, left, inner_h, inner_w = resample.fit_size(40, 10, 32, 32, 'pad')
  assert (inner_h, inner_w) == (32, 8)
  # The letterbox takes each channel's own background, so a flat photo stays flat.
  for channel, level in enumerate((10, 120, 250)):
    assert (out[..., channel] == level).all()


def test_compose_image_of_grey_is_compose():
  grey = np.random.default_rng(0).integers(0, 256, (50, 30), dtype=np.uint8)
  np.testing.assert_array_equal(resample.compose_image(grey, 'B-H-N', 40, 20, 'pad'),
                                resample.compose(grey, 'B-H-N', 40, 20, 'pad'))
