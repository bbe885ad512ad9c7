"""The similarity job killed during feature extraction, then re-run: the same features and rankings.

Issue 16's "Prove it" for the feature cache: the entry point is killed (SIGKILL) at a random
batch of the extraction, either between two batches or between writing a batch's rows and
its index lines (the moment that leaves rows nobody points to), then run again with the same
command; its features, rankings, summary and store rows must equal an uninterrupted run's. Then
finding 2 as a user meets it: one row of the cache file is altered and the job run again; it
says which file and row were damaged, extracts that image again and ranks exactly as before.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from fwjax import store as store_lib

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

_RUNNER = r'''
import json, os, signal, sys

point = json.loads(sys.argv[1])
sys.argv = ['experiments.similarity'] + sys.argv[2:]
if point['at']:
  from fwjax.similarity import feature_cache
  calls = [0]
  target = getattr(feature_cache.FeatureCache, point['at'])

  def killing(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == point['batch'] and point['at'] == '_append_index':
      print(f'KILLED before the index of batch {calls[0]}', flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    result = target(self, *args, **kwargs)
    if calls[0] == point['batch']:
      print(f'KILLED after batch {calls[0]}', flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    return result

  setattr(feature_cache.FeatureCache, point['at'], killing)
from absl import app
from experiments import similarity
app.run(similarity.main)
'''


def _run(args, point=None):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run(
      [sys.executable, '-c', _RUNNER, json.dumps(point or {'at': None}), *args], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=900, check=False)


def _outputs(folder):
  """Features, rankings and pages by name, summary and store rows without timings."""
  files = {str(p.relative_to(folder)): p.read_bytes()
           for pattern in ('features/*.npy', 'R*/*/*.csv', 'R*/pages/*.html', '*.csv')
           for p in sorted(folder.glob(pattern))}
  summary = json.loads((folder / 'summary.json').read_text())
  summary.pop('timings')
  for entry in [summary] + summary['results']:
    entry.pop('distance_seconds')
    entry.pop('distance_first_call_seconds')
  store = store_lib.ResultsStore(folder / 'results.sqlite')
  rows = {}  # by name: the latest run of each (metric, reference count)
  for run in store.runs():
    run['summary'].pop('distance_seconds')
    run['summary'].pop('distance_first_call_seconds')
    rows[run['name']] = (
        {k: run[k] for k in ('config_key', 'flags', 'status', 'summary')},
        [m for m in store.metrics(run['run_id']) if not m[1].endswith('seconds')],
        store.values(run['run_id'], 'query'), store.artifacts(run['run_id']))
  return files, summary, rows


def test_killed_during_extraction_then_rerun_ranks_the_same(tmp_path):
  out = tmp_path / 'run'
  args = ['--synthetic=10', '--synthetic_probes_per_model=2', '--num_references=1,2',
          '--random_width=8', '--height=64', '--width=32', '--batch_size=4',
          '--metrics=cosine,modified', '--html_top=4', '--noprogress', f'--out_dir={out}']
  result = _run(args)
  assert result.returncode == 0, result.stderr[-3000:]
  reference = tmp_path / 'reference'
  shutil.copytree(out, reference)
  shutil.rmtree(out)  # its feature cache too: the killed run extracts from scratch

  # 20 probes then 10 references in batches of 4: 8 batches to choose from.
  seed = int(os.environ.get('FWJAX_FAULT_SEED', random.randrange(1 << 16)))
  rng = random.Random(seed)
  point = {'at': rng.choice(['append', '_append_index']), 'batch': rng.randint(1, 7),
           'seed': seed}
  killed = _run(args, point)
  assert killed.returncode == -signal.SIGKILL and 'KILLED' in killed.stdout, (
      point, killed.stderr[-3000:])
  assert not (out / 'summary.json').exists() and not (out / 'flags.txt').exists()
  again = _run(args)
  assert again.returncode == 0, (point, again.stderr[-3000:])
  assert _outputs(out) == _outputs(reference), point
  np.testing.assert_array_equal(np.load(out / 'features' / 'collection.npy'),
                                np.load(reference / 'features' / 'collection.npy'))

  # Finding 2: alter one value of one cached row; the job repairs it and ranks as before.
  (data_path,) = (out / 'feature_cache').glob('*/features.f32')
  row_bytes = 4 * np.load(out / 'features' / 'collection.npy').shape[1]
  data = bytearray(data_path.read_bytes())
  data[row_bytes * 3 + 8] ^= 0x40
  data_path.write_bytes(bytes(data))
  repaired = _run(args)
  assert repaired.returncode == 0, repaired.stderr[-3000:]
  assert f'feature cache {data_path} is damaged' in repaired.stderr
  assert '1 fail their checksum (rows 3)' in repaired.stderr
  assert _outputs(out) == _outputs(reference)
