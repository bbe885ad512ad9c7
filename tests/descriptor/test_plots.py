"""Plots: the precision-recall curve against sklearn's; the PNGs are written and readable."""

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sk_curve

from fwjax import descriptors
from fwjax import metrics
from fwjax.descriptor import plots


def test_precision_recall_curve_matches_sklearn():
  rng = np.random.default_rng(0)
  y = rng.random(200) < 0.3
  scores = np.round(rng.random(200), 1)  # many ties
  precision, recall = plots.precision_recall_curve(y, scores)
  sk_precision, sk_recall, _ = sk_curve(y, scores)
  # sklearn lists thresholds from low to high and ends with (precision 1, recall 0).
  np.testing.assert_allclose(precision, sk_precision[::-1])
  np.testing.assert_allclose(recall, sk_recall[::-1])
  # AP is the area under this step curve.
  np.testing.assert_allclose(np.sum(np.diff(recall) * precision[1:]),
                             average_precision_score(y, scores))


def test_pngs_are_written(tmp_path):
  rng = np.random.default_rng(1)
  y = (rng.random((60, 17)) < 0.3).astype(np.uint8)
  y[:, 16] = 0  # a label without positives is drawn as such, not an error
  scores = np.clip(y * 0.3 + rng.random((60, 17)) * 0.7, 0, 1)
  ap = metrics.average_precision(y, scores, average=None)
  path = plots.pr_curves_png(y, scores, descriptors.CODES, tmp_path / 'a' / 'pr.png',
                             average_precision=ap, title='macro PRAUC 0.5')
  assert Image.open(path).format == 'PNG'
  matrix = metrics.multilabel_confusion(y, scores)
  path = plots.confusion_png(matrix, descriptors.CODES, tmp_path / 'confusion.png', title='x')
  image = Image.open(path)
  assert image.format == 'PNG' and min(image.size) > 300
