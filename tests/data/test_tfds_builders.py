"""fwjax.data.tfds_builders: both builders against an independent read (Pillow and the CSV).

Skipped where the ``tfds`` extra is not installed. Run where it is, e.g.
``pip install -e '.[tfds]' pytest && python -m pytest tests/test_tfds_builders.py``.
"""

import csv
import importlib
import pathlib
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip('tensorflow_datasets')

from fwjax import descriptors  # noqa: E402
from fwjax.data import manifest, synthetic, tfds_builders  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def _pillow_grey(path: pathlib.Path) -> np.ndarray:
  """The reference decode: plain Pillow, no fwjax code."""
  with Image.open(path) as image:
    assert image.mode == 'L', f'{path} is {image.mode}; the comparison assumes 8-bit grey'
    return np.asarray(image)


def _multi_hot(field: str) -> np.ndarray:
  """The reference label encoding: codes from the CSV, each child's parent added by hand."""
  codes = {c for c in field.split(';') if c}
  codes |= {c.split('-')[0] for c in codes}  # D02-01 (Target) implies D02 (Circular)
  return np.array([c in codes for c in descriptors.CODES], np.uint8)


def _build(builder, manual_dir: pathlib.Path):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder.as_data_source()


def _by_path(source) -> dict[str, dict]:
  examples = [source[i] for i in range(len(source))]
  return {e['path'].decode(): e for e in examples}


def _manifest_folder(tmp_path: pathlib.Path) -> tuple[pathlib.Path, list[dict]]:
  csv_path = synthetic.make_descriptor_set(tmp_path / 'src', 8, seed=5, height=96, width=40)
  with open(csv_path, newline='') as f:
    return csv_path, list(csv.DictReader(f))


# ----------------------------------------------------------------------------- manifest folders


def test_manifest_matches_pillow_and_the_csv(tmp_path):
  csv_path, rows = _manifest_folder(tmp_path)
  data_dir = tmp_path / 'tfds'
  builder = tfds_builders.FootwearManifest(data_dir=data_dir)
  sources = _build(builder, csv_path.parent)

  assert builder.info.file_format.value == 'array_record'
  assert builder.info.metadata['codes'] == list(descriptors.CODES)
  assert set(sources) == {'train', 'validation'}
  train, valid = _by_path(sources['train']), _by_path(sources['validation'])
  assert not set(train) & set(valid)
  assert set(train) | set(valid) == {row['path'] for row in rows}
  # Rows without a split column go where fwjax's own split (0.2, seed 0) sends them.
  expected_train, expected_valid = manifest.split_examples(manifest.read_manifest(csv_path), 0.2, 0)
  assert set(valid) == {e.path.relative_to(csv_path.parent).as_posix() for e in expected_valid}
  assert len(train) == len(expected_train)

  examples = {**train, **valid}
  for row in rows:
    example = examples[row['path']]
    expected = _pillow_grey(csv_path.parent / row['path'])
    assert example['image'].dtype == np.uint8
    assert example['image'].shape == expected.shape + (1,)
    np.testing.assert_array_equal(example['image'][..., 0], expected)
    assert example['labels'].dtype == np.uint8
    np.testing.assert_array_equal(example['labels'], _multi_hot(row['labels']))

  # A built dataset needs neither the source folder nor the builder's arguments to be read.
  shutil.rmtree(csv_path.parent)
  version_dir = data_dir / 'footwear_manifest' / 'default' / '1.0.0'
  for reopened in (tfds.builder_from_directory(version_dir),
                   tfds_builders.FootwearManifest(data_dir=data_dir)):
    again = _by_path(reopened.as_data_source()['validation'])
    assert set(again) == set(valid)
    for path, example in valid.items():
      np.testing.assert_array_equal(again[path]['image'], example['image'])


def test_manifest_split_column_decides_and_empty_splits_are_left_out(tmp_path):
  csv_path, rows = _manifest_folder(tmp_path)
  fixed = {row['path']: 'valid' if i % 3 == 0 else 'train' for i, row in enumerate(rows)}
  for name, splits in (('fixed', fixed), ('all_train', {p: 'train' for p in fixed})):
    with open(csv_path.parent / f'{name}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['path', 'labels', 'split'])
      writer.writerows([row['path'], row['labels'], splits[row['path']]] for row in rows)
    config = tfds_builders.ManifestConfig(name=name, csv_name=f'{name}.csv', seed=123)
    sources = _build(tfds_builders.FootwearManifest(data_dir=tmp_path / 'tfds', config=config),
                     csv_path.parent)
    got = {path: split for split, source in sources.items() for path in _by_path(source)}
    assert got == {p: {'valid': 'validation'}.get(s, s) for p, s in splits.items()}
  assert set(sources) == {'train'}  # all_train: no validation split rather than an empty one


def test_manifest_as_tf_data_where_tensorflow_is_installed(tmp_path):
  pytest.importorskip('tensorflow')  # only tfrecord + as_dataset need it
  csv_path, rows = _manifest_folder(tmp_path)
  builder = tfds_builders.FootwearManifest(data_dir=tmp_path / 'tfds', file_format='tfrecord')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(csv_path.parent)))
  assert builder.info.file_format.value == 'tfrecord'
  labels = {row['path']: row['labels'] for row in rows}
  seen = 0
  for split in ('train', 'validation'):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      path = example['path'].decode()
      np.testing.assert_array_equal(example['image'][..., 0],
                                    _pillow_grey(csv_path.parent / path))
      np.testing.assert_array_equal(example['labels'], _multi_hot(labels[path]))
      seen += 1
  assert seen == len(rows)


