"""The thesis's comparison: runs in the store, repeats re-timed, tables equal to hand sums from
the ranking CSVs, figures drawn, restarts skip, untrained classes matched."""

import csv
import dataclasses
import json
import pathlib

import numpy as np
import pytest

from fwjax import store as store_lib
from fwjax.similarity import compare, compare_figures, compare_tables
from fwjax.similarity import features as features_lib
from fwjax.similarity.config import SimilarityConfig

ARCHS = ('vgg16', 'keras_resnet50')
METRICS = ('cosine', 'euclidean')
REFS = (1, 2)
REPEATS = 2


@pytest.fixture(scope='module')
def comparison(tmp_path_factory):
  out = tmp_path_factory.mktemp('compare')
  base = SimilarityConfig(out_dir=str(out), synthetic=8, synthetic_probes_per_model=2,
                          num_references=REFS, random_width=8, metrics=METRICS, height=64,
                          width=32, batch_size=8, html_top=2, precision_at=(2, 5),
                          progress=False, name='cmp')
  built = []

  class CountingExtractor(features_lib.Extractor):
    def __init__(self, *args, **kwargs):
      built.append(args[0].identity)
      super().__init__(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(features_lib, 'Extractor', CountingExtractor)
    outcome = compare.run_comparison(base, ARCHS, REPEATS, log=lambda _: None)
  jobs = compare.comparison_jobs(base, ARCHS, repeats=REPEATS)
  return base, jobs, outcome, built


def test_every_row_is_in_the_store(comparison):
  _, jobs, outcome, _ = comparison
  assert len(outcome['done']) == len(ARCHS) * REPEATS and not outcome['failed']
  rows = store_lib.ResultsStore(jobs[0].config.results_db).runs('similarity', 'complete')
  want = {f'cmp_{a}_rep{r}:{m}:R{n}' for a in ARCHS for r in range(REPEATS) for m in METRICS
          for n in REFS}
  assert sorted(row['name'] for row in rows) == sorted(want)
  runs, missing = compare.read_comparison(jobs)
  assert not missing and len(runs) == len(want)
  assert {run.label for run in runs} == {f'{a} (random)' for a in ARCHS}


def test_each_repeat_extracts_and_compiles_again(comparison):
  _, jobs, _, built = comparison
  # One extractor compiled per job: a repeat does not reuse the previous one's program.
  assert len(built) == len(jobs)
  runs, _ = compare.read_comparison(jobs)
  for run in runs:
    extraction = run.timings['feature_extraction']
    assert extraction['images_from_cache'] == 0 and extraction['images_extracted'] == 8 + 16
    assert set(run.timings) == {'model_build', 'feature_extraction', 'distance'}


def _hand_scores(folder: pathlib.Path, k: int) -> tuple[float, float]:
  """Mean AUIRC (mean rank of the relevant items / N) and precision@k from ranking CSVs."""
  auircs, precisions = [], []
  for path in sorted(folder.glob('*.csv')):
    with open(path) as f:
      relevant = [int(row['relevant']) for row in csv.DictReader(f)]
    ranks = [i + 1 for i, rel in enumerate(relevant) if rel]
    auircs.append(sum(ranks) / len(ranks) / len(relevant))
    precisions.append(sum(relevant[:k]) / k)
  return float(np.mean(auircs)), float(np.mean(precisions))


def test_summary_table_equals_hand_sums_of_the_rankings(comparison):
  base, jobs, _, _ = comparison
  runs, _ = compare.read_comparison(jobs)
  table = compare_tables.summary_table(runs, 2)
  assert len(table.rows) == len(ARCHS) * len(METRICS) * len(REFS)
  col = {name: i for i, name in enumerate(table.header)}
  for row in table.rows:
    arch = row[0].split(' ')[0]
    folder = pathlib.Path(base.out_dir) / arch / 'rep0'
    auirc, precision = _hand_scores(folder / f'R{row[2]}' / row[1], 2)
    np.testing.assert_allclose(row[col['AUIRC']], auirc, rtol=1e-9)
    np.testing.assert_allclose(row[col['precision@2']], precision, rtol=1e-9)
    summary = json.loads((folder / 'summary.json').read_text())
    entry, = [e for e in summary['results']
              if (e['metric'], e['num_references']) == (row[1], row[2])]
    np.testing.assert_allclose(row[col['AUIRC']], entry['auirc'], rtol=1e-9)
    # Timings: mean and sd over the repeats' stored values.
    builds = [json.loads((pathlib.Path(base.out_dir) / arch / f'rep{r}' / 'summary.json')
                         .read_text())['timings']['model_build']['seconds']
              for r in range(REPEATS)]
    np.testing.assert_allclose(row[col['build s']], np.mean(builds), rtol=1e-6)
    np.testing.assert_allclose(row[col['build sd']], np.std(builds, ddof=1), rtol=1e-6)


def test_class_tables_group_queries_by_their_stored_class(comparison):
  _, jobs, _, _ = comparison
  runs, _ = compare.read_comparison(jobs)
  chosen = compare.score_runs(runs)
  label = 'vgg16 (random)'
  mine = [run for (name, _, _), run in chosen.items() if name == label]
  by_class = {}
  for run in mine:
    for query, scores in run.scores.items():
      by_class.setdefault(run.classes[query], []).append(scores['auirc'])
  best = sorted(by_class, key=lambda c: (np.mean(by_class[c]), c))[:5]
  table = compare_tables.best_classes_table(runs)
  rows = [row for row in table.rows if row[0] == label]
  assert [row[2] for row in rows] == best
  np.testing.assert_allclose([row[3] for row in rows], [np.mean(by_class[c]) for c in best])
  untrained = compare_tables.untrained_table(runs, ['3'], 2)
  cell, = [row for row in untrained.rows if row[:3] == [label, 'cosine', '3']]
  want = [run.scores[q]['auirc'] for (name, m, _), run in chosen.items()
          if (name, m) == (label, 'cosine') for q in run.scores if run.classes[q] == '3']
  assert cell[5] == len(want) == 3  # two single probes and one pair
  np.testing.assert_allclose(cell[3], np.mean(want))


def test_figures_and_tables_are_written(comparison, assert_picture):
  _, jobs, _, _ = comparison
  paths = compare_figures.comparison_report(jobs, untrained_classes=['3', '7'])
  names = {p.name for p in paths}
  assert {'auirc_boxplots.png', 'precision_at_2_boxplots.png', 'auirc_vs_time.png',
          'timings.png', 'summary.md', 'summary.csv', 'best_classes.csv',
          'untrained_classes.md'} <= names
  for path in paths:
    assert path.parent.name == 'comparison' and path.stat().st_size > 0
    if path.suffix == '.png':
      assert_picture(path)


def test_a_restart_skips_completed_jobs(comparison):
  base, jobs, _, _ = comparison
  store = store_lib.ResultsStore(jobs[0].config.results_db)
  before = len(store.runs('similarity'))
  started = []
  outcome = compare.run_comparison(base, ARCHS, REPEATS + 1, run=started.append,
                                   log=lambda _: None)
  assert len(outcome['skipped']) == len(ARCHS) * REPEATS
  assert [c.name for c in started] == [f'cmp_{a}_rep{REPEATS}' for a in ARCHS]
  assert len(store.runs('similarity')) == before


def test_untrained_classes_by_name_against_a_class_index(tmp_path):
  index = {'0': ['n01', 'great_white_shark'], '1': ['n02', 'Running shoe'],
           '2': ['n03', 'sandal']}
  path = tmp_path / 'index.json'
  path.write_text(json.dumps(index))
  names = compare.imagenet_class_names(path)
  classes = ['Great White-Shark', 'running_shoe', 'sandals', 'wellington boot']
  assert compare.untrained_classes(classes, imagenet_names=names) == ['sandals',
                                                                       'wellington boot']
  assert compare.untrained_classes(classes, listed=['sandals']) == ['sandals']
  with pytest.raises(ValueError, match='--untrained_classes: clog'):
    compare.untrained_classes(classes, listed=['clog'])
  with pytest.raises(ValueError, match='give one of'):
    compare.untrained_classes(classes)
  (tmp_path / 'bad.json').write_text('["tench"]')
  with pytest.raises(ValueError, match='--imagenet_classes'):
    compare.imagenet_class_names(tmp_path / 'bad.json')


def test_weights_flag_and_labels(tmp_path):
  weights_file = tmp_path / 'vgg16_notop.h5'
  weights_file.write_bytes(b'')
  weights = compare.parse_weights([f'vgg16={weights_file}'], ARCHS)
  assert weights == {'vgg16': str(weights_file)}
  base = SimilarityConfig(out_dir=str(tmp_path), synthetic=8)
  jobs = compare.comparison_jobs(base, ARCHS, repeats=1, weights=weights)
  assert [j.label for j in jobs] == ['vgg16', 'keras_resnet50 (random)']
  assert jobs[0].config.weights == str(weights_file) and jobs[1].config.weights is None
  for bad, match in (('vgg16', 'not ARCH=PATH'), ('xception=a.h5', 'not one of --archs'),
                     ('vgg16=missing.h5', 'no such file')):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      compare.parse_weights([bad], ARCHS)
  with pytest.raises(ValueError, match='--archs: unknown'):
    compare.comparison_jobs(base, ['alexnet'], repeats=1)
  with pytest.raises(ValueError, match='--repeats=0'):
    compare.comparison_jobs(dataclasses.replace(base), ARCHS, repeats=0)
