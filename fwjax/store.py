"""The SQLite results store: every run of every job, its metrics, values and artifacts.

One database file holds the results of many runs (descriptor training, similarity ranking, a whole
grid), so tables for a paper are a query away and a grid can skip what is already done. Several
processes may write to the same file at once (two grid workers, a training run beside a similarity
run): the database runs in WAL mode, every write is one short ``BEGIN IMMEDIATE`` transaction, and
a busy database is waited for (``busy_timeout``) rather than reported as an error.

Schema (``PRAGMA user_version`` = 2; a version-1 file is migrated when opened)::

  runs(run_id INTEGER PRIMARY KEY AUTOINCREMENT,
       kind TEXT        -- 'descriptor', 'similarity', ...
       name TEXT        -- human-readable label of the run
       config_key TEXT  -- hash of what the result depends on; a grid skips a completed key
       flags TEXT       -- JSON object of the resolved flags / config
       output_dir TEXT  -- where the run wrote its files
       status TEXT      -- 'running' | 'complete' | 'failed' | 'interrupted'
       summary TEXT     -- JSON object given to finish_run (NULL until then)
       error TEXT       -- message given to fail_run
       host TEXT, pid INTEGER,
       started_at REAL, finished_at REAL)   -- Unix seconds
  metrics(run_id, step INTEGER, scope TEXT, name TEXT, value REAL, logged_at REAL)
       -- time series, e.g. scope 'epoch', step = epoch, name 'valid/macro_prauc'
  run_values(run_id, scope TEXT, key TEXT, name TEXT, value REAL)
       -- keyed values, e.g. scope 'per_label' key 'D01' name 'ap';
       -- scope 'query' key '00001' name 'precision@1'; scope 'timing' key 'distance' name 'seconds'
  artifacts(run_id, name TEXT, path TEXT)

A run's status stays true when its process dies: a 'running' run whose process is gone (checked
on this host when runs are read) is marked 'interrupted', and a job that resumes the run takes
its row over (:meth:`ResultsStore.continue_run`) instead of adding a second one.

SQLite stores NaN as NULL; the store reads NULL values back as ``float('nan')``, so an undefined
average precision (a label with no positives) round-trips as NaN. Non-finite numbers inside the
JSON columns are written as ``null`` so any JSON reader can parse them.

Example::

  store = ResultsStore('results.sqlite')
  run_id = store.start_run('descriptor', 'quickstart', flags, config_key, 'runs/quickstart')
  store.log_metrics(run_id, 1, {'train/loss': 0.31, 'valid/macro_prauc': 0.62})
  store.log_values(run_id, 'per_label', 'D01', {'ap': 0.8})
  store.finish_run(run_id, {'macro_prauc': 0.62})
  store.completed('descriptor', config_key)  # -> run_id
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA_VERSION = 2
STATUSES = ('running', 'complete', 'failed', 'interrupted')

_RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
  run_id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  config_key TEXT NOT NULL,
  flags TEXT NOT NULL,
  output_dir TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
  summary TEXT,
  error TEXT,
  host TEXT,
  pid INTEGER,
  started_at REAL NOT NULL,
  finished_at REAL
)"""

_SCHEMA = _RUNS_TABLE.format(name='runs') + """;
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (kind, config_key, status);
CREATE TABLE IF NOT EXISTS metrics (
  run_id INTEGER NOT NULL REFERENCES runs (run_id),
  step INTEGER NOT NULL,
  scope TEXT NOT NULL,
  name TEXT NOT NULL,
  value REAL,
  logged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, scope, step);
CREATE TABLE IF NOT EXISTS run_values (
  run_id INTEGER NOT NULL REFERENCES runs (run_id),
  scope TEXT NOT NULL,
  key TEXT NOT NULL,
  name TEXT NOT NULL,
  value REAL
);
CREATE INDEX IF NOT EXISTS values_by_run ON run_values (run_id, scope);
CREATE TABLE IF NOT EXISTS artifacts (
  run_id INTEGER NOT NULL REFERENCES runs (run_id),
  name TEXT NOT NULL,
  path TEXT NOT NULL
);
"""


