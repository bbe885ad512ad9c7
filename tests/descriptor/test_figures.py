"""The paper's figures of a descriptor run: Grad-CAM choice and layout, data figures."""

import numpy as np
import pytest
from PIL import Image

from fwjax import descriptors, resample
from fwjax.descriptor import figures


def test_highest_loss_rows_are_the_worst_scored_positives_of_each_descriptor():
  labels = np.zeros((5, 17), np.uint8)
  labels[[0, 2, 3], 0] = 1  # D01 in rows 0, 2, 3
  labels[4, 16] = 1         # D14 in row 4 only
  scores = np.full((5, 17), 0.5)
  scores[[0, 2, 3], 0] = [0.9, 0.2, 0.6]  # losses 0.105, 1.609, 0.511
  scores[1, 0] = 0.0  # a negative scored low is no loss on D01
  chosen = figures.highest_loss_rows(labels, scores, 2)
  assert set(chosen) == {0, 16}
  assert chosen[0].tolist() == [2, 3] and chosen[16].tolist() == [4]
  assert figures.bce_loss(scores)[2, 0] == pytest.approx(-np.log(0.2))
  assert figures.highest_loss_rows(labels, scores, 0) == {}


def _impression(height=96, width=40, seed=0):
  rng = np.random.default_rng(seed)
  image = np.full((height, width), 235, np.uint8)
  for _ in range(12):
    y, x = rng.integers(4, height - 8), rng.integers(4, width - 8)
    image[y:y + 5, x:x + 5] = 20
  return image


def test_gradcam_figure(tmp_path, assert_picture):
  heat = np.zeros((96, 40), np.float32)
  heat[20:50, 10:30] = np.linspace(0, 1, 20)
  panels = [figures.GradcamPanel(_impression(seed=i), heat if i else heat * 0, 'D02-01',
                                 ('D02', 'D02-01', 'D09'), 0.12, 2.1) for i in range(3)]
  path = figures.gradcam_png(panels, tmp_path / 'g' / 'D02-01.png', columns=2,
                             title='D02-01 Target: highest loss\nsecond line')
  pixels = assert_picture(path, min_size=(400, 600))
  # The overlay's colour map is drawn: strongly red pixels (the hot region, the colour bar).
  assert ((pixels[..., 0] - pixels[..., 2]) > 100).mean() > 0.001
  with pytest.raises(ValueError, match='at least one panel'):
    figures.gradcam_png([], tmp_path / 'none.png')


def test_interpolation_figure_shows_the_cached_planes(tmp_path, assert_picture):
  image = _impression(200, 90)
  planes = figures.network_planes(image, 48, 24)
  # The planes are those the cache and fwjax.resample make (Pillow's filters).
  np.testing.assert_array_equal(planes['N'], np.asarray(
      Image.fromarray(image).resize((24, 48), Image.Resampling.NEAREST)))
  composed = resample.compose(image, 'B-H-N', 48, 24)
  np.testing.assert_array_equal(np.stack([planes['B'], planes['H'], planes['N']], -1), composed)
  padded = figures.network_planes(image, 48, 48, 'pad')
  np.testing.assert_array_equal(padded['H'], resample.compose(image, 'H-H-H', 48, 48, 'pad')[..., 0])
  assert_picture(figures.interpolation_png(image, 48, 24, 'B-H-N', tmp_path / 'i.png', title='x'),
                 min_size=(400, 600))
  assert_picture(figures.interpolation_png(image, 48, 48, 'N-B-H', tmp_path / 'p.png',
                                           policy='pad'), min_size=(400, 600))


def test_class_and_resolution_figures(tmp_path, assert_picture):
  rng = np.random.default_rng(0)
  labels = (rng.random((50, 17)) < 0.2).astype(np.uint8)
  assert_picture(figures.class_distribution_png(labels[:40], tmp_path / 'c.png',
                                                valid_labels=labels[40:]), min_size=(500, 700))
  paths = []
  for i, (h, w) in enumerate([(300, 120), (180, 60), (1000, 400)]):
    paths.append(tmp_path / f'{i}.png')
    Image.fromarray(np.zeros((h, w), np.uint8)).save(paths[-1])
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  sizes = figures.image_sizes(paths + [tmp_path / 'bad.png'], workers=2)
  assert sizes.tolist() == [[300, 120], [180, 60], [1000, 400], [0, 0]]
  assert_picture(figures.resolution_distribution_png(sizes, tmp_path / 'r.png',
                                                     network_size=(352, 144)),
                 min_size=(400, 900))
  with pytest.raises(ValueError, match='no image sizes'):
    figures.resolution_distribution_png(sizes[3:], tmp_path / 'none.png')
  assert len(descriptors.CODES) == labels.shape[1]