def test_manifest_with_an_unknown_code_stops_the_build(tmp_path):
  csv_path, rows = _manifest_folder(tmp_path)
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels'])
    writer.writerow([rows[0]['path'], 'D01;D99'])
  with pytest.raises(manifest.ManifestError, match=r'D99.*manifest.csv row 2'):
    _build(tfds_builders.FootwearManifest(data_dir=tmp_path / 'tfds'), csv_path.parent)


# ----------------------------------------------------------------------------- FID-300


def _fid300_subset(shared_dir: pathlib.Path, root: pathlib.Path, layout: str
                   ) -> list[tuple[str, str]]:
  """Copies the first 5 references the ground truth names and every probe that matches them.

  ``layout='dev'`` keeps fid300_dev's layout (probes/, labels.csv with file names);
  ``'database'`` is the database's (tracks_cropped/, label_table.csv of ids, no header).
  """
  source = shared_dir / 'data' / 'fid300_dev'
  with open(source / 'labels.csv', newline='') as f:
    pairs = [(row['probe'], row['reference']) for row in csv.DictReader(f)]
  references = list(dict.fromkeys(reference for _, reference in pairs))[:5]
  pairs = [(probe, reference) for probe, reference in pairs if reference in references]
  probe_dir = root / ('probes' if layout == 'dev' else 'tracks_cropped')
  (root / 'references').mkdir(parents=True)
  probe_dir.mkdir()
  for reference in references:
    shutil.copy(source / 'references' / reference, root / 'references' / reference)
  for probe, _ in pairs:
    shutil.copy(source / 'probes' / probe, probe_dir / probe)
  if layout == 'dev':
    with open(root / 'labels.csv', 'w', newline='') as f:
      csv.writer(f).writerows([('probe', 'reference')] + pairs)
  else:
    with open(root / 'label_table.csv', 'w', newline='') as f:
      csv.writer(f).writerows((int(p[:-4]), int(r[:-4])) for p, r in pairs)
  return pairs


@pytest.mark.parametrize('layout', ['dev', 'database'])
def test_fid300_matches_pillow_and_the_ground_truth(tmp_path, shared_dir, layout):
  root = tmp_path / 'FID-300'
  pairs = _fid300_subset(shared_dir, root, layout)
  builder = tfds_builders.Fid300(data_dir=tmp_path / 'tfds')
  sources = _build(builder, root)
  assert builder.info.file_format.value == 'array_record'
  assert set(sources) == {'references', 'probes'}

  probe_dir = 'probes' if layout == 'dev' else 'tracks_cropped'
  references = sorted({reference for _, reference in pairs})
  expected = {
      'references': [(f'references/{r}', int(r[:-4]), int(r[:-4])) for r in references],
      'probes': sorted((f'{probe_dir}/{p}', int(p[:-4]), int(r[:-4])) for p, r in pairs),
  }
  for split, items in expected.items():
    source = sources[split]
    assert len(source) == len(items)
    for i, (filename, file_id, reference_id) in enumerate(items):  # id order, not shuffled
      example = source[i]
      assert example['filename'].decode() == filename
      assert example['id'] == file_id
      assert example['reference_id'] == reference_id
      reference = _pillow_grey(root / filename)
      assert example['image'].dtype == np.uint8
      assert example['image'].shape == reference.shape + (1,)
      np.testing.assert_array_equal(example['image'][..., 0], reference)
  assert len(expected['probes']) > len(references)  # some reference is matched by several probes


# ----------------------------------------------------------------------------- packaging


def test_import_without_tfds_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # makes the import fail
  monkeypatch.delitem(sys.modules, 'fwjax.data.tfds_builders')
  with pytest.raises(ImportError, match=r"pip install 'fwjax\[tfds\]'"):
    importlib.import_module('fwjax.data.tfds_builders')


def test_nothing_else_in_fwjax_imports_it():
  users = [path.relative_to(REPO) for path in (REPO / 'fwjax').rglob('*.py')
           if path.name != 'tfds_builders.py' and 'tfds_builders' in path.read_text()]
  assert not users, f'{users} import fwjax.data.tfds_builders; the core must not need TFDS'
