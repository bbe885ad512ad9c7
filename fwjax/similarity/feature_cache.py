"""The on-disk feature cache of ``similarity.features``: rows keyed by image content, per config.

The cache of one configuration (model identity, stage, resolution, composition, resize policy;
hashed into the folder name) is an append-only float32 matrix (``features.f32``, rows of D) and an
index (``index.tsv``: sha256 of an image file's bytes, row, CRC-32 of the row's bytes). Appends
hold an exclusive ``flock``, so two runs can share a cache; the data is written before the index,
so a crash leaves at most rows nobody points to (recomputed next time), never an index entry past
the data. The features of a collection are gathered chunk by chunk into a memory-mapped ``.npy``
(:func:`assemble`), so a collection larger than memory never has to fit in it.

The cache does not trust its file: every row read is checked against its CRC-32, and a row that
fails it, or that lies past the end of a truncated file, is reported by :func:`assemble` so the
caller re-extracts its image. CRC-32 rather than a cryptographic hash because the threat is a
damaged or truncated file, not a forger: it catches every change of up to 32 consecutive bits
and all but 1 in 2^32 of the others, and zlib computes it at memory speed (about 1 ms per 1000
rows of 2048 floats), against a disk read of the same rows that costs more. Keeping a checksum per
row, not per block, makes a damaged block cost the re-extraction of its bad rows only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

_ASSEMBLE_CHUNK = 4096


class FeatureCacheError(RuntimeError):
  """The feature cache cannot be made whole (its rows keep failing their checksums)."""


def _checksums(rows: np.ndarray) -> list[int]:
  """CRC-32 of each row's bytes (rows: (n, D) float32, C-contiguous)."""
  return [zlib.crc32(row) for row in np.ascontiguousarray(rows, np.float32)]


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
    self.data_path = self.dir / 'features.f32'
    self._index = self.dir / 'index.tsv'
    self.rows: dict[str, int] = {}
    self.checksums: dict[str, int] = {}
    self._read_index()

  def _read_index(self) -> None:
    if not self._index.exists():
      return
    malformed = []
    for number, line in enumerate(self._index.read_text().splitlines(keepends=True), start=1):
      if not line.endswith('\n'):  # a line cut short by a crash: its row is recomputed
        continue
      fields = line.rstrip('\n').split('\t')
      try:
        digest, row, checksum = fields[0], int(fields[1]), int(fields[2], 16)
      except (IndexError, ValueError):
        malformed.append(number)
        continue
      if len(fields) != 3 or not digest or row < 0:
        malformed.append(number)
        continue
      # A digest listed again (its row was re-extracted) points to the later row.
      self.rows[digest], self.checksums[digest] = row, checksum
    if malformed:
      logging.warning('%s: ignoring %d malformed line(s) (lines %s); their images are extracted '
                      'again', self._index, len(malformed), _some(malformed))

  def append(self, digests: Sequence[str], features: np.ndarray) -> None:
    """Adds rows; the data is written before the index, so the index never points past it."""
    row_bytes = 4 * self.dim
    features = np.ascontiguousarray(features, np.float32)
    checksums = _checksums(features)
    with open(self.dir / 'lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      with open(self.data_path, 'ab') as f:
        size = f.seek(0, os.SEEK_END)
        if size % row_bytes:  # a crashed writer left a partial row: pad it out, never reuse it
          f.write(b'\0' * (row_bytes - size % row_bytes))
          size += row_bytes - size % row_bytes
        f.write(features.tobytes())
      first = size // row_bytes
      self._append_index(digests, first, checksums)
    self.rows.update({d: first + i for i, d in enumerate(digests)})
    self.checksums.update(zip(digests, checksums))

  def _append_index(self, digests: Sequence[str], first: int, checksums: Sequence[int]) -> None:
    lines = ''.join(f'{d}\t{first + i}\t{c:08x}\n'
                    for i, (d, c) in enumerate(zip(digests, checksums)))
    with open(self._index, 'a+b') as f:
      # A crash can leave the last line without its newline: end it, so the new lines stay
      # whole (the cut line then reads as malformed and is ignored).
      if f.seek(0, os.SEEK_END):
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          f.write(b'\n')
      f.write(lines.encode())

  def forget(self, digests: Sequence[str]) -> None:
    """Treats ``digests`` as not cached (their rows are damaged); they are extracted again."""
    for digest in digests:
      self.rows.pop(digest, None)
      self.checksums.pop(digest, None)

  def matrix(self) -> np.ndarray:
    """All complete rows of the file as a read-only memory map (R, D), not checked."""
    count = self.data_path.stat().st_size // (4 * self.dim) if self.data_path.exists() else 0
    if count == 0:
      return np.zeros((0, self.dim), np.float32)
    return np.memmap(self.data_path, np.float32, 'r', shape=(count, self.dim))


def _some(numbers: Sequence[int], limit: int = 10) -> str:
  shown = ', '.join(map(str, numbers[:limit]))
  return shown + (f' ... ({len(numbers)} in all)' if len(numbers) > limit else '')


def assemble(cache: FeatureCache, digests: list[str], out_path: str | os.PathLike[str] | None
             ) -> tuple[np.ndarray, list[int]]:
  """Gathers the cached rows of ``digests`` in order, checking each against its checksum.

  Args:
    cache: the cache holding a row for every digest.
    digests: the rows wanted, in order.
    out_path: stream them into this ``.npy`` (memory-mapped); None gathers them in memory.

  Returns:
    ``(features, damaged)``: the (N, D) features, and the positions in ``digests`` whose row is
    missing from the file (truncated) or fails its checksum; their rows of ``features`` are
    zero and must not be used. A warning names the file and the damaged rows.
  """
  shape = (len(digests), cache.dim)
  if out_path is None:
    out = np.empty(shape, np.float32)
  else:
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(out_path, mode='w+', dtype=np.float32, shape=shape)
  damaged: list[int] = []
  missing_rows, corrupt_rows = [], []
  if digests:
    matrix = cache.matrix()
    rows = np.fromiter((cache.rows[d] for d in digests), np.int64, len(digests))
    expected = [cache.checksums[d] for d in digests]
    for start in range(0, len(rows), _ASSEMBLE_CHUNK):
      chunk = rows[start:start + _ASSEMBLE_CHUNK]
      present = chunk < len(matrix)
      block = np.zeros((len(chunk), cache.dim), np.float32)
      block[present] = matrix[chunk[present]]
      for i, (row, checksum) in enumerate(zip(chunk, _checksums(block))):
        if not present[i]:
          missing_rows.append(int(row))
        elif checksum != expected[start + i]:
          corrupt_rows.append(int(row))
        else:
          continue
        damaged.append(start + i)
        block[i] = 0
      out[start:start + len(chunk)] = block
  if out_path is not None:
    out.flush()
  if damaged:
    size = cache.data_path.stat().st_size if cache.data_path.exists() else 0
    missing_rows, corrupt_rows = sorted(set(missing_rows)), sorted(set(corrupt_rows))
    parts = []
    if corrupt_rows:
      parts.append(f'{len(corrupt_rows)} fail their checksum (rows {_some(corrupt_rows)})')
    if missing_rows:
      parts.append(f'{len(missing_rows)} lie past the end of the file ({size} bytes, '
                   f'{size // (4 * cache.dim)} complete rows; rows {_some(missing_rows)})')
    logging.warning('feature cache %s is damaged: of %d rows read, %s; their images are '
                    'extracted again', cache.data_path, len(digests), '; '.join(parts))
  return out, damaged
