"""The on-disk feature cache of ``similarity.features``: rows keyed by image content, per config.

The cache of one configuration (model identity, stage, resolution, composition, resize policy;
hashed into the folder name) is an append-only float32 matrix (``features.f32``, rows of D) and an
index (``index.tsv``: sha256 of an image file's bytes, row). Appends hold an exclusive ``flock``,
so two runs can share a cache; the data is written before the index, so a crash leaves at most
rows nobody points to (recomputed next time), never an index entry past the data. The features of
a collection are gathered chunk by chunk into a memory-mapped ``.npy`` (``assemble``), so a
collection larger than memory never has to fit in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

_ASSEMBLE_CHUNK = 4096


class FeatureCache:
  """The on-disk features of one configuration: append-only rows plus a content-hash index."""

  def __init__(self, root: str | os.PathLike[str], config: dict[str, Any], dim: int):
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:24]
    self.dir = pathlib.Path(root).expanduser() / key
    self.dir.mkdir(parents=True, exist_ok=True)
    self.dim = dim
    meta = self.dir / 'config.json'
    if not meta.exists():  # written for a human browsing the cache; the key is the hash
      meta.write_text(json.dumps(dict(config, dim=dim), indent=1, sort_keys=True))
    self._data = self.dir / 'features.f32'
    self._index = self.dir / 'index.tsv'
    self.rows = self._read_index()

  def _read_index(self) -> dict[str, int]:
    rows = {}
    if self._index.exists():
      for line in self._index.read_text().splitlines(keepends=True):
        if line.endswith('\n'):  # a line cut short by a crash is ignored: its row is recomputed
          digest, row = line.split('\t')
          rows[digest] = int(row)
    return rows

  def append(self, digests: Sequence[str], features: np.ndarray) -> None:
    """Adds rows; the data is written before the index, so the index never points past it."""
    row_bytes = 4 * self.dim
    with open(self.dir / 'lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      with open(self._data, 'ab') as f:
        size = f.seek(0, os.SEEK_END)
        if size % row_bytes:  # a crashed writer left a partial row: pad it out, never reuse it
          f.write(b'\0' * (row_bytes - size % row_bytes))
          size += row_bytes - size % row_bytes
        f.write(np.ascontiguousarray(features, np.float32).tobytes())
      first = size // row_bytes
      with open(self._index, 'a') as f:
        f.write(''.join(f'{d}\t{first + i}\n' for i, d in enumerate(digests)))
    self.rows.update({d: first + i for i, d in enumerate(digests)})

  def matrix(self) -> np.ndarray:
    """All cached rows as a read-only memory map (R, D)."""
    count = self._data.stat().st_size // (4 * self.dim) if self._data.exists() else 0
    if count == 0:
      return np.zeros((0, self.dim), np.float32)
    return np.memmap(self._data, np.float32, 'r', shape=(count, self.dim))


def assemble(cache: FeatureCache, digests: list[str],
              out_path: str | os.PathLike[str] | None) -> np.ndarray:
  """Gathers the cached rows of ``digests`` in order, chunk by chunk (streams to ``out_path``)."""
  shape = (len(digests), cache.dim)
  if out_path is None:
    out = np.empty(shape, np.float32)
  else:
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(out_path, mode='w+', dtype=np.float32, shape=shape)
  if digests:
    matrix = cache.matrix()
    rows = np.fromiter((cache.rows[d] for d in digests), np.int64, len(digests))
    for start in range(0, len(rows), _ASSEMBLE_CHUNK):
      chunk = rows[start:start + _ASSEMBLE_CHUNK]
      out[start:start + len(chunk)] = matrix[chunk]
  if out_path is not None:
    out.flush()
  return out
