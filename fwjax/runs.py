"""What both jobs record about a run: the flags that reproduce it, file identities, dtypes.

A run folder's ``flags.txt`` is the record of the run (re-run it with ``--flagfile``). It is
derived from the job's configuration dataclass, whose field names are the flag names, in one
way for single runs, grid runs and library calls alike.

Both jobs also share how they write: run records atomically (:func:`atomic_open`), shared
outputs from one process only (:func:`primary_process`), and library logging to a file in the
run folder instead of the console (:func:`quiet_console`, :func:`log_file`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import IO, Any

import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
"""Compute dtypes a job accepts by name (``--dtype``); parameters stay float32."""


def compute_dtype(name: str, flag: str = '--dtype') -> Any:
  """The jnp dtype called ``name``; ValueError naming ``flag`` and the choices otherwise."""
  if name not in DTYPES:
    raise ValueError(f'{flag} must be one of {", ".join(DTYPES)}, got {name!r}')
  return DTYPES[name]


def flags_text(config: Any, *, leave_out: tuple[str, ...] = ()) -> str:
  """The configuration as a flag file: one ``--field=value`` line per field that is set.

  Args:
    config: a job's configuration dataclass (its field names are the flag names).
    leave_out: fields that are not flags.

  Returns:
    The text of ``flags.txt``: lists comma-joined, booleans as ``--name``/``--noname``, fields
    that are None left out (the flag's default is None too).
  """
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name in leave_out or value is None:
      continue
    if isinstance(value, bool):
      lines.append(f'--{"" if value else "no"}{field.name}')
      continue
    if isinstance(value, (tuple, list)):
      value = ','.join(map(str, value))
    lines.append(f'--{field.name}={value}')
  return '\n'.join(lines) + '\n'


def file_sha256(path: str | os.PathLike[str]) -> str:
  """The sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def weights_identity(path: str | os.PathLike[str]) -> str:
  """``'sha256:<hex>'`` of a weights file, or of a checkpoint folder's files and their names.

  What makes a model's outputs what they are, whatever the file is called or where it is: the
  results store keys runs by it and the feature cache keys features by it.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    return 'sha256:' + file_sha256(path)
  digest = hashlib.sha256()
  for file in sorted(p for p in path.rglob('*') if p.is_file()):
    digest.update(str(file.relative_to(path)).encode())
    digest.update(file_sha256(file).encode())
  return 'sha256:' + digest.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = 'w', **kwargs: Any) -> Iterator[IO]:
  """Opens ``path`` for writing so that readers see the old file or the new one, never a part.

  The text goes to a temporary file in the same folder, which replaces ``path`` (``os.replace``,
  atomic on POSIX) only when the ``with`` block ends without an error; a killed process or an
  exception leaves ``path`` as it was (and at most a ``.<name>.tmp-<pid>`` file beside it).

  Args:
    path: the file to write.
    mode: ``'w'`` or ``'wb'``.
    **kwargs: passed to ``open`` (e.g. ``newline=''`` for CSV).

  Yields:
    The open temporary file.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    with open(temporary, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    if temporary.exists():
      temporary.unlink()


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)


def primary_process() -> bool:
  """True in the process that writes a run's shared outputs (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def log_name(job: str) -> str:
  """The library log file of ``job`` in this process: ``<job>.log``, ``<job>.process<N>.log``."""
  index = jax.process_index()
  return f'{job}.log' if index == 0 else f'{job}.process{index}.log'


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
  """Keeps library logging (Orbax, JAX, absl INFO) off the console while a job runs.

  Orbax alone logs several hundred INFO lines per training run, which hid the job's own few
  progress lines. Console handlers of the root logger (absl's, under ``app.run``) show warnings
  and errors only until the block ends; :func:`log_file` keeps everything in the run folder.
  """
  root = logging.getLogger()
  console = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
  levels = [h.level for h in console]
  added = None
  if not console:  # Python's last-resort handler stops working once log_file adds a handler
    added = logging.StreamHandler(sys.stderr)
    added.setLevel(logging.WARNING)
    root.addHandler(added)
  for handler in console:
    handler.setLevel(max(handler.level, logging.WARNING))
  try:
    yield
  finally:
    for handler, level in zip(console, levels):
      handler.setLevel(level)
    if added is not None:
      root.removeHandler(added)


@contextlib.contextmanager
def log_file(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
  """Appends every log record (absl and Python logging, all levels shown) to ``path`` meanwhile.

  A resumed run appends to the same file, so the log of every attempt is kept.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handler = logging.FileHandler(path, mode='a')
  handler.setFormatter(logging.Formatter(
      '%(levelname).1s %(asctime)s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s'))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield path
  finally:
    root.removeHandler(handler)
    handler.close()
