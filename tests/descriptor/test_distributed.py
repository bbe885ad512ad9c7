"""Two processes of one ``--distributed`` descriptor run: only process 0 writes shared outputs.

Issue 16, finding 8: with --distributed every process wrote the reports, the plots and the store
rows. Here two CPU processes (one device each) join through ``jax.distributed.initialize`` on
localhost, as two hosts would, and train one model. An audit hook in each process records every
file it opens for writing, renames, removes or creates, and every database it connects to; the
test checks that process 1 wrote nothing in the run folder but its own log file and its part of
the (Orbax-coordinated) checkpoints.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from fwjax import store as store_lib

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

_RUNNER = r'''
import os, sys

log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit(event, args):
  if event == 'open':
    path, mode, flags = args
    writes = (any(c in mode for c in 'wax+') if isinstance(mode, str)
              else bool((flags or 0) & WRITE_FLAGS))
  elif event in ('os.rename', 'os.remove', 'os.rmdir', 'shutil.rmtree', 'sqlite3.connect'):
    path, writes = args[0], True
  elif event == 'os.mkdir':
    path = args[0]
    writes = not os.path.isdir(path)  # exist_ok calls on existing folders write nothing
  else:
    return
  if writes and isinstance(path, (str, bytes, os.PathLike)):
    path = os.fsdecode(path)
    os.write(log, f'{event}\t{os.path.abspath(path)}\n'.encode())


sys.addaudithook(audit)
sys.argv = ['experiments.descriptor'] + sys.argv[2:]
from absl import app
from experiments import descriptor
app.run(descriptor.main)
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_only_process_0_writes_shared_outputs(tmp_path):
  out = tmp_path / 'run'
  args = ['--synthetic=32', '--valid_fraction=0.25', '--height=64', '--width=32',
          '--preprocess=cbn_1', '--epochs_phase1=1', '--epochs_phase2=1', '--batch_size=8',
          '--width_multiplier=0.125', '--stage_sizes=1,1,1,1', '--num_gradcam=1',
          '--noprogress', '--distributed', f'--out_dir={out}', '--name=two']
  port = _free_port()
  processes = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index))
    processes.append(subprocess.Popen(
        [sys.executable, '-c', _RUNNER, str(tmp_path / f'writes{index}.tsv'), *args], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=900))
  finally:
    for process in processes:
      process.kill()
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-4000:]
  assert 'macro PRAUC' in outputs[0][0] and 'macro PRAUC' not in outputs[1][0]
  assert 'process 1 of 2: process 0 writes the shared outputs' in outputs[1][0]

  def written(index):
    lines = (tmp_path / f'writes{index}.tsv').read_text().splitlines()
    return [tuple(line.split('\t')) for line in lines]

  inside = lambda path: path == str(out) or path.startswith(str(out) + os.sep)
  mine = (str(out / 'checkpoints') + os.sep, str(out / 'logs' / 'descriptor.process1.log'))
  by_1 = [(event, path) for event, path in written(1) if inside(path)]
  shared = [(event, path) for event, path in by_1 if not path.startswith(mine) and not (
      event == 'os.mkdir' and path in (str(out), str(out / 'logs')))]  # whoever comes first
  assert shared == [], 'process 1 wrote shared files'
  assert ('open', str(out / 'logs' / 'descriptor.process1.log')) in by_1
  assert not any(event == 'sqlite3.connect' for event, _ in written(1))
  by_0 = {path for _, path in written(0)}
  for name in ('summary.json', 'flags.txt', 'per_label_ap.csv', 'confusion.png',
               'pr_curves.png', 'metrics.jsonl'):
    assert any(p.startswith(str(out / name)) or f'.{name}.tmp-' in p for p in by_0), name

  summary = json.loads((out / 'summary.json').read_text())
  assert summary['devices'] == 2 and summary['epochs'] == 2
  store = store_lib.ResultsStore(out / 'results.sqlite')
  (run,) = store.runs()
  assert run['status'] == 'complete' and run['pid'] == processes[0].pid
  assert [s for s, n, _ in store.metrics(run['run_id']) if n == 'macro_prauc'] == [1, 2]
  assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2
  assert sorted(p.name for p in (out / 'logs').iterdir()) == [
      'descriptor.log', 'descriptor.process1.log']
