"""The descriptor job as a user runs it, killed and resumed: nothing is lost or changed.

Issue 16's "Prove it": the entry point is killed (SIGKILL, no chance to clean up) after its
first checkpoint, in the middle of a later checkpoint write and in the middle of its report,
resumed each time with the same command, and its summary.json, per-label AP, metrics and
results-store row are compared with an uninterrupted run's, bit for bit (timings aside). The
uninterrupted run also shows findings 4 (skipped images told and recorded) and 9 (the console
shows the job's own lines; library logging goes to a file in the run folder).

Each run is a subprocess: ``_RUNNER`` installs the kill at the chosen point, then calls the
entry point's main exactly as ``python -m experiments.descriptor`` does.
"""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest

from fwjax import store as store_lib
from fwjax.data import manifest as manifest_lib
from fwjax.data import synthetic

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

EPOCHS = (1, 2)  # phase 1, phase 2: three checkpoints

_RUNNER = r'''
import json, os, signal, sys

point = json.loads(sys.argv[1])
sys.argv = ['experiments.descriptor'] + sys.argv[2:]


def die(where):
  print(f'KILLED {where}', flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


if point['at'] == 'after_checkpoint':
  from fwjax.training import checkpoints
  save_last = checkpoints.RunCheckpoints.save_last

  def killing_save_last(self, epoch, state, meta):
    path = save_last(self, epoch, state, meta)
    if epoch == point['epoch']:
      die(f'after checkpoint {epoch}')
    return path

  checkpoints.RunCheckpoints.save_last = killing_save_last
elif point['at'] == 'checkpoint_write':
  # The train state is being written while the progress metadata (JSON) starts: the checkpoint
  # of this epoch is in its temporary folder, not committed.
  import orbax.checkpoint as ocp
  save_fn = ocp.JsonCheckpointHandler._save_fn

  async def killing_save_fn(self, item, directory):
    if f'/last/{point["epoch"]}.orbax-checkpoint-tmp' in str(directory):
      die(f'writing checkpoint {point["epoch"]}')
    return await save_fn(self, item, directory)

  ocp.JsonCheckpointHandler._save_fn = killing_save_fn
elif point['at'] == 'report':
  from fwjax.descriptor import plots, report
  module = plots if point['step'] == 'pr_curves_png' else report
  step = getattr(module, point['step'])

  def killing_step(*args, **kwargs):
    die(f'in the report: {point["step"]}')

  setattr(module, point['step'], killing_step)

from absl import app
from experiments import descriptor
app.run(descriptor.main)
'''