def _json(obj: Any) -> str:
  """JSON text with non-finite floats as null (strict JSON readers reject NaN)."""

  def clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
      return None
    if isinstance(value, Mapping):
      return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [clean(v) for v in value]
    if hasattr(value, 'item') and callable(value.item) and getattr(value, 'ndim', 1) == 0:
      return clean(value.item())  # numpy / jax scalars
    return value

  return json.dumps(clean(obj), sort_keys=True, default=str, allow_nan=False)


def _number(value: Any, where: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError) as error:
    raise TypeError(f'{where}: expected a number, got {type(value).__name__} {value!r}') from error


def _read(value: float | None) -> float:
  return math.nan if value is None else value


class RunInProgressError(RuntimeError):
  """The run to continue is still being run by a live process."""


def _process_state(host: str | None, pid: int | None) -> str:
  """'alive' or 'gone' for a process of this host; 'unknown' for another host's."""
  if host != socket.gethostname() or pid is None:
    return 'unknown'
  if pid == os.getpid():
    return 'alive'
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return 'gone'
  except PermissionError:  # another user's process holds the pid
    return 'alive'
  return 'alive'
  return True


class ResultsStore:
  """A SQLite results database shared by every job (see the module docstring for the schema).

  Args:
    path: database file; created (with its parent folder) if missing.
    timeout: seconds to wait for another writer before giving up (``busy_timeout``).
  """

  def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0):
    self.path = pathlib.Path(path)
    self.timeout = timeout
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock = threading.Lock()
    self._conn: sqlite3.Connection | None = None
    self._conn_pid = -1
    version = self._query('PRAGMA user_version')[0][0]
    if version == 0:  # a new file: create the schema (once, even if two processes race here)
      with self._write() as conn:
        version = conn.execute('PRAGMA user_version').fetchone()[0]
        if version == 0:
          # executescript would commit the open transaction: create the tables one by one.
          for statement in _SCHEMA.split(';'):
            if statement.strip():
              conn.execute(statement)
          conn.execute(f'PRAGMA user_version = {SCHEMA_VERSION}')
          version = SCHEMA_VERSION
    if version == 1:
      version = self._migrate_from_1()
    if version != SCHEMA_VERSION:
      raise RuntimeError(f'{self.path}: results schema version {version}, this fwjax reads '
                         f'version {SCHEMA_VERSION}; use a new database file')

  def _migrate_from_1(self) -> int:
    """Version 1 -> 2: the runs table learns the 'interrupted' status (nothing else changes).

    SQLite cannot change a CHECK constraint in place: the table is copied into one with the new
    constraint, inside one transaction, so a reader sees the old table or the new one.
    """
    with self._write() as conn:
      version = conn.execute('PRAGMA user_version').fetchone()[0]
      if version == 1:  # not migrated by another process meanwhile
        conn.execute(_RUNS_TABLE.format(name='runs_v2'))
        conn.execute('INSERT INTO runs_v2 SELECT * FROM runs')
        conn.execute('DROP TABLE runs')
        conn.execute('ALTER TABLE runs_v2 RENAME TO runs')
        conn.execute('CREATE INDEX IF NOT EXISTS runs_by_key ON runs (kind, config_key, status)')
        conn.execute('PRAGMA user_version = 2')
        version = 2
    return version

  # Connections ------------------------------------------------------------------------------------

  def _connection(self) -> sqlite3.Connection:
    # A connection must not cross a fork; reopen in a child process.
    if self._conn is None or self._conn_pid != os.getpid():
      conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                             check_same_thread=False)
      conn.execute(f'PRAGMA busy_timeout = {int(self.timeout * 1000)}')
      # Switching a new file to WAL needs an exclusive lock, and SQLite can answer 'locked' at
      # once (without the busy handler) when another process switches it at the same moment:
      # retry until the timeout.
      deadline = time.monotonic() + self.timeout
      while True:
        try:
          mode = conn.execute('PRAGMA journal_mode = WAL').fetchone()[0]
          break
        except sqlite3.OperationalError as error:
          if 'locked' not in str(error) and 'busy' not in str(error):
            raise
          if time.monotonic() > deadline:
            raise
          time.sleep(0.05)
      if mode.lower() != 'wal':
        raise RuntimeError(f'{self.path}: SQLite refused WAL mode (got {mode!r}); the store needs '
                           'a local file system that supports shared memory')
      conn.execute('PRAGMA synchronous = NORMAL')
      self._conn, self._conn_pid = conn, os.getpid()
    return self._conn

  class _Transaction:

    def __init__(self, store: ResultsStore):
      self.store = store

    def __enter__(self) -> sqlite3.Connection:
      self.store._lock.acquire()
      try:
        self.conn = self.store._connection()
        # IMMEDIATE takes the write lock up front, so the busy timeout applies (a deferred
        # transaction that upgrades from read to write fails at once instead of waiting).
        self.conn.execute('BEGIN IMMEDIATE')
      except BaseException:
        self.store._lock.release()
        raise
      return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
      try:
        self.conn.execute('ROLLBACK' if exc_type else 'COMMIT')
      finally:
        self.store._lock.release()

  def _write(self) -> ResultsStore._Transaction:
    return ResultsStore._Transaction(self)

  def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with self._lock:
      return self._connection().execute(sql, args).fetchall()

  def close(self) -> None:
    """Closes this process's connection (reopened on the next call)."""
    with self._lock:
      if self._conn is not None and self._conn_pid == os.getpid():
        self._conn.close()
      self._conn = None

  # Writing ----------------------------------------------------------------------------------------

  def start_run(self, kind: str, name: str, flags: Mapping[str, Any], config_key: str,
                output_dir: str) -> int:
    """Records a new run as 'running'.

    Args:
      kind: the job, e.g. 'descriptor' or 'similarity'.
      name: a readable label.
      flags: the resolved flags or config (stored as JSON).
      config_key: identifies the configuration; ``completed`` looks runs up by it.
      output_dir: where the run writes its files.

    Returns:
      The new run's id.
    """
    if not kind or not config_key:
      raise ValueError(f'start_run needs a non-empty kind and config_key, got {kind!r}, '
                       f'{config_key!r}')
    with self._write() as conn:
      cursor = conn.execute(
          'INSERT INTO runs (kind, name, config_key, flags, output_dir, status, host, pid, '
          "started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
          (kind, name, config_key, _json(dict(flags)), str(output_dir), socket.gethostname(),
           os.getpid(), time.time()))
      return int(cursor.lastrowid)

  def log_metrics(self, run_id: int, step: int, metrics: Mapping[str, float],
                  scope: str = 'epoch') -> None:
    """Appends one step of a time series (e.g. the metrics of one epoch)."""
    now = time.time()
    rows = [(run_id, int(step), scope, str(n), _number(v, f'metric {n!r}'), now)
            for n, v in metrics.items()]
    with self._write() as conn:
      self._check_run(conn, run_id)
      conn.executemany('INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)', rows)

  def log_values(self, run_id: int, scope: str, key: str, values: Mapping[str, float]) -> None:
    """Records keyed values, e.g. scope 'per_label', key 'D01', values {'ap': 0.8}."""
    rows = [(run_id, scope, str(key), str(n), _number(v, f'{scope}/{key}/{n}'))
            for n, v in values.items()]
    with self._write() as conn:
      self._check_run(conn, run_id)
      conn.executemany('INSERT INTO run_values VALUES (?, ?, ?, ?, ?)', rows)

  def log_artifact(self, run_id: int, name: str, path: str | os.PathLike[str]) -> None:
    """Records a file or folder the run wrote."""
    with self._write() as conn:
      self._check_run(conn, run_id)
      conn.execute('INSERT INTO artifacts VALUES (?, ?, ?)', (run_id, name, str(path)))

  def finish_run(self, run_id: int, summary: Mapping[str, Any]) -> None:
    """Marks a run complete with its summary (a JSON-serialisable mapping)."""
    self._end(run_id, 'complete', summary=_json(dict(summary)), error=None)

  def fail_run(self, run_id: int, error: str) -> None:
    """Marks a run failed with the error message."""
    self._end(run_id, 'failed', summary=None, error=str(error))

  def interrupt_run(self, run_id: int, reason: str) -> None:
    """Marks a run interrupted (stopped before its end, e.g. by Ctrl-C; it can be resumed)."""
    self._end(run_id, 'interrupted', summary=None, error=str(reason))

  def continue_run(self, kind: str, name: str, flags: Mapping[str, Any], config_key: str,
                   output_dir: str) -> int | None:
    """Takes over the unfinished run that a resumed job continues, instead of adding a row.

    The run continued is the latest one of this kind, config key and output folder, if it is
    'interrupted' or 'running' by a process that is gone (a process of another host cannot be
    checked from here and is taken to be gone: two jobs writing one run folder at once is not
    supported anyway). It becomes 'running' again under this process, with the given name and
    flags; its metrics, values and artifacts are cleared, because the continuing job writes them
    again (a half-written report is not kept).

    Args:
      kind, name, flags, config_key, output_dir: as for :meth:`start_run`.

    Returns:
      The run's id, or None when there is no such run (then call :meth:`start_run`).

    Raises:
      RunInProgressError: that run's process is still alive on this host.
    """
    with self._write() as conn:
      row = conn.execute(
          'SELECT run_id, status, host, pid FROM runs WHERE kind = ? AND config_key = ? AND '
          'output_dir = ? ORDER BY run_id DESC LIMIT 1',
          (kind, config_key, str(output_dir))).fetchone()
      if row is None or row[1] not in ('running', 'interrupted'):
        return None
      run_id, status, host, pid = row
      if status == 'running' and _process_state(host, pid) == 'alive':
        raise RunInProgressError(
            f'{self.path}: run {run_id} ({kind}, {output_dir}) is running in process {pid} on '
            f'{host}; wait for it or stop it before resuming it')
      for table in ('metrics', 'run_values', 'artifacts'):
        conn.execute(f'DELETE FROM {table} WHERE run_id = ?', (run_id,))
      conn.execute(
          "UPDATE runs SET status = 'running', name = ?, flags = ?, summary = NULL, error = NULL, "
          'host = ?, pid = ?, finished_at = NULL WHERE run_id = ?',
          (name, _json(dict(flags)), socket.gethostname(), os.getpid(), run_id))
      return int(run_id)

  def replace_metrics(self, run_id: int, records: Sequence[tuple[int, Mapping[str, float]]],
                      scope: str = 'epoch') -> None:
    """Replaces a run's time series in ``scope`` with ``records`` (step, metrics), in order.

    A resumed run knows its whole history only at the end (the epochs before the interruption
    come from its checkpoint); this makes the stored series exactly that history.
    """
    now = time.time()
    rows = [(run_id, int(step), scope, str(n), _number(v, f'metric {n!r}'), now)
            for step, metrics in records for n, v in metrics.items()]
    with self._write() as conn:
      self._check_run(conn, run_id)
      conn.execute('DELETE FROM metrics WHERE run_id = ? AND scope = ?', (run_id, scope))
      conn.executemany('INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)', rows)

  def _end(self, run_id: int, status: str, summary: str | None, error: str | None) -> None:
    with self._write() as conn:
      self._check_run(conn, run_id)
      conn.execute('UPDATE runs SET status = ?, summary = ?, error = ?, finished_at = ? '
                   'WHERE run_id = ?', (status, summary, error, time.time(), run_id))

  def _check_run(self, conn: sqlite3.Connection, run_id: int) -> None:
    if conn.execute('SELECT 1 FROM runs WHERE run_id = ?', (run_id,)).fetchone() is None:
      raise KeyError(f'{self.path}: no run with run_id={run_id}; call start_run first')

  # Reading ----------------------------------------------------------------------------------------

  def completed(self, kind: str, config_key: str) -> int | None:
    """The id of the latest complete run of this kind and config key, or None."""
    row = self._query("SELECT max(run_id) FROM runs WHERE kind = ? AND config_key = ? AND "
                      "status = 'complete'", (kind, config_key))
    return None if row[0][0] is None else int(row[0][0])

  def runs(self, kind: str | None = None, status: str | None = None, *,
           run_id: int | None = None) -> list[dict[str, Any]]:
    """Runs (oldest first) as dicts with every ``runs`` column, flags and summary parsed.

    Args:
      kind: only runs of this kind.
      status: only runs with this status ('running', 'complete', 'failed' or 'interrupted').
      run_id: only this run.

    Returns:
      A list of dicts with keys run_id, kind, name, config_key, flags (dict), output_dir, status,
      summary (dict or None), error, host, pid, started_at, finished_at.
    """
    if status is not None and status not in STATUSES:
      raise ValueError(f'status must be one of {STATUSES}, got {status!r}')
    self._settle_dead_runs()
    where, args = [], []
    for column, value in (('kind', kind), ('status', status), ('run_id', run_id)):
      if value is not None:
        where.append(f'{column} = ?')
        args.append(value)
    sql = 'SELECT * FROM runs' + (' WHERE ' + ' AND '.join(where) if where else '')
    with self._lock:
      cursor = self._connection().execute(sql + ' ORDER BY run_id', tuple(args))
      columns = [c[0] for c in cursor.description]
      rows = cursor.fetchall()
    result = []
    for row in rows:
      run = dict(zip(columns, row))
      run['flags'] = json.loads(run['flags'])
      run['summary'] = None if run['summary'] is None else json.loads(run['summary'])
      result.append(run)
    return result

  def _settle_dead_runs(self) -> None:
    """Marks 'running' runs of this host whose process is gone as 'interrupted'.

    A killed process cannot record its own end; without this its run would read 'running'
    forever. Runs of other hosts cannot be checked from here and are left as they are.
    """
    host = socket.gethostname()
    rows = self._query("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ?",
                       (host,))
    dead = [run_id for run_id, pid in rows if _process_state(host, pid) == 'gone']
    if not dead:
      return
    with self._write() as conn:
      conn.executemany(
          "UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE run_id = ? "
          "AND status = 'running'",
          [(f'interrupted: process {pid} on {host} ended without finishing the run', time.time(),
            run_id) for run_id, pid in rows if run_id in dead])

  def run(self, run_id: int) -> dict[str, Any]:
    """One run as ``runs`` returns it; KeyError if absent."""
    found = self.runs(run_id=run_id)
    if found:
      return found[0]
    raise KeyError(f'{self.path}: no run with run_id={run_id}')

  def metrics(self, run_id: int, scope: str = 'epoch') -> list[tuple[int, str, float]]:
    """The time series of a run as (step, name, value), in logging order."""
    rows = self._query('SELECT step, name, value FROM metrics WHERE run_id = ? AND scope = ? '
                       'ORDER BY rowid', (run_id, scope))
    return [(step, name, _read(value)) for step, name, value in rows]

  def values(self, run_id: int, scope: str) -> list[tuple[str, str, float]]:
    """The keyed values of a run in one scope as (key, name, value), in logging order."""
    rows = self._query('SELECT key, name, value FROM run_values WHERE run_id = ? AND scope = ? '
                       'ORDER BY rowid', (run_id, scope))
    return [(key, name, _read(value)) for key, name, value in rows]

  def artifacts(self, run_id: int) -> dict[str, str]:
    """The artifacts of a run, name -> path (the latest path per name)."""
    rows = self._query('SELECT name, path FROM artifacts WHERE run_id = ? ORDER BY rowid',
                       (run_id,))
    return dict(rows)
