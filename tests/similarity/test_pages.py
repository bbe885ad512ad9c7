"""Tests for fwjax.similarity.pages: thumbnails, distance digits, links, query and index pages."""

import base64
import io
import itertools
import pathlib
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from html_tree import parse
from fwjax.similarity import pages


def _image(path, shape, value):
  Image.fromarray(np.full(shape, value, np.uint8), 'L').save(path)
  return path


def _decoded(img):
  src = img.attrs['src']
  assert src.startswith('data:image/png;base64,')
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))))


def _resolve(href, page):
  """The file a link of ``page`` points at (relative or file:// URI)."""
  parsed = urllib.parse.urlparse(href)
  if parsed.scheme == 'file':
    return pathlib.Path(urllib.parse.unquote(parsed.path))
  assert parsed.scheme == '' and not href.startswith('/'), href
  return (pathlib.Path(page).parent / urllib.parse.unquote(href)).resolve()


def _from_url(url, kind):
  prefix = f'data:image/{kind};base64,'
  assert url.startswith(prefix), url[:30]
  return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


def test_thumbnail_keeps_aspect_and_decodes(tmp_path):
  path = _image(tmp_path / 'tall.png', (600, 150), 77)
  thumb = _from_url(pages.thumbnail_url(path, 192), 'png')
  assert thumb.size == (48, 192) and thumb.mode == 'L'
  assert np.asarray(thumb).max() == 77
  # A grey picture stored as RGB (many scans are) is shown as the grey PNG it is.
  Image.open(path).convert('RGB').save(tmp_path / 'rgb.png')
  assert _from_url(pages.thumbnail_url(tmp_path / 'rgb.png', 192), 'png').mode == 'L'


def test_thumbnail_of_a_colour_photograph_keeps_its_colour(shared_dir):
  path = shared_dir / 'data' / 'imagenet_samples' / 'cat.jpg'
  thumb = _from_url(pages.thumbnail_url(path, 192), 'jpeg')
  assert thumb.mode == 'RGB' and max(thumb.size) == 192
  with Image.open(path) as original:
    expected = np.asarray(original.convert('RGB').resize(thumb.size, Image.Resampling.BOX),
                          np.float64)
  got = np.asarray(thumb, np.float64)
  assert np.abs(got - expected).mean() < 8  # the photograph, downscaled (JPEG-compressed)
  assert np.abs(got[..., 0] - got[..., 2]).mean() > 10  # in colour, not grey


def test_thumbnail_of_unreadable_file_is_none(tmp_path):
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  assert pages.thumbnail_url(tmp_path / 'bad.png') is None


# --- distance digits ---------------------------------------------------------------------------

def _check_digits(values):
  """The properties the formatting promises, checked pair by pair."""
  texts = pages.format_distances(values)
  digits = pages.significant_digits(values)
  assert 3 <= digits <= 17
  for (a, ta), (b, tb) in itertools.combinations(zip(values, texts), 2):
    if float(a) == float(b):
      assert ta == tb, (a, b, ta, tb)
    else:
      assert ta != tb, (a, b, ta, tb)
  for value, text in zip(values, texts):  # rounding to `digits` significant digits at most
    if np.isfinite(value) and value != 0:
      assert abs(float(text) - value) <= 0.5 * 10.0 ** (np.floor(np.log10(abs(value))) + 1
                                                         - digits) * (1 + 1e-6)
  if digits > 3:  # the fewest: one digit fewer merges two distinct values
    finite = sorted({float(v) for v in values if np.isfinite(v)})
    fewer = {pages.format_number(v, digits - 1) for v in finite}
    assert len(fewer) < len(finite)
  return texts


def test_close_distances_get_enough_digits():
  texts = _check_digits([0.1234567, 0.1234571])
  assert texts == ['0.1234567', '0.1234571']


def test_at_least_three_digits_and_equal_values_print_equal():
  assert _check_digits([0.5, 0.5, 2.0]) == ['0.500', '0.500', '2.00']
  assert pages.significant_digits([1.0]) == 3 and pages.significant_digits([]) == 3


def test_adjacent_doubles_need_seventeen_digits():
  a = 0.1
  b = float(np.nextafter(a, 1.0))
  assert pages.significant_digits([a, b]) == 17
  assert _check_digits([a, b])[0] != _check_digits([a, b])[1]


def test_large_and_tiny_values_and_non_finite():
  assert _check_digits([1704.3, 1800.0]) == ['1704', '1800']  # no 1.7e+03
  assert _check_digits([4.47e-5, 4.48e-5]) == ['0.0000447', '0.0000448']
  texts = _check_digits([0.0, 1e-9, float('inf'), float('nan')])
  assert texts[2:] == ['inf', 'nan'] and float(texts[1]) == pytest.approx(1e-9)


