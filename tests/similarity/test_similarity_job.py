"""Tests for fwjax.similarity.job: end-to-end runs on tiny collections, checked against independent
recomputation (scipy distances over the saved features, CMC counted from the written CSVs)."""

import csv
import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import distance as scipy_distance

from fwjax import distances
from fwjax import metrics
from fwjax.similarity import job as similarity
from fwjax.similarity.config import SimilarityConfig
from fwjax import store as store_lib

NUM_REFS = 12
# probe -> reference: references 1..4 have two probes (queries with two fused references).
PROBES = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4), (8, 4), (9, 7), (10, 11)]


def _pattern(rng, shape=(72, 36)):
  return rng.integers(0, 256, shape, dtype=np.uint8)


def _fid_layout(root, seed=0):
  """A tiny FID-300-like folder (the fid300_dev layout): probes are noisy references."""
  rng = np.random.default_rng(seed)
  (root / 'references').mkdir(parents=True)
  (root / 'probes').mkdir()
  refs = {}
  for r in range(1, NUM_REFS + 1):
    refs[r] = _pattern(rng)
    Image.fromarray(refs[r], 'L').save(root / 'references' / f'{r:05d}.png')
  rows = ['probe,reference']
  for p, r in PROBES:
    noisy = np.clip(refs[r] + rng.normal(0, 20, refs[r].shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy[4:-4, 2:-2], 'L').save(root / 'probes' / f'{p:05d}.jpg', quality=95)
    rows.append(f'{p:05d}.jpg,{r:05d}.png')
  (root / 'labels.csv').write_text('\n'.join(rows) + '\n')
  return root


def _config(tmp_path, **kwargs):
  defaults = dict(out_dir=str(tmp_path / 'out'), random_width=8, height=64, width=32,
                  batch_size=8, metrics=('cosine', 'euclidean'), progress=False, html_top=5)
  defaults.update(kwargs)
  return SimilarityConfig(**defaults)


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_score_matches_hand_computation():
  relevance = np.zeros((3, 20), bool)
  relevance[0, [0, 5]] = True
  relevance[1, [2]] = True
  relevance[2, [7, 8, 9]] = True
  per_query, aggregated = metrics.retrieval_scores(relevance, precision_at=(1, 5))
  # CMC thresholds ceil(p% of 20) = 1, 1, 2, 3, 4 items; first matches at ranks 1, 3 and 8.
  assert [aggregated[f'cmc@{p}'] for p in (1, 5, 10, 15, 20)] == pytest.approx(
      [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
  np.testing.assert_allclose(per_query['precision@1'], [1, 0, 0])
  np.testing.assert_allclose(per_query['precision@5'], [1 / 5, 1 / 5, 0])
  np.testing.assert_allclose(per_query['first_match_rank'], [1, 3, 8])
  # inverse recall@1: the rank at which all relevant items are seen, over N.
  np.testing.assert_allclose(per_query['inverse_recall@1'], [6 / 20, 3 / 20, 10 / 20])


def test_fid300_layout_end_to_end(tmp_path, assert_picture):
  root = _fid_layout(tmp_path / 'fid')
  config = _config(tmp_path, fid300_dir=str(root), num_references=(1, 2))
  summary = similarity.run_similarity(config)
  out = tmp_path / 'out'
  on_disk = json.loads((out / 'summary.json').read_text())
  assert set(on_disk['cmc']) == {'1', '5', '10', '15', '20'}
  assert on_disk['num_queries'] == len(PROBES) and on_disk['metric'] == 'cosine'
  assert on_disk['num_items'] == NUM_REFS and 'random-seed-0-width-8' in on_disk['features']
  assert [(r['metric'], r['num_references'], r['num_queries']) for r in on_disk['results']] == [
      ('cosine', 1, 10), ('euclidean', 1, 10), ('cosine', 2, 4), ('euclidean', 2, 4)]
  flags_lines = (out / 'flags.txt').read_text().splitlines()
  assert f'--fid300_dir={root}' in flags_lines and '--num_references=1,2' in flags_lines

  # CMC recounted from the ranked lists written for each query.
  first_match = []
  for p, _ in PROBES:
    rows = _read_csv(out / 'R1' / 'cosine' / f'{p:05d}.csv')
    assert [int(r['rank']) for r in rows] == list(range(1, NUM_REFS + 1))
    first_match.append(next(int(r['rank']) for r in rows if r['relevant'] == '1'))
  for percent, value in on_disk['cmc'].items():
    threshold = math.ceil(int(percent) * NUM_REFS / 100)
    assert value == pytest.approx(np.mean(np.array(first_match) <= threshold))
  assert summary['cmc'] == on_disk['cmc']

  # Distances in the CSV against scipy over the saved features; both metric columns present.
  items = np.load(out / 'features' / 'collection.npy')
  refs = np.load(out / 'features' / 'references.npy')
  ref_paths = [r['path'] for r in _read_csv(out / 'references.csv')]
  item_paths = [r['path'] for r in _read_csv(out / 'collection.csv')]
  rows = _read_csv(out / 'R1' / 'cosine' / '00003.csv')
  query = refs[ref_paths.index(str(root / 'probes' / '00003.jpg'))]
  order = [item_paths.index(r['path']) for r in rows]
  for metric in ('cosine', 'euclidean'):
    expected = scipy_distance.cdist(query[None], items[order], metric)[0]
    np.testing.assert_allclose([float(r[metric]) for r in rows], expected, rtol=1e-4, atol=1e-5)
  assert np.all(np.diff([float(r['cosine']) for r in rows]) >= 0)
  # The CSV holds the ranking's own float32 distances, exactly (round-trip text): the job
  # ranks every R = 1 query (the first references, in order) in one call.
  dist, _ = distances.rank(refs[:len(PROBES)], distances.Collection(items), 'cosine')
  row = ref_paths.index(str(root / 'probes' / '00003.jpg'))
  np.testing.assert_array_equal(np.float32([float(r['cosine']) for r in rows]), dist[row])

  # Two fused references ('sum'): the CSV distance is the sum over both probes.
  rows = _read_csv(out / 'R2' / 'euclidean' / '00001+00002.csv')
  pair = refs[[ref_paths.index(str(root / 'probes' / f'0000{i}.jpg')) for i in (1, 2)]]
  order = [item_paths.index(r['path']) for r in rows]
  expected = scipy_distance.cdist(pair, items[order]).sum(axis=0)
  np.testing.assert_allclose([float(r['euclidean']) for r in rows], expected, rtol=1e-4)

  # A page per query with the reference(s) and every metric's top results inline, plots, store.
  page = (out / 'R2' / 'pages' / '00001+00002.html').read_text()
  assert len(re.findall('data:image/png;base64,', page)) == 2 + 2 * 5  # top 5 of both metrics
  assert len(list((out / 'R1' / 'pages').glob('*.html'))) == len(PROBES)
  for plot in ('cmc.png', 'inverse_recall.png'):
    assert_picture(out / plot, min_size=(300, 400))
  store = store_lib.ResultsStore(out / 'results.sqlite')
  runs = store.runs(kind='similarity', status='complete')
  assert [r['name'] for r in runs] == ['similarity:cosine:R1', 'similarity:euclidean:R1',
                                       'similarity:cosine:R2', 'similarity:euclidean:R2']
  assert runs[0]['summary']['cmc'] == on_disk['cmc']
  per_query = store.values(runs[0]['run_id'], 'query')
  assert {key for key, _, _ in per_query} == {f'{p:05d}' for p, _ in PROBES}
  first_rank = {key: value for key, name, value in per_query if name == 'first_match_rank'}
  assert [first_rank[f'{p:05d}'] for p, _ in PROBES] == first_match
  timing_keys = {key for key, _, _ in store.values(runs[0]['run_id'], 'timing')}
  assert {'model_build', 'feature_extraction', 'distance'} <= timing_keys
  # The distance is timed on a second call; the first, compiling call is kept beside it.
  distance = {name for key, name, _ in store.values(runs[0]['run_id'], 'timing')
              if key == 'distance'}
  assert distance == {'seconds', 'first_call_seconds'}

  # A second run finds every feature in the cache.
  again = similarity.run_similarity(config)
  assert again['timings']['feature_extraction']['images_extracted'] == 0
  assert again['cmc'] == on_disk['cmc']


def test_unreadable_collection_image_is_reported_and_left_out(tmp_path):
  rng = np.random.default_rng(1)
  folder = tmp_path / 'collection'
  folder.mkdir()
  for i in range(4):
    Image.fromarray(_pattern(rng), 'L').save(folder / f'{i}.png')
  (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  reference = tmp_path / 'object.png'
  Image.fromarray(_pattern(rng), 'L').save(reference)
  summary = similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                              references=(str(reference),), k=3))
  assert summary['num_items'] == 4 and 'cmc' not in summary  # no ground truth here
  assert [s['path'] for s in summary['skipped']] == [str(folder / 'corrupt.jpg')]
  out = tmp_path / 'out'
  rows = _read_csv(out / 'R1' / 'cosine' / 'object.csv')
  assert len(rows) == 3 and all('corrupt' not in r['path'] for r in rows)
  # Top k only: the other metric's column is computed for those k items; check it with scipy.
  items = np.load(out / 'features' / 'collection.npy')
  query = np.load(out / 'features' / 'references.npy')
  item_paths = [r['path'] for r in _read_csv(out / 'collection.csv')]
  order = [item_paths.index(r['path']) for r in rows]
  cosine = scipy_distance.cdist(query, items, 'cosine')[0]
  assert order == list(np.argsort(cosine)[:3])
  np.testing.assert_allclose([float(r['euclidean']) for r in rows],
                             scipy_distance.cdist(query, items[order])[0], rtol=1e-4)
  assert 'corrupt.jpg' in (out / 'R1' / 'pages' / 'object.html').read_text()


def test_bad_input_fails_clearly(tmp_path):
  rng = np.random.default_rng(2)
  folder = tmp_path / 'collection'
  folder.mkdir()
  for i in range(3):
    Image.fromarray(_pattern(rng), 'L').save(folder / f'{i}.png')
  bad_reference = tmp_path / 'ref.png'
  bad_reference.write_bytes(b'garbage')
  with pytest.raises(similarity.ReferenceImageError, match=re.escape(str(bad_reference))):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(bad_reference),)))
  good = folder / '0.png'
  with pytest.raises(ValueError, match='--k=10 is larger than the collection'):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(good),), k=10))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='collection is empty'):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(empty),
                                      references=(str(good),)))
  with pytest.raises(ValueError, match='valid stages: stem, maxpool, layer1'):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(good),), stage='layer7'))
  with pytest.raises(ValueError, match="unknown metric 'hamming'"):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(good),), metrics=('hamming',)))
  with pytest.raises(FileNotFoundError, match='weights not found'):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(good),), weights=str(tmp_path / 'w.pth')))
  with pytest.raises(ValueError, match='exactly one collection source'):
    similarity.run_similarity(_config(tmp_path))


