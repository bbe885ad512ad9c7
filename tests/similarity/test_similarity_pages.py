"""The pages a similarity run writes (index.html, a page per query) and its console summary,
checked against the run's own CSV rankings and summary."""

import csv
import hashlib
import pathlib
import urllib.parse

import pytest

from html_tree import parse
from fwjax.similarity import job, report
from fwjax.similarity.config import SimilarityConfig

METRICS = ('cosine', 'euclidean', 'modified')
TOP = 4


def _resolve(href, page):
  parsed = urllib.parse.urlparse(href)
  if parsed.scheme == 'file':
    return pathlib.Path(urllib.parse.unquote(parsed.path))
  assert parsed.scheme == '', href
  return (pathlib.Path(page).parent / urllib.parse.unquote(href)).resolve()


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp('pages') / 'out'
  config = SimilarityConfig(out_dir=str(out), synthetic=6, synthetic_probes_per_model=2,
                            num_references=(1, 2), random_width=8, height=64, width=32,
                            batch_size=8, metrics=METRICS, html_top=TOP, progress=False,
                            name='pages test')
  return out, job.run_similarity(config)


def test_index_lists_every_query_and_links_to_its_page(run):
  out, summary = run
  index = out / 'index.html'
  assert summary['index'] == str(index)
  tree = parse(index.read_text())
  (table,) = tree.iter('table', 'queries')
  header = [th.text() for th in table.iter('th')]
  assert header[-len(METRICS):] == list(METRICS)
  body = [list(tr.iter('td')) for tr in table.iter('tr')][2:]
  expected = [(str(e['num_references']), e['num_queries']) for e in summary['results']
              if e['metric'] == METRICS[0]]
  assert len(body) == sum(n for _, n in expected) == 12 + 6
  linked = set()
  for cells in body:
    r, query = cells[0].text(), cells[2].text()
    (href,) = {a.attrs['href'] for a in cells[2].iter('a')}
    page = _resolve(href, index)
    assert page.is_file() and page.parent == (out / f'R{r}' / 'pages').resolve()
    linked.add(page)
    # The first-match ranks, recounted from the CSV ranking of each metric.
    for metric, cell in zip(METRICS, cells[-len(METRICS):]):
      rows = _read_csv(out / f'R{r}' / metric / f'{query}.csv')
      first = next(int(row['rank']) for row in rows if row['relevant'] == '1')
      assert cell.text() == str(first), (r, query, metric)
    ranks = [int(c.text()) for c in cells[-len(METRICS):]]
    bold = [bool(list(c.iter('b'))) for c in cells[-len(METRICS):]]
    assert bold == [rank == min(ranks) and len(set(ranks)) > 1 for rank in ranks]
    assert len(list(cells[1].iter('img'))) == int(r)
  assert linked == {p.resolve() for p in out.glob('R*/pages/*.html')}


def test_index_header_scores_and_plots(run):
  out, summary = run
  tree = parse((out / 'index.html').read_text())
  facts = {dt.text(): dd.text() for dt, dd in zip(tree.iter('dt'), tree.iter('dd'))}
  assert facts['weights'] == 'random initialisation (seed 0)'
  assert facts['model'].startswith('resnet50, stage features, input 64x32')
  assert facts['metrics'] == ', '.join(METRICS) + ' (several references fused by sum)'
  assert facts['reference counts'] == '1, 2'
  assert facts['features'] == summary['features'] and 'UTC' in facts['written']
  scores = next(tree.iter('table'))
  rows = [[td.text() for td in tr.iter('td')] for tr in scores.iter('tr')][1:]
  assert [(row[0], row[1]) for row in rows] == [
      (e['metric'], str(e['num_references'])) for e in summary['results']]
  columns = [th.text() for th in scores.iter('th')]
  for row, entry in zip(rows, summary['results']):
    for name in ('precision@1', 'inverse_recall@0.5', 'auirc', 'cmc@1'):
      assert float(row[columns.index(name)]) == pytest.approx(entry[name], abs=5e-5)
  plots = {img.attrs['src'] for img in tree.iter('img') if not img.attrs['src'].startswith('data')}
  assert plots == {'cmc.png', 'inverse_recall.png'}
  assert all((out / p).is_file() for p in plots)