def test_random_lists_with_near_ties_keep_distinct_values_apart():
  rng = np.random.default_rng(0)
  for _ in range(50):
    base = rng.uniform(0, rng.choice([1e-3, 1.0, 1e4]), 6)
    # float32 neighbours and exact repeats, as a ranking's distances have them.
    near = np.nextafter(base[:3].astype(np.float32), np.float32(np.inf)).astype(np.float64)
    values = np.sort(np.concatenate([base, near, base[:2]]).astype(np.float32).astype(float))
    _check_digits(list(values))


# --- links ---------------------------------------------------------------------------------------

def test_links_are_relative_inside_the_run_folder_and_uris_outside(tmp_path):
  run = tmp_path / 'run'
  page = run / 'R1' / 'pages' / 'q.html'
  inside = run / 'set' / 'a b#1.png'
  outside = tmp_path / 'collection' / 'x%y.png'
  for path in (inside, outside):
    path.parent.mkdir(parents=True)
    path.write_bytes(b'x')
  href = pages.file_href(inside, page, run)
  assert href == '../../set/a%20b%231.png'
  assert _resolve(href, page) == inside
  href = pages.file_href(outside, page, run)
  assert href == outside.as_uri() and _resolve(href, page) == outside
  assert pages.file_href(inside, page) == inside.as_uri()  # no run folder given: absolute


# --- query page ----------------------------------------------------------------------------------

def _query_page(tmp_path, **kwargs):
  ref = _image(tmp_path / 'ref.png', (40, 20), 10)
  items = [_image(tmp_path / f'r{i}.png', (30, 30), 20 * i) for i in range(3)]
  (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 truncated')
  results = [
      pages.MetricResults('cosine', items, [0.125, 0.5, 2.0], [False, True, False],
                          {'precision@5': 0.2, 'auirc': 0.3, 'first_match_rank': 2.0}),
      pages.MetricResults('euclidean', items[::-1][:2], [0.1234567, 0.1234571], [False, True],
                          {'precision@5': 0.4, 'auirc': 0.1, 'first_match_rank': 2.0}),
  ]
  page = pages.query_page(
      tmp_path / 'out' / 'R1' / 'pages' / 'q1.html', query_id='q<1>', references=[ref],
      results=results, target='class 7', title='case',
      skipped=[(str(tmp_path / 'broken.jpg'), 'truncated JPEG')], root=tmp_path / 'out',
      index=tmp_path / 'out' / 'index.html', **kwargs)
  return page, ref, items


def test_query_page_shows_every_metric_side_by_side(tmp_path):
  page, ref, items = _query_page(tmp_path)
  text = page.read_text()
  tree = parse(text)
  (table,) = tree.iter('table', 'results')
  rows = list(table.iter('tr'))
  assert [th.text() for th in rows[0].iter('th')] == ['rank', 'cosine', 'euclidean']
  assert len(rows) == 1 + 3  # the deepest list: 3 ranks; euclidean's third cell is empty
  cells = [list(row.iter('td')) for row in rows[1:]]
  assert [c[0].text() for c in cells] == ['1', '2', '3']
  # Column order is rank order: cosine shows r0, r1, r2, euclidean r2, r1.
  assert [int(_decoded(c[1].iter('img').__next__()).max()) for c in cells] == [0, 20, 40]
  assert [int(_decoded(next(c[2].iter('img'))).max()) for c in cells[:2]] == [40, 20]
  assert not list(cells[2][2].iter('img'))
  # Distances: cosine with 3 digits, euclidean with the 7 that tell its two apart.
  assert '#1 · 0.125' in cells[0][1].text() and '#3 · 2.00' in cells[2][1].text()
  assert '0.1234567' in cells[0][2].text() and '0.1234571' in cells[1][2].text()
  # The relevant result of each metric is outlined and marked.
  marked = [(i, j) for i, c in enumerate(cells) for j, cell in enumerate(c)
            if list(cell.iter('figure', 'relevant'))]
  assert marked == [(1, 1), (1, 2)]
  assert all('match' in cells[1][j].text() for j in (1, 2))
  # Every result's thumbnail and name link to its original; the reference is shown.
  for row in cells:
    for cell in row[1:]:
      hrefs = {a.attrs['href'] for a in cell.iter('a')}
      assert len(hrefs) <= 1
      for href in hrefs:
        assert _resolve(href, page).exists()
  names = {pathlib.Path(p).name for p in items}
  assert {a.text() for a in table.iter('a') if a.text()} == names
  scores = next(t for t in tree.iter('table') if 'results' not in t.attrs.get('class', ''))
  assert [th.text() for th in scores.iter('th')] == ['score', 'cosine', 'euclidean']
  # Best in bold: precision is higher-better, AUIRC and the first match's rank lower-better;
  # equal values are not marked.
  shown = [[(td.text(), bool(list(td.iter('b')))) for td in tr.iter('td')]
           for tr in scores.iter('tr')][1:]
  assert shown == [[('precision@5', False), ('0.2000', False), ('0.4000', True)],
                   [('auirc', False), ('0.3000', False), ('0.1000', True)],
                   [('first match rank', False), ('2', False), ('2', False)]]  # a tie
  assert 'class 7' in tree.text() and 'q&lt;1&gt;' in text and 'q<1>' not in text
  assert 'broken.jpg' in text and 'truncated JPEG' in text
  assert 'http' not in text and '<script' not in text  # stands alone, no JavaScript
  (back,) = [a for a in tree.iter('a') if 'all queries' in a.text()]
  assert back.attrs['href'] == '../../index.html'


def test_query_page_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match='cosine: 2 results, 1 distances'):
    pages.MetricResults('cosine', ['a', 'b'], [1.0])
  with pytest.raises(ValueError, match='1 relevance flags'):
    pages.MetricResults('cosine', ['a', 'b'], [1.0, 2.0], [True])


