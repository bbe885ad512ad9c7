"""Tests for fwjax.similarity.report: self-contained HTML pages and the CMC / inverse-recall plots."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from fwjax import metrics
from fwjax.similarity import report as retrieval_report


def _image(path, shape, value):
  Image.fromarray(np.full(shape, value, np.uint8), 'L').save(path)
  return path


def test_thumbnail_keeps_aspect_and_decodes(tmp_path):
  path = _image(tmp_path / 'tall.png', (600, 150), 77)
  thumb = Image.open(io.BytesIO(base64.b64decode(retrieval_report.thumbnail_png(path, 192))))
  assert thumb.size == (48, 192)
  assert np.asarray(thumb).max() == 77


def test_thumbnail_of_unreadable_file_is_none(tmp_path):
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  assert retrieval_report.thumbnail_png(tmp_path / 'bad.png') is None


def test_query_page_contains_every_thumbnail_distance_and_skipped(tmp_path):
  ref = _image(tmp_path / 'ref.png', (40, 20), 10)
  results = [_image(tmp_path / f'r{i}.png', (30, 30), 20 * i) for i in range(3)]
  (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 truncated')
  page = retrieval_report.query_page(
      tmp_path / 'out' / 'q1.html', query_id='q<1>', references=[ref], results=results,
      distances=[0.125, 0.5, 2.0], metric='cosine', relevant=[False, True, False],
      scores={'precision@1': 0.0}, skipped=[(str(tmp_path / 'broken.jpg'), 'truncated JPEG')])
  text = page.read_text()
  embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
  assert len(embedded) == 4  # the reference and the three results, inline
  decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(e)))) for e in embedded]
  assert [int(d.max()) for d in decoded] == [10, 0, 20, 40]  # reference first, then rank order
  for distance in ('0.125', '0.5', '2'):
    assert f'cosine {distance}' in text
  assert text.count('class="relevant"') == 1
  assert 'q&lt;1&gt;' in text and 'q<1>' not in text  # names are escaped
  assert 'broken.jpg' in text and 'truncated JPEG' in text
  assert 'http' not in text  # nothing to fetch: the page stands alone


def test_query_page_rejects_mismatched_lengths(tmp_path):
  with pytest.raises(ValueError, match='2 results, 1 distances'):
    retrieval_report.query_page(tmp_path / 'q.html', query_id='q', references=[],
                                results=['a', 'b'], distances=[1.0], metric='euclidean')


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
