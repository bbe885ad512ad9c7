"""The SQLite results store: round trips, skipping completed configs, two writers at once."""

import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from fwjax import store as store_lib

from conftest import REPO


def test_round_trip(tmp_path):
  store = store_lib.ResultsStore(tmp_path / 'sub' / 'results.sqlite')
  flags = {'height': 352, 'loss': 'bce', 'seeds': (0, 1)}
  run_id = store.start_run('descriptor', 'quick', flags, 'key-a', str(tmp_path / 'run'))
  store.log_metrics(run_id, 1, {'train/loss': 0.5, 'valid/macro_prauc': 0.25})
  store.log_metrics(run_id, 2, {'train/loss': 0.25})
  store.log_values(run_id, 'per_label', 'D01', {'ap': 0.75, 'support': 3})
  store.log_values(run_id, 'per_label', 'D02', {'ap': float('nan')})
  store.log_artifact(run_id, 'summary', tmp_path / 'run' / 'summary.json')
  assert store.completed('descriptor', 'key-a') is None
  store.finish_run(run_id, {'macro_prauc': 0.5, 'per_label_ap': {'D02': float('nan')}})

  assert store.completed('descriptor', 'key-a') == run_id
  assert store.completed('similarity', 'key-a') is None
  (run,) = store.runs(kind='descriptor')
  assert run['run_id'] == run_id and run['status'] == 'complete' and run['name'] == 'quick'
  assert run['flags'] == {'height': 352, 'loss': 'bce', 'seeds': [0, 1]}
  # NaN is not JSON: it is stored as null, so standard JSON readers can parse the summary.
  assert run['summary'] == {'macro_prauc': 0.5, 'per_label_ap': {'D02': None}}
  assert store.metrics(run_id) == [(1, 'train/loss', 0.5), (1, 'valid/macro_prauc', 0.25),
                                   (2, 'train/loss', 0.25)]
  values = store.values(run_id, 'per_label')
  assert values[:2] == [('D01', 'ap', 0.75), ('D01', 'support', 3.0)]
  assert values[2][:2] == ('D02', 'ap') and math.isnan(values[2][2])
  assert store.values(run_id, 'query') == []
  assert store.artifacts(run_id) == {'summary': str(tmp_path / 'run' / 'summary.json')}

  # The documented schema is what is on disk (read with plain sqlite3).
  conn = sqlite3.connect(tmp_path / 'sub' / 'results.sqlite')
  assert conn.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
  assert conn.execute('PRAGMA user_version').fetchone()[0] == store_lib.SCHEMA_VERSION
  assert json.loads(conn.execute('SELECT flags FROM runs').fetchone()[0])['loss'] == 'bce'
  conn.close()


def test_failed_and_reopened(tmp_path):
  path = tmp_path / 'results.sqlite'
  store = store_lib.ResultsStore(path)
  first = store.start_run('descriptor', 'a', {}, 'k', 'out')
  store.fail_run(first, 'FloatingPointError: loss is nan at step 3')
  second = store.start_run('descriptor', 'a', {}, 'k', 'out')
  store.close()
  again = store_lib.ResultsStore(path)
  assert again.completed('descriptor', 'k') is None  # failed and running runs don't count
  assert [r['status'] for r in again.runs()] == ['failed', 'running']
  assert again.run(first)['error'].startswith('FloatingPointError')
  assert again.runs(status='running')[0]['run_id'] == second
  again.finish_run(second, {})
  assert again.completed('descriptor', 'k') == second


def test_bad_input_fails_clearly(tmp_path):
  store = store_lib.ResultsStore(tmp_path / 'results.sqlite')
  with pytest.raises(KeyError, match='run_id=41'):
    store.log_metrics(41, 0, {'loss': 1.0})
  run_id = store.start_run('descriptor', 'a', {}, 'k', 'out')
  with pytest.raises(TypeError, match="per_label/D01/ap"):
    store.log_values(run_id, 'per_label', 'D01', {'ap': 'high'})
  with pytest.raises(ValueError, match='config_key'):
    store.start_run('descriptor', 'a', {}, '', 'out')
  with pytest.raises(ValueError, match='status'):
    store.runs(status='done')
  assert store.values(run_id, 'per_label') == []  # the bad row rolled back its transaction
  conn = sqlite3.connect(tmp_path / 'other.sqlite')
  conn.execute('PRAGMA user_version = 7')
  conn.close()
  with pytest.raises(RuntimeError, match='version 7'):
    store_lib.ResultsStore(tmp_path / 'other.sqlite')


