"""Plots of a descriptor run: the PR curves and the confusion matrix are real pictures."""

import numpy as np
import pytest

from fwjax import descriptors, metrics
from fwjax.descriptor import plots


def test_pngs_are_written(tmp_path, assert_picture):
  rng = np.random.default_rng(1)
  y = (rng.random((60, 17)) < 0.3).astype(np.uint8)
  y[:, 16] = 0  # a label without positives is drawn as such, not an error
  scores = np.clip(y * 0.3 + rng.random((60, 17)) * 0.7, 0, 1)
  ap = metrics.average_precision(y, scores, average=None)
  path = plots.pr_curves_png(y, scores, descriptors.CODES, tmp_path / 'a' / 'pr.png',
                             average_precision=ap, title='macro PRAUC 0.5')
  assert_picture(path, min_size=(300, 300))
  matrix = metrics.multilabel_confusion(y, scores)
  path = plots.confusion_png(matrix, descriptors.CODES, tmp_path / 'confusion.png', title='x',
                             positives=y.sum(axis=0))
  pixels = assert_picture(path, min_size=(300, 300))
  # The cells are drawn in the 'Blues' colour map: strongly blue pixels cover part of the image.
  blue = ((pixels[..., 2] - pixels[..., 0]) > 60).mean()
  assert blue > 0.02, 'no confusion-matrix cells drawn'


def test_confusion_colour_and_numbers_show_the_same_values():
  # Paper example plus an unconfused image: D02 unconfused twice; D05 and D06 share one unit.
  matrix = np.zeros((17, 17))
  d02, d04, d05, d06 = (descriptors.INDEX[c] for c in ('D02', 'D04', 'D05', 'D06'))
  matrix[d02, d02] = 2
  matrix[d05, d04] = matrix[d06, d04] = 0.5
  matrix[d05, d05] = 1.5
  shown, unit = plots.confusion_display(matrix)
  assert unit == "% of the row's total"
  assert shown[d05, d04] == pytest.approx(25) and shown[d05, d05] == pytest.approx(75)
  assert shown[d06, d04] == pytest.approx(100) and shown[d02, d02] == pytest.approx(100)
  np.testing.assert_allclose(shown.sum(axis=1)[[d02, d05, d06]], 100)
  assert shown[0].sum() == 0  # an empty row stays empty
  counts, unit = plots.confusion_display(matrix, 'count')
  np.testing.assert_array_equal(counts, matrix)
  assert unit.startswith('images')
  with pytest.raises(ValueError, match='values must be one of'):
    plots.confusion_display(matrix, 'share')
