"""Plots of a descriptor run: the PR curves and the confusion matrix are real pictures."""

import numpy as np

from fwjax import descriptors
from fwjax import metrics
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
  path = plots.confusion_png(matrix, descriptors.CODES, tmp_path / 'confusion.png', title='x')
  pixels = assert_picture(path, min_size=(300, 300))
  # The cells are drawn in the 'Blues' colour map: strongly blue pixels cover part of the image.
  blue = ((pixels[..., 2] - pixels[..., 0]) > 60).mean()
  assert blue > 0.02, 'no confusion-matrix cells drawn'
