"""The main job end to end on a tiny synthetic set: every output exists and is well formed."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import job as descriptor_job
from fwjax import descriptors
from fwjax import store as store_lib

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]


def _config(tmp_path, **kwargs):
  fields = dict(out_dir=str(tmp_path / 'run'), synthetic=40, valid_fraction=0.3, height=64,
                width=32, composition='B-H-N', preprocess='cbn_1', epochs_phase1=1,
                epochs_phase2=1, phase1_lr=1e-2, phase2_lrs=(1e-3, 1e-2), batch_size=8,
                width_multiplier=0.125, stage_sizes=(1, 1, 1, 1), num_gradcam=2, progress=False,
                cache_dir=str(tmp_path / 'cache'))
  fields.update(kwargs)
  return descriptor_config.DescriptorConfig(**fields)


def test_tiny_run_writes_every_output(tmp_path, assert_picture):
  # With augmentation on, so the on-device transforms run inside the real job too.
  config = _config(tmp_path, augment_flip=True, augment_rotation=5.0, augment_shift=0.05)
  summary = descriptor_job.run_descriptor(config)
  out = tmp_path / 'run'
  on_disk = json.loads((out / 'summary.json').read_text())  # strict JSON: NaN written as null
  assert set(on_disk['per_label_ap']) == set(descriptors.CODES)
  for value in on_disk['per_label_ap'].values():
    assert value is None or 0 <= value <= 1
  assert 0 <= on_disk['macro_prauc'] <= 1 and 0 < on_disk['prevalence_baseline'] < 1
  assert on_disk['macro_prauc'] == pytest.approx(summary['macro_prauc'])
  # The macro mean is over the labels with validation positives, as the table says.
  defined = [v for v in on_disk['per_label_ap'].values() if v is not None]
  assert on_disk['macro_prauc'] == pytest.approx(sum(defined) / len(defined))

  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2] and [r['phase'] for r in records] == [1, 2]
  with open(out / 'per_label_ap.csv') as f:
    assert [row['code'] for row in csv.DictReader(f)] == list(descriptors.CODES)
  # The reported APs are sklearn's AP of the written predictions (an independent computation).
  with open(out / 'predictions.csv') as f:
    predictions = list(csv.DictReader(f))
  truth = np.array([[code in row['labels'].split() for code in descriptors.CODES]
                    for row in predictions])
  scores = np.array([[float(row[code]) for code in descriptors.CODES] for row in predictions])
  expected = {code: average_precision_score(truth[:, i], scores[:, i])
              for i, code in enumerate(descriptors.CODES) if truth[:, i].any()}
  for code, value in expected.items():
    assert on_disk['per_label_ap'][code] == pytest.approx(value, abs=1e-4), code
  macro = sum(expected.values()) / len(expected)
  assert on_disk['macro_prauc'] == pytest.approx(macro, abs=1e-4)
  assert f'| **macro** | | **{on_disk["macro_prauc"]:.4f}** |' in (
      out / 'per_label_ap.md').read_text()
  with open(out / 'confusion.csv') as f:
    rows = list(csv.reader(f))
  assert len(rows) == 18 and all(len(r) == 18 for r in rows)
  assert len(predictions) == summary['num_valid']
  assert all(0 <= float(p['D01']) <= 1 for p in predictions)
  for png in ('confusion.png', 'pr_curves.png', 'data_classes.png', 'data_interpolation.png',
              'data_resolutions.png', *summary['gradcam']):
    assert_picture(out / png, min_size=(32, 32))
  # A Grad-CAM figure for every descriptor with validation positives, and the overview.
  assert sorted(summary['gradcam']) == sorted(
      [f'gradcam/{code}.png' for i, code in enumerate(descriptors.CODES) if truth[:, i].any()]
      + ['gradcam/overview.png'])
  assert (out / 'checkpoints' / 'last').is_dir() and (out / 'checkpoints' / 'best').is_dir()
  assert '--synthetic=40' in (out / 'flags.txt').read_text()
  assert '--augment_rotation=5.0' in (out / 'flags.txt').read_text()

  store = store_lib.ResultsStore(out / 'results.sqlite')
  (run,) = store.runs(kind='descriptor')
  assert run['status'] == 'complete' and run['config_key'] == descriptor_config.config_key(config)
  assert store.completed('descriptor', run['config_key']) == run['run_id']
  assert [k for k, _, _ in store.values(run['run_id'], 'per_label')][::2] == list(descriptors.CODES)
  assert [s for s, n, _ in store.metrics(run['run_id']) if n == 'macro_prauc'] == [1, 2]

  # Run again in the same folder: it resumes the finished run and reports the same result.
  again = descriptor_job.run_descriptor(config)
  assert again['macro_prauc'] == pytest.approx(summary['macro_prauc'])
  assert len(store.runs(kind='descriptor', status='complete')) == 2


def test_bad_configurations_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match='exactly one data source'):
    descriptor_config.validate(_config(tmp_path, synthetic=0))
  with pytest.raises(ValueError, match='--loss'):
    descriptor_config.validate(_config(tmp_path, loss='focal'))
  with pytest.raises(ValueError, match='width_multiplier=1'):
    descriptor_config.validate(_config(tmp_path, stage_sizes=(3, 4, 6, 3),
                                    weights=str(tmp_path / 'config.py')))
  with pytest.raises(ValueError, match='--augment_rotation/--augment_shift: max_shift'):
    descriptor_config.validate(_config(tmp_path, augment_shift=2.0))
  with pytest.raises(ValueError, match='--valid_fraction'):
    descriptor_config.validate(_config(tmp_path, valid_fraction=1.0))


def test_entry_point_requires_out_dir():
  result = subprocess.run([sys.executable, '-m', 'experiments.descriptor', '--synthetic=8'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and 'out_dir' in result.stderr


@pytest.mark.slow
def test_quickstart_learns(tmp_path):
  """The README's main job: quickstart.flags learns clearly above the prevalence baseline."""
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.descriptor',
       '--flagfile=experiments/flags/quickstart.flags', f'--out_dir={tmp_path / "quick"}',
       '--noprogress'], cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'vs prevalence baseline' in result.stdout and 'RANDOM' in result.stdout
  summary = json.loads((tmp_path / 'quick' / 'summary.json').read_text())
  assert summary['macro_prauc'] > summary['prevalence_baseline'] + 0.15
