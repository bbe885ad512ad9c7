"""Manifest folders: a directory of images plus a CSV of ``path,labels``.

The CSV has a header row with at least ``path`` and ``labels``; ``labels`` holds NFRC codes
separated by ``;`` (``D01;D04;D09``), parents implied by children are added
(:func:`fwjax.descriptors.parse_labels`). An optional ``split`` column (``train``/``valid``) fixes
the split. Paths are relative to ``root`` (default: the CSV's folder) unless absolute.

Every bad row is named: an unknown code, a missing file, an image that cannot be used
(:func:`fwjax.data.images.load_greyscale`). ``on_bad_image='error'`` (default) stops at the first;
``'skip'`` leaves the row out, writes it with its reason to ``report_path`` and logs the count.
Label errors always stop: a wrong code is a mistake in the manifest, not in an image. An empty
``labels`` field is one too, unless the caller says that empty means no descriptor
(``allow_empty_labels``): every NFRC impression has at least one (a plain sole is D14), so an
empty field is far more often a row not filled in than an image without a descriptor.

:func:`scan_manifest` does the reading and checking and writes nothing, for a job that must
decide whether to run before it writes anything; :func:`read_manifest` also writes the report.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import logging

from fwjax import descriptors
from fwjax.data import images as images_lib


@dataclasses.dataclass(frozen=True)
class Example:
  """One impression: its file, its NFRC codes (parents included) and its fixed split, if any."""
  path: pathlib.Path
  labels: tuple[str, ...]
  split: str | None = None


class ManifestError(ValueError):
  """A manifest row that cannot be used; the message names the file and row."""


@dataclasses.dataclass(frozen=True)
class SkippedRow:
  """A manifest row left out with ``on_bad_image='skip'``: its CSV row, path as written, reason."""
  row: int
  path: str
  reason: str


@dataclasses.dataclass(frozen=True)
class ManifestScan:
  """What :func:`scan_manifest` found: the usable examples and the rows it left out."""
  examples: list[Example]
  skipped: list[SkippedRow]


def scan_manifest(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  on_bad_image: str = 'error', check_images: bool = True,
                  max_pixels: int = images_lib.MAX_PIXELS,
                  allow_empty_labels: bool = False) -> ManifestScan:
  """Reads and validates a manifest, writing nothing (:func:`read_manifest` writes the report).

  Args:
    csv_path: the CSV file.
    root: folder the relative paths are relative to (default: the CSV's folder).
    on_bad_image: ``'error'`` or ``'skip'`` (skipped rows are returned with their reason).
    check_images: decode every image now (slower, but a bad image fails here, not mid-training).
    max_pixels: decompression-bomb guard passed to the decoder.
    allow_empty_labels: an empty ``labels`` field means the image has no descriptor; otherwise
      such rows are refused.

  Returns:
    The usable examples, in file order, and the skipped rows.

  Raises:
    ManifestError: missing columns, unknown codes, empty labels (all such rows named),
      duplicate paths, or (with 'error') a missing or unusable image, naming the CSV row.
  """
  if on_bad_image not in ('error', 'skip'):
    raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise ManifestError(f'manifest not found: {csv_path}')
  root = pathlib.Path(root) if root is not None else csv_path.parent
  examples, skipped, seen, unlabelled = [], [], {}, []
  with open(csv_path, newline='') as f:
    reader = csv.DictReader(f)
    missing = {'path', 'labels'} - set(reader.fieldnames or ())
    if missing:
      raise ManifestError(f'{csv_path}: header must have columns path,labels; missing '
                          f'{sorted(missing)} (found {reader.fieldnames})')
    for row_number, row in enumerate(reader, start=2):  # row 1 is the header
      where = f'{csv_path} row {row_number}'
      try:
        labels = descriptors.parse_labels(row['labels'] or '', where=where)
      except descriptors.LabelError as error:
        raise ManifestError(str(error)) from None
      if not labels and not allow_empty_labels:
        unlabelled.append(row_number)
      split = (row.get('split') or '').strip().lower() or None
      if split not in (None, 'train', 'valid'):
        raise ManifestError(f"{where}: split must be 'train' or 'valid', got {split!r}")
      relative = (row['path'] or '').strip()
      if not relative:
        raise ManifestError(f'{where}: empty path')
      path = pathlib.Path(relative)
      path = path if path.is_absolute() else root / path
      if str(path) in seen:
        raise ManifestError(f'{where}: {relative} is listed twice (first at row {seen[str(path)]})')
      seen[str(path)] = row_number
      if unlabelled:  # the run stops at the end of the file: decoding more images is wasted
        continue
      try:
        if check_images:
          images_lib.load_greyscale(path, max_pixels=max_pixels)
        elif not path.is_file():
          raise images_lib.BadImageError(path, 'no such file')
      except images_lib.BadImageError as error:
        if on_bad_image == 'error':
          raise ManifestError(f'{where}: {error} (on_bad_image=\'skip\' leaves such rows out, '
                              'with a report)') from None
        skipped.append(SkippedRow(row_number, relative, error.reason))
        continue
      examples.append(Example(path, labels, split))
  if unlabelled:
    rows = ', '.join(map(str, unlabelled[:20])) + (' ...' if len(unlabelled) > 20 else '')
    raise EmptyLabelsError(
        f'{csv_path}: {len(unlabelled)} row(s) with an empty labels field (rows {rows}); every '
        'NFRC impression has at least one descriptor (a plain sole is D14): fill them in',
        rows=unlabelled)
  return ManifestScan(examples, skipped)


class EmptyLabelsError(ManifestError):
  """Manifest rows with an empty labels field; ``rows`` holds their CSV row numbers."""

  def __init__(self, message: str, rows: list[int]):
    super().__init__(message)
    self.rows = rows


def write_skipped(report: str | os.PathLike, skipped: Sequence[SkippedRow]) -> pathlib.Path:
  """Writes skipped rows as a CSV of ``row,path,reason``; returns its path."""
  report = pathlib.Path(report)
  report.parent.mkdir(parents=True, exist_ok=True)
  with open(report, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['row', 'path', 'reason'])
    writer.writerows((s.row, s.path, s.reason) for s in skipped)
  return report


def read_manifest(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  on_bad_image: str = 'error', report_path: str | os.PathLike | None = None,
                  check_images: bool = True, max_pixels: int = images_lib.MAX_PIXELS,
                  allow_empty_labels: bool = False) -> list[Example]:
  """Reads and validates a manifest (:func:`scan_manifest`) and reports the rows it skipped.

  Args:
    csv_path: the CSV file.
    root: folder the relative paths are relative to (default: the CSV's folder).
    on_bad_image: ``'error'`` or ``'skip'`` (skipped rows go to ``report_path``).
    report_path: CSV written with ``row,path,reason`` for every skipped row (only with 'skip';
      default: ``<csv stem>_skipped.csv`` beside the CSV when something is skipped).
    check_images: decode every image now (slower, but a bad image fails here, not mid-training).
    max_pixels: decompression-bomb guard passed to the decoder.
    allow_empty_labels: an empty ``labels`` field means the image has no descriptor.

  Returns:
    The usable examples, in file order.

  Raises:
    ManifestError: as :func:`scan_manifest`.
  """
  scan = scan_manifest(csv_path, root=root, on_bad_image=on_bad_image, check_images=check_images,
                       max_pixels=max_pixels, allow_empty_labels=allow_empty_labels)
  if scan.skipped:
    csv_path = pathlib.Path(csv_path)
    report = write_skipped(report_path or csv_path.with_name(csv_path.stem + '_skipped.csv'),
                           scan.skipped)
    logging.warning('%s: skipped %d of %d rows with unusable images; see %s', csv_path,
                    len(scan.skipped), len(scan.skipped) + len(scan.examples), report)
  return scan.examples


def write_manifest(csv_path: str | os.PathLike, examples: Sequence[Example]) -> pathlib.Path:
  """Writes examples as a manifest CSV (paths relative to its folder where possible)."""
  csv_path = pathlib.Path(csv_path)
  csv_path.parent.mkdir(parents=True, exist_ok=True)
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    has_split = any(e.split for e in examples)
    writer.writerow(['path', 'labels'] + (['split'] if has_split else []))
    for e in examples:
      try:
        path = pathlib.Path(e.path).relative_to(csv_path.parent)
      except ValueError:
        path = pathlib.Path(e.path)
      writer.writerow([str(path), ';'.join(e.labels)] + ([e.split or ''] if has_split else []))
  return csv_path


def split_examples(examples: Sequence[Example], valid_fraction: float, seed: int, *,
                   valid_count: int | None = None) -> tuple[list[Example], list[Example]]:
  """Deterministic train/validation split, stratified so rare labels reach both sides.

  Rows with a ``split`` column keep it. The others are ordered by their rarest label (rarest
  first), shuffled within that order by ``seed``, and every ``1/valid_fraction``-th goes to
  validation, so each label's images are spread over both splits in proportion.

  ``valid_count`` (Budka et al. hold out a fixed 1,000 images) replaces the fraction: exactly
  that many of the rows without a fixed split go to validation, evenly spaced through the same
  order (every ``n/valid_count``-th of ``n`` rows, from a seeded phase), so the set is fixed by
  ``seed`` and the rows and is stratified the same way.

  Args:
    examples: the manifest's rows.
    valid_fraction: share of the rows without a fixed split that go to validation (ignored when
      ``valid_count`` is given).
    seed: seed of the order within a rarity and of the phase.
    valid_count: number of rows without a fixed split that go to validation, or None.

  Returns:
    (train, valid) lists.

  Raises:
    ValueError: a fraction outside (0, 1), or a count that is not in [1, n - 1] for the ``n``
      rows without a fixed split (a count must leave training images).
  """
  if valid_count is None and not 0.0 < valid_fraction < 1.0:
    raise ValueError(f'valid_fraction must be in (0, 1), got {valid_fraction}')
  fixed_train = [e for e in examples if e.split == 'train']
  fixed_valid = [e for e in examples if e.split == 'valid']
  free = [e for e in examples if e.split is None]
  if not free:
    return fixed_train, fixed_valid
  if valid_count is not None and not 1 <= valid_count < len(free):
    raise ValueError(f'valid_count={valid_count} must be at least 1 and leave training images: '
                     f'there are {len(free)} rows without a fixed split ({len(examples)} in all)')
  counts = descriptors.encode_many([e.labels for e in free]).sum(axis=0)
  rng = np.random.default_rng(seed)
  jitter = rng.random(len(free))

  def rarity(i: int) -> tuple[int, float]:
    present = [counts[descriptors.INDEX[c]] for c in free[i].labels]
    return (min(present) if present else len(free) + 1, jitter[i])

  order = sorted(range(len(free)), key=rarity)
  train, valid = list(fixed_train), list(fixed_valid)
  phase = rng.random()
  if valid_count is not None:
    # Integer arithmetic, so exactly valid_count distinct positions in [0, n).
    n = len(free)
    chosen = set(((np.arange(valid_count) * n + int(phase * n)) // valid_count).tolist())
    for position, i in enumerate(order):
      (valid if position in chosen else train).append(free[i])
    return train, valid
  accumulated = phase  # random phase, then every 1/valid_fraction-th item
  for i in order:
    accumulated += valid_fraction
    if accumulated >= 1.0:
      accumulated -= 1.0
      valid.append(free[i])
    else:
      train.append(free[i])
  return train, valid
