"""Where a similarity run's collection and queries come from: FID-300, class folders, explicit
references, a manifest, and the flag named by every refusal."""

import collections
import csv
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from fwjax.data import retrieval_sets

# Class folders of the test collection and their sizes; C is too small to give queries.
SIZES = {'A': 9, 'B': 8, 'C': 3}


def _png(path: pathlib.Path, value: int = 0) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((12, 8), value, np.uint8)).save(path)
  return path


@pytest.fixture
def collection(tmp_path):
  root = tmp_path / 'collection'
  for name, size in SIZES.items():
    for i in range(size):
      _png(root / name / f'{name.lower()}{i}.png', 10 * i)
  (root / 'A' / 'notes.txt').write_text('not an image')
  return root


def _all_images(root):
  return sorted(p for p in root.rglob('*.png'))


def test_fid300_dev_queries_are_its_probes_and_targets_its_labels(tmp_path, shared_dir):
  root = shared_dir / 'data' / 'fid300_dev'
  data = retrieval_sets.load_retrieval_set(tmp_path, fid300_dir=str(root), num_references=(1, 2))
  references = sorted((root / 'references').glob('*.png'))
  probes = sorted((root / 'probes').glob('*.jpg'))
  assert data.is_fid300 and len(references) == 1175 and len(probes) == 50
  assert data.items == references
  assert data.classes == [str(int(p.stem)) for p in references]  # each reference its own class
  with open(root / 'labels.csv', newline='') as f:
    truth = {row['probe']: row['reference'] for row in csv.DictReader(f)}
  single = data.queries(1)
  assert sorted(q.references[0] for q in single) == probes
  for query in single:
    (probe,) = query.references
    assert query.id == probe.stem
    # The query's class is that of the reference labels.csv names, and that reference exists.
    assert data.items[data.classes.index(query.target)].name == truth[probe.name]
  # R = 2: the probes of one reference two at a time; a reference's odd probe is left over.
  per_reference = collections.Counter(truth.values())
  pairs = data.queries(2)
  assert len(pairs) == sum(n // 2 for n in per_reference.values())
  for query in pairs:
    assert len(query.references) == 2
    assert {truth[p.name] for p in query.references} == {f'{int(query.target):05d}.png'}
  unused = 50 - 2 * len(pairs)
  assert f'1175 references, 50 probes; R=2: {unused} probe(s)' in data.description
  assert set(data.reference_paths()) == set(probes)


def test_class_folders_hold_out_the_drawn_queries(tmp_path, collection):
  data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                           num_references=(1, 3, 2), queries_per_class=2, seed=4)
  # Classes with more than 3 x 2 images give 2 queries each; C (3 images) gives none.
  assert sorted(data.query_sets) == [1, 2, 3]
  for r in (1, 2, 3):
    queries = data.queries(r)
    assert [q.id for q in queries] == ['A-0', 'A-1', 'B-0', 'B-1']
    assert [q.target for q in queries] == ['A', 'A', 'B', 'B']
    assert all(len(q.references) == r for q in queries)
    # Each query's images are of its class.
    assert all(p.parent.name == q.target for q in queries for p in q.references)
    # Fewer references are the first of the same draw.
    for q, largest in zip(queries, data.queries(3)):
      assert q.references == largest.references[:r]
  held = {p for q in data.queries(3) for p in q.references}
  assert len(held) == 12
  # Held-out images are not in the collection; everything else is, with its class.
  assert set(data.items) == set(_all_images(collection)) - held
  assert len(data.items) == sum(SIZES.values()) - 12
  assert data.classes == [p.parent.name for p in data.items]
  assert collections.Counter(data.classes) == {'A': 3, 'B': 2, 'C': 3}
  assert '(1 non-image files ignored)' in data.description
  assert '1 class(es) with <= 6 images not queried: C' in data.description
  assert '12 drawn as references' in data.description


def test_class_folder_draws_are_seeded(tmp_path, collection):
  def draw(seed):
    data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                             num_references=(1, 2), seed=seed)
    return [q.references for q in data.queries(2)], data.items

  assert draw(0) == draw(0)
  draws = {tuple(draw(seed)[0]) for seed in range(4)}
  assert len(draws) > 1  # the seed chooses the draw
  # One query per class by default: classes with more than R images each give one.
  queries, items = draw(0)
  assert [refs[0].parent.name for refs in queries] == ['A', 'B', 'C']
  assert len(items) == sum(SIZES.values()) - 6


