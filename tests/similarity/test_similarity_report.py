"""Tests for fwjax.similarity.report's plots (its pages: test_pages.py, test_similarity_pages)."""


import numpy as np

from fwjax import metrics
from fwjax.similarity import report as retrieval_report


def test_plots_are_pngs(tmp_path, assert_picture):
  percent, fraction = metrics.cmc_curve(np.array([1, 2, 6]), 20)
  cmc = retrieval_report.plot_cmc(tmp_path / 'cmc.png', {'cosine': (percent, fraction)},
                                  published={'paper': {1: 0.1, 5: 0.3}})
  levels = np.linspace(0, 1, 11)
  ir = retrieval_report.plot_inverse_recall(tmp_path / 'ir.png', {'cosine': (levels, levels**2)})
  for path in (cmc, ir):
    pixels = assert_picture(path, min_size=(450, 600))
    assert pixels.shape[:2] == (450, 600)
    # matplotlib's first line colour (C0, tab:blue) draws the cosine curve.
    assert (np.abs(pixels - [31, 119, 180]).max(axis=-1) < 30).mean() > 0.0005
