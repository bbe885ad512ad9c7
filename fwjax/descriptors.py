"""The 17 descriptors of the UK National Footwear Reference Collection (NFRC).

A descriptor is named by its NFRC code (``'D01'``, ``'D02-01'`` ...). A child implies its
parent: an impression with a Target (``D02-01``) also has Circular (``D02``). Label vectors
throughout fwjax use the order of :data:`CODES`.

Example:
  >>> parse_labels('D02-01;D09')
  ('D02', 'D02-01', 'D09')
  >>> encode(('D02', 'D02-01')).nonzero()[0].tolist()
  [3, 4]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

#: (code, name, parent) for every descriptor, in the order used by label vectors.
TABLE: tuple[tuple[str, str, str | None], ...] = (
    ('D01', 'Bar', None),
    ('D01-01', 'Wavy', 'D01'),
    ('D01-02', 'Curved-wavy', 'D01'),
    ('D02', 'Circular', None),
    ('D02-01', 'Target', 'D02'),
    ('D03', '3 sided', None),
    ('D04', '4 sided', None),
    ('D05', '5 sided', None),
    ('D06', '6 sided', None),
    ('D07', 'Complex', None),
    ('D08', 'Zigzag', None),
    ('D09', 'Text', None),
    ('D10', 'Logo', None),
    ('D11', 'Lattice', None),
    ('D12', 'Textured', None),
    ('D13', 'Hollow', None),
    ('D14', 'Plain', None),
)

CODES: tuple[str, ...] = tuple(code for code, _, _ in TABLE)
NAMES: dict[str, str] = {code: name for code, name, _ in TABLE}
PARENTS: dict[str, str | None] = {code: parent for code, _, parent in TABLE}
INDEX: dict[str, int] = {code: i for i, code in enumerate(CODES)}
NUM_LABELS: int = len(CODES)

_SEPARATORS = re.compile(r'[;,|\s]+')


class LabelError(ValueError):
  """A label string holds something that is not an NFRC descriptor code."""


def with_parents(codes: Iterable[str]) -> tuple[str, ...]:
  """Returns ``codes`` with every implied parent added, in :data:`CODES` order."""
  closed = set()
  for code in codes:
    while code is not None:
      closed.add(code)
      code = PARENTS[code]
  return tuple(code for code in CODES if code in closed)


def parse_labels(text: str, *, where: str = '') -> tuple[str, ...]:
  """Parses ``'D01;D04;D09'`` into validated codes with their parents added.

  Codes may be separated by ``;``, ``,``, ``|`` or white space. Case is ignored.

  Args:
    text: the label field, e.g. from a manifest row.
    where: where the text came from (``'labels.csv row 12'``), for the error message.

  Returns:
    The codes, parents included, in :data:`CODES` order. An empty field gives ``()``.

  Raises:
    LabelError: a token is not one of the 17 NFRC codes.
  """
  tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
  unknown = [t for t in tokens if t.upper() not in INDEX]
  if unknown:
    location = f' in {where}' if where else ''
    raise LabelError(
        f'unknown NFRC descriptor code(s) {unknown}{location}; '
        f'expected codes from {", ".join(CODES)}')
  return with_parents(t.upper() for t in tokens)


def encode(codes: Iterable[str]) -> np.ndarray:
  """Returns the (17,) uint8 indicator vector of ``codes`` (parents are not added here)."""
  vector = np.zeros(NUM_LABELS, np.uint8)
  for code in codes:
    vector[INDEX[code]] = 1
  return vector


def encode_many(label_sets: Sequence[Iterable[str]]) -> np.ndarray:
  """Returns the (N, 17) uint8 indicator matrix of a sequence of code sets."""
  matrix = np.zeros((len(label_sets), NUM_LABELS), np.uint8)
  for row, codes in enumerate(label_sets):
    for code in codes:
      matrix[row, INDEX[code]] = 1
  return matrix


def decode(vector: np.ndarray, threshold: float = 0.5) -> tuple[str, ...]:
  """Returns the codes whose entry in a (17,) vector of indicators or scores exceeds ``threshold``."""
  vector = np.asarray(vector)
  if vector.shape != (NUM_LABELS,):
    raise ValueError(f'expected a vector of {NUM_LABELS} entries, got shape {vector.shape}')
  return tuple(code for code, value in zip(CODES, vector) if value > threshold)