def test_explicit_references(tmp_path, collection):
  outside = tmp_path / 'marks'
  single = _png(outside / 'mark1.png')
  _png(outside / 'shoe' / 'left.png')
  _png(outside / 'shoe' / 'right.png')
  inside = collection / 'B' / 'b2.png'
  data = retrieval_sets.load_retrieval_set(
      tmp_path, collection_dir=str(collection),
      references=[str(single), str(outside / 'shoe'), str(inside), str(collection / 'C')])
  queries = data.queries(1)
  assert list(data.query_sets) == [1]
  assert [(q.id, q.target) for q in queries] == [('mark1', None), ('shoe', None), ('b2', 'B'),
                                                 ('C', 'C')]
  # A folder is one query fusing all of its images.
  assert queries[1].references == (outside / 'shoe' / 'left.png', outside / 'shoe' / 'right.png')
  assert queries[3].references == tuple(sorted((collection / 'C').glob('*.png')))
  # References inside the collection leave it (they would find themselves); the rest stays.
  expected = [p for p in _all_images(collection) if p != inside and p.parent.name != 'C']
  assert data.items == expected and data.classes == [p.parent.name for p in expected]
  assert '4 reference(s) taken out of the collection' in data.description


def test_explicit_references_errors_name_the_flag(tmp_path, collection):
  reference = str(collection / 'A' / 'a0.png')
  with pytest.raises(ValueError, match='--num_references'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                      references=[reference], num_references=(1, 2))
  with pytest.raises(FileNotFoundError, match='--references: reference image not found'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                      references=[str(tmp_path / 'missing.png')])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='--references: folder .*empty holds no images'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                      references=[str(tmp_path / 'empty')])
  # A collection without class folders has nothing to draw queries from.
  flat = tmp_path / 'flat'
  _png(flat / 'one.png')
  _png(flat / 'two.png')
  with pytest.raises(ValueError, match='--references is required: collection_dir .*2 images'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(flat))


def test_manifest_collection(tmp_path):
  images = [_png(tmp_path / 'scans' / f's{i}.png', i) for i in range(4)]
  csv_path = tmp_path / 'scans' / 'manifest.csv'
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels'])
    writer.writerows([['s0.png', 'D01'], ['s1.png', ''], ['gone.png', ''], ['s2.png', ''],
                      ['s3.png', 'D04']])
  mark = _png(tmp_path / 'mark.png')
  work = tmp_path / 'run'
  work.mkdir()
  data = retrieval_sets.load_retrieval_set(work, manifest_path=str(csv_path),
                                           references=[str(mark), str(images[1])])
  # The manifest's readable images in file order, without classes; a reference leaves them.
  assert data.items == [images[0], images[2], images[3]] and data.classes is None
  assert [(q.id, q.references, q.target) for q in data.queries(1)] == [
      ('mark', (mark,), None), ('s1', (images[1],), None)]
  # The row whose image is missing is counted in the description and listed with its reason
  # (the job writes the list to skipped.csv).
  assert '(1 manifest rows left out)' in data.description
  assert [(p.name, reason) for p, reason in data.skipped] == [('gone.png',
                                                                'manifest row 4: no such file')]
  with pytest.raises(ValueError, match='--references is required: manifest'):
    retrieval_sets.load_retrieval_set(work, manifest_path=str(csv_path))


def test_source_errors_name_the_flag(tmp_path, collection, shared_dir):
  fid300 = str(shared_dir / 'data' / 'fid300_dev')
  with pytest.raises(ValueError, match=r'exactly one collection source: --collection_dir, '
                     r'--manifest, --fid300_dir or --synthetic \(got none\)'):
    retrieval_sets.load_retrieval_set(tmp_path)
  with pytest.raises(ValueError, match=r"\(got \['collection_dir', 'fid300_dir'\]\)"):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection), fid300_dir=fid300)
  with pytest.raises(ValueError, match=r"\(got \['manifest', 'synthetic'\]\)"):
    retrieval_sets.load_retrieval_set(tmp_path, manifest_path='m.csv', synthetic=3)
  missing = tmp_path / 'nowhere'
  for flag in ('collection_dir', 'fid300_dir'):
    with pytest.raises(FileNotFoundError, match=re.escape(f'--{flag}: no such folder: {missing}')):
      retrieval_sets.load_retrieval_set(tmp_path, **{flag: str(missing)})
  with pytest.raises(FileNotFoundError, match='--manifest: no such file'):
    retrieval_sets.load_retrieval_set(tmp_path, manifest_path=str(missing / 'm.csv'))
  for source in ({'fid300_dir': fid300}, {'synthetic': 3}):
    flag = next(iter(source))
    with pytest.raises(ValueError, match=f'--references cannot be combined with --{flag}'):
      retrieval_sets.load_retrieval_set(tmp_path, references=[str(collection / 'A')], **source)


def test_synthetic_set_in_fid300_layout(tmp_path):
  data = retrieval_sets.load_retrieval_set(tmp_path, synthetic=3, synthetic_probes_per_model=2,
                                           num_references=(1, 2))
  assert not data.is_fid300 and len(data.items) == 3 and data.classes == ['1', '2', '3']
  assert len(data.queries(1)) == 6 and len(data.queries(2)) == 3
  # Probes 1 and 2 are of model 1, 3 and 4 of model 2 ...
  assert [q.target for q in data.queries(1)] == ['1', '1', '2', '2', '3', '3']
  assert [q.id for q in data.queries(2)] == ['00001+00002', '00003+00004', '00005+00006']
  assert data.description.startswith('synthetic retrieval set')
