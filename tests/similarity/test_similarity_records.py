"""What a similarity run records: every skipped image, told; nothing written when refused.

Issue 16: finding 4 (the console said "9 items" when 4 of 13 files were skipped, listed only
in summary.json), finding 1 for this job (a refused run rewrote flags.txt and the features),
finding 6 (a re-run continues an interrupted run's store rows) and finding 3 (--max_pixels).
"""

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fwjax import store as store_lib
from fwjax.similarity import job as similarity
from fwjax.similarity.config import SimilarityConfig


def _config(tmp_path, **kwargs):
  defaults = dict(out_dir=str(tmp_path / 'out'), random_width=8, height=64, width=32,
                  batch_size=8, metrics=('cosine',), progress=False, html_top=3, k=3)
  defaults.update(kwargs)
  return SimilarityConfig(**defaults)


def _collection(tmp_path, good=9):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'collection'
  folder.mkdir()
  for i in range(good):
    Image.fromarray(rng.integers(0, 256, (72, 36), dtype=np.uint8), 'L').save(folder / f'{i}.png')
  (folder / 'cut.png').write_bytes((folder / '0.png').read_bytes()[:60])
  (folder / 'text.jpg').write_text('not a picture')
  Image.fromarray(rng.integers(0, 256, (72, 36, 3), dtype=np.uint8), 'RGB').save(
      folder / 'colour.png')
  Image.fromarray(np.zeros((400, 300), np.uint8), 'L').save(folder / 'huge.png')
  reference = tmp_path / 'object.png'
  Image.fromarray(rng.integers(0, 256, (72, 36), dtype=np.uint8), 'L').save(reference)
  return folder, reference


def test_skipped_images_are_counted_listed_and_told(tmp_path, capsys):
  folder, reference = _collection(tmp_path)
  config = _config(tmp_path, collection_dir=str(folder), references=(str(reference),),
                   max_pixels=100_000)
  summary = similarity.run_similarity(config)
  out = tmp_path / 'out'
  printed = capsys.readouterr().out
  # (colour.png is ranked: the similarity job feeds colour photographs as RGB.)
  assert f'3 of 13 collection images skipped (unusable), listed in {out / "skipped.csv"}' in (
      printed)
  with open(out / 'skipped.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['path'].rsplit('/', 1)[-1] for r in rows) == [
      'cut.png', 'huge.png', 'text.jpg']
  huge = next(r for r in rows if r['path'].endswith('huge.png'))
  assert 'over the limit of 100,000' in huge['reason'] and '--max_pixels' in huge['reason']
  assert summary['num_items'] == 10 and summary['skipped_images'] == 3
  assert len(json.loads((out / 'summary.json').read_text())['skipped']) == 3
  store = store_lib.ResultsStore(out / 'results.sqlite')
  (run,) = store.runs()
  assert run['summary']['skipped_images'] == 3
  assert store.artifacts(run['run_id'])['skipped'] == str(out / 'skipped.csv')
  # The limit is a flag that works: raised, the large scan is ranked.
  again = similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                            references=(str(reference),), max_pixels=200_000))
  assert again['num_items'] == 11 and again['skipped_images'] == 2


def test_manifest_rows_left_out_are_listed_with_the_rest(tmp_path, capsys):
  _, reference = _collection(tmp_path)
  manifest = tmp_path / 'manifest.csv'
  manifest.write_text('path,labels\n' + ''.join(f'collection/{i}.png,\n' for i in range(4))
                      + 'collection/missing.png,D01\ncollection/text.jpg,\n')
  summary = similarity.run_similarity(_config(tmp_path, manifest=str(manifest),
                                              references=(str(reference),)))
  assert summary['num_items'] == 4
  assert '2 of 6 collection images skipped' in capsys.readouterr().out
  reasons = [s['reason'] for s in summary['skipped']]
  assert reasons[0].startswith('manifest row 6: no such file')
  assert reasons[1].startswith('manifest row 7:') and 'not an image' in reasons[1]


def _snapshot(folder):
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def test_refused_run_changes_no_record(tmp_path):
  folder, reference = _collection(tmp_path, good=5)
  config = _config(tmp_path, collection_dir=str(folder), references=(str(reference),))
  similarity.run_similarity(config)
  out = tmp_path / 'out'
  records = {name: digest for name, digest in _snapshot(out).items()
             if not name.startswith('feature_cache/')}
  with pytest.raises(ValueError, match='--k=50 is larger than the collection'):
    similarity.run_similarity(_config(tmp_path, collection_dir=str(folder),
                                      references=(str(reference),), k=50, seed=7))
  after = {name: digest for name, digest in _snapshot(out).items()
           if not name.startswith('feature_cache/')}
  assert after == records  # flags.txt, features, rankings, summary, store: as they were


def test_rerun_continues_an_interrupted_store_row(tmp_path):
  folder, reference = _collection(tmp_path, good=5)
  config = _config(tmp_path, collection_dir=str(folder), references=(str(reference),))
  similarity.run_similarity(config)
  store = store_lib.ResultsStore(tmp_path / 'out' / 'results.sqlite')
  (first,) = store.runs()
  store.interrupt_run(first['run_id'], 'killed while ranking')  # as a killed run reads
  similarity.run_similarity(config)
  (run,) = store.runs()
  assert run['run_id'] == first['run_id'] and run['status'] == 'complete'
  similarity.run_similarity(config)  # a finished run is not continued: a new row
  assert [r['status'] for r in store.runs()] == ['complete', 'complete']
