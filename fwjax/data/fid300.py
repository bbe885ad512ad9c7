"""FID-300 in the database's own layout (Kortylewski, Albrecht & Vetter 2014).

A root folder with ``references/*.png`` (the 1,175 laboratory impressions), the crime-scene
marks in ``tracks_cropped/*.jpg`` (the database) or ``probes/*.jpg`` (the development subset in
``shared/data/fid300_dev``), and the ground truth in ``label_table.csv`` (the database: rows
``probe_id,reference_id`` of integers, no header) or ``labels.csv`` (header ``probe,reference``,
file names). Ids are the numbers in the file names (``00042.png`` is reference 42).

Non-commercial research use only; cite Kortylewski et al., ACCV 2014 workshops.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib


@dataclasses.dataclass(frozen=True)
class FID300:
  """The files and ground truth of an FID-300 folder (references sorted by id)."""
  root: pathlib.Path
  references: list[pathlib.Path]
  reference_ids: list[int]
  probes: list[pathlib.Path]
  probe_ids: list[int]
  probe_to_reference: dict[int, int]


def _file_id(path: pathlib.Path) -> int:
  try:
    return int(path.stem)
  except ValueError:
    raise ValueError(f'FID-300 file names are numbers (00042.png); cannot read an id from '
                     f'{path}') from None


def _read_ground_truth(root: pathlib.Path) -> dict[int, int]:
  table = root / 'label_table.csv'
  labels = root / 'labels.csv'
  pairs = {}
  if table.is_file():
    with open(table, newline='') as f:
      for row_number, row in enumerate(csv.reader(f), start=1):
        if not row or not ''.join(row).strip():
          continue
        try:
          probe, reference = int(row[0]), int(row[1])
        except (ValueError, IndexError):
          if row_number == 1:  # a header row
            continue
          raise ValueError(f'{table} row {row_number}: expected probe_id,reference_id integers, '
                           f'got {row}') from None
        pairs[probe] = reference
    return pairs
  if labels.is_file():
    with open(labels, newline='') as f:
      reader = csv.DictReader(f)
      if not {'probe', 'reference'} <= set(reader.fieldnames or ()):
        raise ValueError(f'{labels}: expected a header probe,reference, got {reader.fieldnames}')
      for row_number, row in enumerate(reader, start=2):
        try:
          pairs[_file_id(pathlib.Path(row['probe']))] = _file_id(pathlib.Path(row['reference']))
        except ValueError as error:
          raise ValueError(f'{labels} row {row_number}: {error}') from None
    return pairs
  raise FileNotFoundError(f'{root}: no ground truth: expected label_table.csv (probe_id,'
                          'reference_id) or labels.csv (probe,reference)')


def load_fid300(root: str | os.PathLike) -> FID300:
  """Reads an FID-300 folder and checks that every file the ground truth names exists.

  Raises:
    FileNotFoundError: the folder, references, probes or ground truth are missing, or the
      ground truth names a probe or reference file that is not there.
    ValueError: a malformed ground-truth row or file name.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'FID-300 folder not found: {root}')
  ref_dir = root / 'references'
  references = sorted(ref_dir.glob('*.png'), key=_file_id) if ref_dir.is_dir() else []
  if not references:
    raise FileNotFoundError(f'{root}: no references/*.png')
  probe_dir = next((root / d for d in ('tracks_cropped', 'probes') if (root / d).is_dir()), None)
  if probe_dir is None:
    raise FileNotFoundError(f'{root}: no tracks_cropped/ or probes/ folder of crime-scene marks')
  probe_files = {_file_id(p): p for p in probe_dir.iterdir()
                 if p.suffix.lower() in ('.jpg', '.jpeg', '.png')}
  pairs = _read_ground_truth(root)
  reference_ids = [_file_id(p) for p in references]
  known = set(reference_ids)
  missing_probes = sorted(p for p in pairs if p not in probe_files)
  missing_refs = sorted({r for r in pairs.values() if r not in known})
  if missing_refs:
    raise FileNotFoundError(f'{root}: the ground truth names reference(s) {missing_refs[:10]} '
                            f'that are not in {ref_dir}')
  if missing_probes and len(missing_probes) == len(pairs):
    raise FileNotFoundError(f'{root}: none of the probes in the ground truth is in {probe_dir}')
  # The database's label table covers all 300 probes; a subset folder holds fewer: use those.
  probe_ids = sorted(p for p in pairs if p in probe_files)
  unlabelled = sorted(set(probe_files) - set(pairs))
  if unlabelled:
    raise ValueError(f'{probe_dir}: probe(s) {unlabelled[:10]} have no row in the ground truth')
  return FID300(root=root, references=references, reference_ids=reference_ids,
                probes=[probe_files[p] for p in probe_ids], probe_ids=probe_ids,
                probe_to_reference={p: pairs[p] for p in probe_ids})