def _writer(path, worker, num_runs, barrier):
  barrier.wait()  # start together, so the two processes contend from the first statement
  store = store_lib.ResultsStore(path, timeout=60)
  for i in range(num_runs):
    run_id = store.start_run('grid', f'w{worker}-{i}', {'worker': worker, 'i': i},
                             f'{worker}-{i}', 'out')
    store.log_metrics(run_id, 0, {'loss': float(i)})
    store.log_values(run_id, 'per_label', 'D01', {'ap': worker + i / 1000})
    store.finish_run(run_id, {'worker': worker, 'i': i})


def test_two_processes_write_at_once(tmp_path):
  path = tmp_path / 'results.sqlite'
  store_lib.ResultsStore(path)  # both workers find the schema (they could also both create it)
  ctx = multiprocessing.get_context('spawn')
  barrier = ctx.Barrier(2)
  workers = [ctx.Process(target=_writer, args=(path, w, 60, barrier)) for w in range(2)]
  for p in workers:
    p.start()
  for p in workers:
    p.join(120)
  assert [p.exitcode for p in workers] == [0, 0]
  store = store_lib.ResultsStore(path)
  runs = store.runs(kind='grid')
  assert len(runs) == 120 and all(r['status'] == 'complete' for r in runs)
  for run in runs:
    worker, i = run['flags']['worker'], run['flags']['i']
    assert run['summary'] == {'worker': worker, 'i': i}
    assert store.metrics(run['run_id']) == [(0, 'loss', float(i))]
    assert store.values(run['run_id'], 'per_label') == [('D01', 'ap', worker + i / 1000)]
  conn = sqlite3.connect(path)
  assert conn.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
  conn.close()


def _locked_writer(path, timeout, started):
  store = store_lib.ResultsStore(path, timeout=timeout)
  started.set()
  store.start_run('grid', 'waiting', {}, 'waited', 'out')


@pytest.mark.parametrize('timeout, exitcode', [(30.0, 0), (0.2, 1)])
def test_writer_waits_for_a_busy_database(tmp_path, timeout, exitcode):
  path = tmp_path / 'results.sqlite'
  store_lib.ResultsStore(path)
  holder = sqlite3.connect(path, isolation_level=None)
  ctx = multiprocessing.get_context('spawn')
  started = ctx.Event()
  holder.execute('BEGIN IMMEDIATE')  # another process holds the write lock...
  child = ctx.Process(target=_locked_writer, args=(path, timeout, started))
  try:
    child.start()
    # ...while the child opens the store and tries to write (it starts after the lock is taken).
    assert started.wait(60)
    child.join(1.0)
    assert child.exitcode is None or child.exitcode == exitcode
  finally:
    holder.execute('COMMIT')
    holder.close()
  child.join(60)
  assert child.exitcode == exitcode  # waits within busy_timeout; fails loudly beyond it
  assert len(store_lib.ResultsStore(path).runs()) == (1 if exitcode == 0 else 0)


def test_fresh_database_created_by_two_processes(tmp_path):
  path = tmp_path / 'fresh.sqlite'
  ctx = multiprocessing.get_context('spawn')
  barrier = ctx.Barrier(2)
  workers = [ctx.Process(target=_writer, args=(path, w, 5, barrier)) for w in range(2)]
  for p in workers:
    p.start()
  for p in workers:
    p.join(120)
  assert [p.exitcode for p in workers] == [0, 0]
  assert len(store_lib.ResultsStore(path).runs(status='complete')) == 10


# Issue 16, finding 6: a killed run used to stay 'running' forever, and its resumed run was a
# second row.

_CHILD = """
import os, signal, sys
from fwjax import store as store_lib
store = store_lib.ResultsStore(sys.argv[1])
run_id = store.start_run('descriptor', 'a', {'x': 1}, 'k', 'out')
store.log_metrics(run_id, 1, {'loss': 0.5})
store.log_values(run_id, 'per_label', 'D01', {'ap': 0.75})
store.log_artifact(run_id, 'half_written', 'out/x.csv')
print(run_id, flush=True)
if sys.argv[2] == 'kill':
  os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # 'wait': alive until the test closes stdin
"""