# --- index ---------------------------------------------------------------------------------------

def test_index_lists_every_query_with_ranks_and_links(tmp_path):
  run = tmp_path / 'run'
  ref = _image(tmp_path / 'ref.png', (40, 20), 10)
  rows = []
  for r, query, ranks in ((1, 'a', {'cosine': 3, 'euclidean': 1}),
                          (1, 'b', {'cosine': 2, 'euclidean': 2}),
                          (2, 'a+b', {'cosine': None, 'euclidean': 5})):
    page = run / f'R{r}' / 'pages' / f'{query}.html'
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text('page')
    rows.append(pages.IndexRow(r, query, [ref] * r, 'k', ranks, page))
  index = pages.index_page(
      run / 'index.html', title='run', facts={'weights': 'w.pth (SHA-256 00ff)'},
      scores=[{'metric': 'cosine', 'R': 1, 'precision@1': 0.5, 'auirc': 0.2},
              {'metric': 'euclidean', 'R': 1, 'precision@1': 0.25, 'auirc': 0.4},
              {'metric': 'cosine', 'R': 2, 'precision@1': 0.125, 'auirc': 0.1}],
      compared=['precision@1', 'auirc'], timings={'model build': '1 s'},
      rows=rows, metrics=['cosine', 'euclidean'], links=[('flags.txt', 'flags.txt')])
  tree = parse(index.read_text())
  # The best of each reference count in bold (one row of R=2: nothing to compare).
  scores = next(tree.iter('table'))
  shown = [[(td.text(), bool(list(td.iter('b')))) for td in tr.iter('td')]
           for tr in scores.iter('tr')][1:]
  assert shown == [
      [('cosine', False), ('1', False), ('0.5000', True), ('0.2000', True)],
      [('euclidean', False), ('1', False), ('0.2500', False), ('0.4000', False)],
      [('cosine', False), ('2', False), ('0.1250', False), ('0.1000', False)]]
  (table,) = tree.iter('table', 'queries')
  body = [list(tr.iter('td')) for tr in table.iter('tr')][2:]  # two header rows
  assert [(c[0].text(), c[2].text()) for c in body] == [('1', 'a'), ('1', 'b'), ('2', 'a+b')]
  assert [len(list(c[1].iter('img'))) for c in body] == [1, 1, 2]
  ranks = [[(c.text(), bool(list(c.iter('b')))) for c in row[4:]] for row in body]
  assert ranks == [[('3', False), ('1', True)], [('2', False), ('2', False)],  # a tie
                   [('–', False), ('5', False)]]  # one rank: nothing to compare
  for row, cells in zip(rows, body):
    hrefs = {a.attrs['href'] for a in cells[2].iter('a')}
    assert {_resolve(h, index) for h in hrefs} == {row.page}
  assert 'w.pth (SHA-256 00ff)' in tree.text() and '0.5000' in tree.text()


def test_index_without_ground_truth_says_so(tmp_path):
  page = tmp_path / 'R1' / 'pages' / 'q.html'
  rows = [pages.IndexRow(1, 'q', [], None, {'cosine': None}, page)]
  index = pages.index_page(tmp_path / 'index.html', title='t', facts={}, scores=[],
                           timings={}, rows=rows, metrics=['cosine'])
  tree = parse(index.read_text())
  assert 'No ground truth' in tree.text()
  (table,) = tree.iter('table', 'queries')
  assert [th.text() for th in table.iter('th')] == ['R', 'reference(s)', 'query', 'class']