def test_query_page_holds_every_metric_with_links_to_the_originals(run):
  out, _ = run
  for page in [out / 'R1' / 'pages' / '00001.html', out / 'R2' / 'pages' / '00001+00002.html']:
    tree = parse(page.read_text())
    (table,) = tree.iter('table', 'results')
    assert [th.text() for th in table.iter('th')] == ['rank', *METRICS]
    body = [list(tr.iter('td')) for tr in table.iter('tr')][1:]
    assert len(body) == TOP
    r = page.parent.parent.name
    for column, metric in enumerate(METRICS, start=1):
      rows = _read_csv(out / r / metric / f'{page.stem}.csv')[:TOP]
      for cells, row in zip(body, rows):
        cell = cells[column]
        (href,) = {a.attrs['href'] for a in cell.iter('a')}
        assert not href.startswith('file:')  # the synthetic set lies inside the run folder
        original = _resolve(href, page)
        assert original.is_file() and original == pathlib.Path(row['path']).resolve()
        (distance,) = [span.text() for span in cell.iter('span', 'distance')]
        assert float(distance) == pytest.approx(float(row[metric]), rel=5e-3)  # >= 3 digits
        assert bool(list(cell.iter('figure', 'relevant'))) == (row['relevant'] == '1')
    for ref in tree.iter('section'):
      for a in ref.iter('a'):
        assert _resolve(a.attrs['href'], page).is_file()


def test_console_summary_has_a_line_per_metric_and_reference_count(run):
  out, summary = run
  lines = job.console_summary(summary).splitlines()
  assert lines[0].startswith(summary['features'])
  assert lines[-1] == f'index: {out / "index.html"}'
  assert len(lines) == 2 + len(METRICS) * 2
  for line, entry in zip(lines[1:-1], summary['results']):
    assert line.split()[:2] == [entry['metric'], f'R={entry["num_references"]}:']
    assert f'P@1 {entry["precision@1"]:.3f}' in line
    assert f'IR@0.5 {entry["inverse_recall@0.5"]:.3f}' in line
    assert f'AUIRC {entry["auirc"]:.3f}' in line and f'CMC@1% {entry["cmc@1"]:.3f}' in line


def test_console_summary_of_an_unscored_run():
  summary = {'features': 'f', 'num_items': 3, 'index': 'run/index.html', 'results': [
      {'metric': 'cosine', 'num_references': 1, 'num_queries': 1},
      {'metric': 'manhattan', 'num_references': 1, 'num_queries': 2}]}
  assert job.console_summary(summary).splitlines() == [
      'f: 3 items', '  cosine    R=1: 1 query, not scored (no ground truth)',
      '  manhattan R=1: 2 queries, not scored (no ground truth)', 'index: run/index.html']


def test_weights_are_named_with_their_sha256(tmp_path):
  weights = tmp_path / 'body.pth'
  weights.write_bytes(b'not really weights')
  config = SimilarityConfig(out_dir=str(tmp_path), weights=str(weights), seed=3)
  digest = hashlib.sha256(b'not really weights').hexdigest()
  assert report.weights_text(config) == f'body.pth (SHA-256 {digest})'
  config.weights = None
  assert report.weights_text(config) == 'random initialisation (seed 3)'


def test_mcncc_run_writes_an_index_and_pages_with_its_one_metric(tmp_path):
  config = SimilarityConfig(out_dir=str(tmp_path / 'out'), synthetic=4,
                            synthetic_probes_per_model=1, random_width=8, arch='vgg16',
                            stage='block3', matcher='mcncc', match_scale=0.5, batch_size=4,
                            progress=False, html_top=3)
  summary = job.run_similarity(config)
  index = tmp_path / 'out' / 'index.html'
  tree = parse(index.read_text())
  (table,) = tree.iter('table', 'queries')
  assert [th.text() for th in table.iter('th')][-1] == 'mcncc'
  pages = sorted((tmp_path / 'out' / 'R1' / 'pages').glob('*.html'))
  assert len(pages) == 4 == len(list(table.iter('tr'))) - 2
  (results,) = parse(pages[0].read_text()).iter('table', 'results')
  assert [th.text() for th in results.iter('th')] == ['rank', 'mcncc']
  assert 'mcncc R=1: 4 queries scored' in job.console_summary(summary)


def test_index_timings_say_what_came_from_the_feature_cache(run):
  out, summary = run
  # The fixture's run extracted every image; a second run of the same set finds all cached.
  tree = parse((out / 'index.html').read_text())
  rows = [list(tr.iter('td')) for tr in list(tree.iter('table'))[1].iter('tr')]
  timings = {name.text(): value.text() for name, value in rows}
  extracted = summary['timings']['feature_extraction']['images_extracted']
  assert timings['feature extraction'].split(' s for ')[1].startswith(f'{extracted} images (')
  assert set(timings) == {'model build', 'feature extraction', 'distances'}
  assert report._extraction_text({'images_extracted': 0, 'images_from_cache': 7}) == (
      'all 7 images from the feature cache')