def _child(path, mode):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, '-c', _CHILD, str(path), mode], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_killed_run_reads_interrupted_and_is_continued_not_repeated(tmp_path):
  path = tmp_path / 'results.sqlite'
  child = _child(path, 'kill')
  child_id = int(child.stdout.readline())
  assert child.wait(60) == -signal.SIGKILL
  store = store_lib.ResultsStore(path)
  (run,) = store.runs()
  assert run['run_id'] == child_id and run['status'] == 'interrupted'
  assert f'process {child.pid}' in run['error']
  assert store.runs(status='running') == []

  # The resumed run takes the row over, with a clean slate for what it writes again.
  run_id = store.continue_run('descriptor', 'a (resumed)', {'x': 1, 'more': 2}, 'k', 'out')
  assert run_id == child_id
  run = store.run(run_id)
  assert (run['status'], run['pid'], run['name'], run['error']) == (
      'running', os.getpid(), 'a (resumed)', None)
  assert store.metrics(run_id) == [] and store.values(run_id, 'per_label') == []
  assert store.artifacts(run_id) == {}
  store.replace_metrics(run_id, [(1, {'loss': 0.5}), (2, {'loss': 0.25})])
  store.replace_metrics(run_id, [(1, {'loss': 0.5}), (2, {'loss': 0.25})])  # idempotent
  assert store.metrics(run_id) == [(1, 'loss', 0.5), (2, 'loss', 0.25)]
  store.finish_run(run_id, {'done': True})
  assert [(r['run_id'], r['status']) for r in store.runs()] == [(child_id, 'complete')]
  # A complete run is not continued: running the configuration again is a new run.
  assert store.continue_run('descriptor', 'a', {}, 'k', 'out') is None
  # Nor a run of another folder or configuration.
  store.interrupt_run(run_id, 'stopped')
  assert store.continue_run('descriptor', 'a', {}, 'k', 'elsewhere') is None
  assert store.continue_run('descriptor', 'a', {}, 'other', 'out') is None
  assert store.continue_run('descriptor', 'a', {}, 'k', 'out') == run_id


def test_a_live_run_is_not_taken_over(tmp_path):
  path = tmp_path / 'results.sqlite'
  child = _child(path, 'wait')
  try:
    child_id = int(child.stdout.readline())
    store = store_lib.ResultsStore(path)
    assert store.run(child_id)['status'] == 'running'  # alive: left as it is
    with pytest.raises(store_lib.RunInProgressError, match=f'process {child.pid}'):
      store.continue_run('descriptor', 'a', {}, 'k', 'out')
    assert store.run(child_id)['pid'] == child.pid  # the refusal changed nothing
  finally:
    child.stdin.close()
    child.wait(60)
  assert store.run(child_id)['status'] == 'interrupted'  # it ended without finishing
  assert store.continue_run('descriptor', 'a', {}, 'k', 'out') == child_id


_SCHEMA_1_RUNS = """
CREATE TABLE runs (
  run_id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
  config_key TEXT NOT NULL, flags TEXT NOT NULL, output_dir TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
  summary TEXT, error TEXT, host TEXT, pid INTEGER, started_at REAL NOT NULL, finished_at REAL)
"""


def test_version_1_database_is_migrated_in_place(tmp_path):
  path = tmp_path / 'old.sqlite'
  conn = sqlite3.connect(path)
  conn.execute(_SCHEMA_1_RUNS)
  conn.execute('CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs (run_id), '
               'step INTEGER NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL, value REAL, '
               'logged_at REAL NOT NULL)')
  conn.execute('CREATE TABLE run_values (run_id INTEGER NOT NULL, scope TEXT NOT NULL, '
               'key TEXT NOT NULL, name TEXT NOT NULL, value REAL)')
  conn.execute('CREATE TABLE artifacts (run_id INTEGER NOT NULL, name TEXT NOT NULL, '
               'path TEXT NOT NULL)')
  conn.execute("INSERT INTO runs VALUES (5, 'descriptor', 'old', 'k', '{}', 'out', 'complete', "
               "'{\"macro_prauc\": 0.5}', NULL, 'elsewhere', 1, 10.0, 20.0)")
  conn.execute("INSERT INTO metrics VALUES (5, 1, 'epoch', 'loss', 0.25, 11.0)")
  conn.execute('PRAGMA user_version = 1')
  conn.commit()
  conn.close()
  store = store_lib.ResultsStore(path)
  (run,) = store.runs()
  assert (run['run_id'], run['summary'], run['started_at']) == (5, {'macro_prauc': 0.5}, 10.0)
  assert store.metrics(5) == [(1, 'loss', 0.25)]
  new = store.start_run('descriptor', 'new', {}, 'k2', 'out')
  assert new == 6
  store.interrupt_run(new, 'stopped')  # the status version 1 did not allow
  assert store.run(new)['status'] == 'interrupted'
  conn = sqlite3.connect(path)
  assert conn.execute('PRAGMA user_version').fetchone()[0] == store_lib.SCHEMA_VERSION == 2
  assert conn.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
  conn.close()
