"""What both jobs record about a run: the flags that reproduce it, file identities, dtypes.

A run folder's ``flags.txt`` is the record of the run (re-run it with ``--flagfile``). It is
derived from the job's configuration dataclass, whose field names are the flag names, in one
way for single runs, grid runs and library calls alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any

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