def _run(args, point=None, env=None):
  return subprocess.run(
      [sys.executable, '-c', _RUNNER, json.dumps(point or {'at': None}), *args], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """The data (a manifest with two unusable rows), the flags, and one uninterrupted run."""
  base = tmp_path_factory.mktemp('faults')
  csv_path = synthetic.make_descriptor_set(base / 'data', 40, seed=3, height=128, width=64)
  examples = manifest_lib.read_manifest(csv_path)
  (base / 'data' / 'cut.png').write_bytes(examples[0].path.read_bytes()[:100])
  rows = [[str(e.path.relative_to(base / 'data')), ';'.join(e.labels)] for e in examples]
  rows[7:7] = [['cut.png', 'D01'], ['absent.png', 'D04']]
  with open(csv_path, 'w', newline='') as f:
    csv.writer(f).writerows([['path', 'labels']] + rows)
  out = base / 'run'
  args = [f'--manifest={csv_path}', '--valid_fraction=0.3', '--height=64', '--width=32',
          '--preprocess=cbn_1', f'--epochs_phase1={EPOCHS[0]}', f'--epochs_phase2={EPOCHS[1]}',
          '--phase1_lr=1e-2', '--phase2_lrs=1e-3,1e-2', '--batch_size=8',
          '--width_multiplier=0.125', '--stage_sizes=1,1,1,1', '--num_gradcam=2',
          '--noprogress', f'--cache_dir={base / "cache"}', f'--out_dir={out}', '--name=faults']
  env = dict(os.environ, PYTHONPATH=str(REPO))
  result = _run(args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  reference = base / 'reference'
  shutil.copytree(out, reference)  # the interrupted run writes into the same folder name
  shutil.rmtree(out)
  return {'base': base, 'out': out, 'reference': reference, 'args': args, 'env': env,
          'console': result.stdout + result.stderr}


def test_console_shows_the_jobs_own_lines(setup):
  """Finding 9: hundreds of Orbax lines hid 7 epoch lines; they go to logs/ in the run."""
  console = setup['console'].splitlines()
  assert len(console) < 20, '\n'.join(console)
  assert not any('checkpoint_manager' in line or 'orbax' in line for line in console)
  assert any(line.startswith('data: ') for line in console)
  assert any(line.startswith('macro PRAUC') for line in console)
  logged = (setup['reference'] / 'logs' / 'descriptor.log').read_text()
  assert 'checkpoint_manager.py' in logged and 'Saving checkpoint' in logged


def test_skipped_images_are_told_and_recorded(setup):
  """Finding 4: skips were in neither summary.json nor the store, and not on the console."""
  listed = setup['reference'] / 'skipped_images.csv'
  told = f'2 of 42 images skipped (unusable), listed in {setup["out"] / "skipped_images.csv"}'
  assert sum(told in line for line in setup['console'].splitlines()) == 2  # data line, result
  with open(listed, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['row'], r['path']) for r in rows] == [('9', 'cut.png'), ('10', 'absent.png')]
  assert 'truncated' in rows[0]['reason'] and 'no such file' in rows[1]['reason']
  summary = json.loads((setup['reference'] / 'summary.json').read_text())
  assert summary['skipped_images'] == 2
  store = store_lib.ResultsStore(setup['reference'] / 'results.sqlite')
  (run,) = store.runs()
  assert run['summary']['skipped_images'] == 2
  assert store.artifacts(run['run_id'])['skipped_images'] == str(setup['out'] /
                                                                  'skipped_images.csv')


_TIMING = ('timings', 'images_per_second', 'data_wait_per_step', 'seconds')


def _without_timings(record):
  return {k: v for k, v in record.items() if k not in _TIMING}


def _store_row(folder):
  """The run's row and everything logged for it, less what measures time or the process."""
  store = store_lib.ResultsStore(folder / 'results.sqlite')
  (run,) = store.runs(kind='descriptor')
  row = {k: v for k, v in run.items()
         if k not in ('run_id', 'host', 'pid', 'started_at', 'finished_at')}
  row['summary'] = _without_timings(row['summary'])
  row['metrics'] = [m for m in store.metrics(run['run_id']) if m[1] not in _TIMING]
  row['per_label'] = store.values(run['run_id'], 'per_label')
  row['artifacts'] = store.artifacts(run['run_id'])
  return row


def test_killed_anywhere_then_resumed_gives_the_uninterrupted_result(setup):
  # A new draw of the kill points each time (FWJAX_FAULT_SEED repeats one; failures name it).
  seed = int(os.environ.get('FWJAX_FAULT_SEED', random.randrange(1 << 16)))
  rng = random.Random(seed)
  total = sum(EPOCHS)
  points = [{'seed': seed}] + [
      {'at': 'after_checkpoint', 'epoch': 1},
      {'at': 'checkpoint_write', 'epoch': rng.randint(2, total)},
      {'at': 'report', 'step': rng.choice(['write_per_label_tables', 'write_confusion',
                                           'pr_curves_png', 'write_predictions', '_gradcam',
                                           '_register_outputs'])},
  ]
  out = setup['out']
  for point in points[1:]:
    result = _run(setup['args'], point, env=setup['env'])
    assert result.returncode == -signal.SIGKILL, (point, result.stderr[-3000:])
    assert 'KILLED' in result.stdout, point
    # One row, and it says what happened: the process is gone, the run unfinished.
    (run,) = store_lib.ResultsStore(out / 'results.sqlite').runs()
    assert run['status'] == 'interrupted', (point, run)
  resumed = _run(setup['args'], env=setup['env'])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resuming from {out}/checkpoints/last/{total}' in resumed.stdout

  reference = setup['reference']
  assert _without_timings(json.loads((out / 'summary.json').read_text())) == _without_timings(
      json.loads((reference / 'summary.json').read_text())), points
  for name in ('per_label_ap.csv', 'per_label_ap.md', 'confusion.csv', 'predictions.csv',
               'skipped_images.csv', 'flags.txt', 'config.json'):
    assert (out / name).read_bytes() == (reference / name).read_bytes(), (name, points)
  epochs = [_without_timings(json.loads(line))
            for line in (out / 'metrics.jsonl').read_text().splitlines()]
  assert epochs == [_without_timings(json.loads(line))
                    for line in (reference / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in epochs] == list(range(1, total + 1))
  assert _store_row(out) == _store_row(reference), points
  # Every attempt's library log is kept, one after the other.
  assert (out / 'logs' / 'descriptor.log').read_text().count('Saving checkpoint') > (
      (reference / 'logs' / 'descriptor.log').read_text().count('Saving checkpoint'))
