"""Manifest folders: a directory of images plus a CSV of ``path,labels``.

The CSV has a header row with at least ``path`` and ``labels``; ``labels`` holds NFRC codes
separated by ``;`` (``D01;D04;D09``), parents implied by children are added
(:func:`fwjax.descriptors.parse_labels`). An optional ``split`` column (``train``/``valid``) fixes
the split. Paths are relative to ``root`` (default: the CSV's folder) unless absolute.

Every bad row is named: an unknown code, a missing file, an image that cannot be used
(:func:`fwjax.data.images.load_greyscale`). ``on_bad_image='error'`` (default) stops at the first;
``'skip'`` leaves the row out, writes it with its reason to ``report_path`` and logs the count.
Label errors always stop: a wrong code is a mistake in the manifest, not in an image.
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


def read_manifest(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  on_bad_image: str = 'error', report_path: str | os.PathLike | None = None,
                  check_images: bool = True, max_pixels: int = images_lib.MAX_PIXELS
                  ) -> list[Example]:
  """Reads and validates a manifest.

  Args:
    csv_path: the CSV file.
    root: folder the relative paths are relative to (default: the CSV's folder).
    on_bad_image: ``'error'`` or ``'skip'`` (skipped rows go to ``report_path``).
    report_path: CSV written with ``row,path,reason`` for every skipped row (only with 'skip';
      default: ``<csv stem>_skipped.csv`` beside the CSV when something is skipped).
    check_images: decode every image now (slower, but a bad image fails here, not mid-training).
    max_pixels: decompression-bomb guard passed to the decoder.

  Returns:
    The usable examples, in file order.

  Raises:
    ManifestError: missing columns, unknown codes, duplicate paths, or (with 'error') a missing
      or unusable image, naming the CSV row.
  """
  if on_bad_image not in ('error', 'skip'):
    raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise ManifestError(f'manifest not found: {csv_path}')
  root = pathlib.Path(root) if root is not None else csv_path.parent
  examples, skipped, seen = [], [], {}
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
      try:
        if check_images:
          images_lib.load_greyscale(path, max_pixels=max_pixels)
        elif not path.is_file():
          raise images_lib.BadImageError(path, 'no such file')
      except images_lib.BadImageError as error:
        if on_bad_image == 'error':
          raise ManifestError(f'{where}: {error} (use --on_bad_image=skip to leave such rows out '
                              'with a report)') from None
        skipped.append((row_number, relative, error.reason))
        continue
      examples.append(Example(path, labels, split))
  if skipped:
    report = pathlib.Path(report_path) if report_path else csv_path.with_name(
        csv_path.stem + '_skipped.csv')
    report.parent.mkdir(parents=True, exist_ok=True)
    with open(report, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['row', 'path', 'reason'])
      writer.writerows(skipped)
    logging.warning('%s: skipped %d of %d rows with unusable images; see %s', csv_path,
                    len(skipped), len(skipped) + len(examples), report)
  return examples


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