def _class_folders(root):
  rng = np.random.default_rng(3)
  for c in ('a', 'b', 'c'):
    base = _pattern(rng)
    (root / c).mkdir(parents=True)
    for i in range(5):
      noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(noisy, 'L').save(root / c / f'{i}.png')
  return root


def test_class_folders_draw_held_out_queries(tmp_path):
  """--nokeep_references: per class, R images drawn as references and held out."""
  summary = similarity.run_similarity(_config(
      tmp_path, collection_dir=str(_class_folders(tmp_path / 'col')), num_references=(1, 2),
      metrics=('manhattan',), keep_references=False))
  # Two images per class are held out for every R, so both rank the same 9 images.
  assert summary['num_items'] == 9
  assert [r['num_queries'] for r in summary['results']] == [3, 3]
  held = {r['path'] for r in _read_csv(tmp_path / 'out' / 'references.csv')}
  ranked = {r['path'] for r in _read_csv(tmp_path / 'out' / 'collection.csv')}
  assert len(held) == 6 and not held & ranked
  assert 'references held out of the collection' in summary['collection']


def test_class_folders_keep_the_drawn_references(tmp_path, capsys):
  """The thesis's setting (the default): a query's reference is ranked and found first."""
  summary = similarity.run_similarity(_config(
      tmp_path, collection_dir=str(_class_folders(tmp_path / 'col')), num_references=(1, 2),
      metrics=('manhattan',), precision_at=(1, 5, 50)))
  out = tmp_path / 'out'
  references = {r['path'] for r in _read_csv(out / 'references.csv')}
  ranked = {r['path'] for r in _read_csv(out / 'collection.csv')}
  assert summary['num_items'] == 15 and len(references) == 6 and references <= ranked
  assert 'references kept in the collection' in summary['collection']
  for query in ('a-0', 'b-0', 'c-0'):
    rows = _read_csv(out / 'R1' / 'manhattan' / f'{query}.csv')
    # Rank 1 is an image of the query's class at distance 0: its own reference.
    assert float(rows[0]['manhattan']) == 0 and f'/{query[0]}/' in rows[0]['path']
    assert rows[0]['path'] in references and float(rows[1]['manhattan']) > 0
  single = summary['results'][0]
  assert single['num_references'] == 1 and single['first_match_rank'] == 1
  assert single['precision@1'] == 1 and 'precision@50' not in single
  # precision@50 cannot be scored on 15 items: the run says so.
  note = 'precision@50 left out: collection has 15 items'
  assert note in capsys.readouterr().out
  assert json.loads((out / 'summary.json').read_text())['left_out'] == [note]
