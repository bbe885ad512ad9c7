"""Where a similarity run's collection and queries come from: FID-300, class folders, explicit
references, a manifest, and the flag named by every refusal."""

import collections
import csv
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from fwjax import distances
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
                                           num_references=(1, 3, 2), queries_per_class=2, seed=4,
                                           keep_references=False)
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
  assert '12 drawn as references: references held out of the collection' in data.description
  # The same draw with the references kept: the whole collection is ranked.
  kept = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                           num_references=(1, 3, 2), queries_per_class=2, seed=4)
  assert kept.query_sets == data.query_sets
  assert kept.items == _all_images(collection)
  assert '12 drawn as references: references kept in the collection' in kept.description


def test_class_folder_draws_are_seeded(tmp_path, collection):
  def draw(seed):
    data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(collection),
                                             num_references=(1, 2), seed=seed)
    return [q.references for q in data.queries(2)], data.items

  assert draw(0) == draw(0)
  draws = {tuple(draw(seed)[0]) for seed in range(4)}
  assert len(draws) > 1  # the seed chooses the draw
  # One query per class by default: classes with more than R images each give one. The drawn
  # images stay in the collection by default (the thesis).
  queries, items = draw(0)
  assert [refs[0].parent.name for refs in queries] == ['A', 'B', 'C']
  assert items == _all_images(collection)


def test_explicit_references(tmp_path, collection):
  outside = tmp_path / 'marks'
  single = _png(outside / 'mark1.png')
  _png(outside / 'shoe' / 'left.png')
  _png(outside / 'shoe' / 'right.png')
  inside = collection / 'B' / 'b2.png'
  data = retrieval_sets.load_retrieval_set(
      tmp_path, collection_dir=str(collection),
      references=[str(single), str(outside / 'shoe'), str(inside), str(collection / 'C')],
      keep_references=False)
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
  assert ('4 reference image(s) in the collection: references held out of the collection'
          in data.description)
  # Kept (the default), the same references are ranked with the rest, each with its class.
  kept = retrieval_sets.load_retrieval_set(
      tmp_path, collection_dir=str(collection),
      references=[str(single), str(outside / 'shoe'), str(inside), str(collection / 'C')])
  assert kept.query_sets == data.query_sets
  assert kept.items == _all_images(collection)
  assert kept.classes == [p.parent.name for p in kept.items]
  assert '4 reference image(s) in the collection: references kept' in kept.description


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
                                           references=[str(mark), str(images[1])],
                                           keep_references=False)
  # The manifest's readable images in file order, without classes; a reference held out leaves
  # them, a reference kept (the default) stays.
  assert data.items == [images[0], images[2], images[3]] and data.classes is None
  assert retrieval_sets.load_retrieval_set(
      work, manifest_path=str(csv_path), references=[str(mark), str(images[1])]).items == images
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


def _distinct_folders(root, sizes, seed=0):
  """Class folders of images that all differ (random pixels): no two give the same features."""
  rng = np.random.default_rng(seed)
  for name, size in sizes.items():
    for i in range(size):
      path = root / name / f'{i}.png'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(path)
  return root


def _pixels(paths):
  return np.stack([np.asarray(Image.open(p), np.float32).ravel() for p in paths])


@pytest.mark.parametrize('keep', [True, False])
def test_kept_references_are_ranked_items_of_their_class(tmp_path, keep):
  root = _distinct_folders(tmp_path / 'col', {'a': 6, 'b': 5, 'c': 7})
  data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), seed=2,
                                           num_references=(1, 2), keep_references=keep)
  references = data.reference_paths()
  assert len(references) == 6  # one query per class, 2 images each for R = 2
  position = {p: i for i, p in enumerate(data.items)}
  if not keep:
    assert not set(references) & set(data.items)
    assert len(data.items) == 18 - 6
    return
  assert data.items == sorted(root.rglob('*.png'))
  for path in references:  # in the collection, with its own class
    assert data.classes[position[path]] == path.parent.name
  # Ranked by exact features (the pixels), a query's reference is its own nearest item.
  queries = data.queries(1)
  dist, order = distances.rank(_pixels([q.references[0] for q in queries]), _pixels(data.items),
                               'manhattan')
  assert [data.items[i] for i in order[:, 0]] == [q.references[0] for q in queries]
  np.testing.assert_array_equal(dist[:, 0], 0)
  assert (dist[:, 1] > 0).all()
  # ... and it is relevant to the query: first relevant rank 1.
  classes = np.asarray(data.classes)
  relevance = classes[order] == np.asarray([q.target for q in queries])[:, None]
  assert relevance[:, 0].all() and (relevance.sum(axis=1) == [6, 5, 7]).all()


def test_num_classes_takes_the_first_classes_in_sorted_order(tmp_path):
  sizes = {'d': 4, 'b': 5, 'a': 3, 'c': 4}
  root = _distinct_folders(tmp_path / 'col', sizes)
  every = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), seed=3)
  data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), seed=3,
                                           num_classes=2)
  assert sorted(set(data.classes)) == ['a', 'b']
  assert data.items == sorted(root.glob('a/*.png')) + sorted(root.glob('b/*.png'))
  assert data.classes == ['a'] * 3 + ['b'] * 5
  # The draws of the classes used are those of a run on every class.
  assert data.queries(1) == every.queries(1)[:2]
  assert [q.target for q in data.queries(1)] == ['a', 'b']
  assert 'collection_dir' in data.description and ': 8 images of 16' in data.description
  assert 'the first 2 of 4 classes in sorted order (8 images of the others left out)' in (
      data.description)
  all_four = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), num_classes=4)
  assert len(all_four.items) == 16
  with pytest.raises(ValueError, match=r'--num_classes=5 but the collection has 4 classes'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), num_classes=5)
  with pytest.raises(ValueError, match=r'--num_classes=-1'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), num_classes=-1)


def test_distractor_classes_are_ranked_but_never_queried_or_relevant(tmp_path):
  root = _distinct_folders(tmp_path / 'col', {'a': 5, 'others': 6, 'b': 3, 'c': 5})
  data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), seed=1,
                                           distractor_classes=('others',), num_classes=2,
                                           queries_per_class=2, num_references=(1, 2))
  # 'others' is no class for --num_classes: a and b are the first two; c is left out.
  others = sorted(root.glob('others/*.png'))
  assert set(others) <= set(data.items) and len(data.items) == 5 + 6 + 3
  assert collections.Counter(data.classes) == {'a': 5, 'others': 6, 'b': 3}
  # Queries come from a only (b's 3 images are too few for 2 queries of 2); none from others.
  queries = data.queries(1)
  assert [q.target for q in queries] == ['a', 'a']
  assert not {p for q in queries for p in q.references} & set(others)
  # Never relevant: no query has the distractor's class.
  assert all(q.target != 'others' for q in queries)
  assert 'distractor classes others (6 images): ranked, never queried or relevant' in (
      data.description)
  # A reference that lies in a distractor folder has no class (its query is not scored).
  explicit = retrieval_sets.load_retrieval_set(
      tmp_path, collection_dir=str(root), distractor_classes=('others',),
      references=[str(others[0]), str(root / 'a' / '0.png')])
  assert [q.target for q in explicit.queries(1)] == [None, 'a']


def test_class_settings_errors_name_the_flag(tmp_path, shared_dir):
  names = [f'k{i:02d}' for i in range(12)]
  root = _distinct_folders(tmp_path / 'col', {n: 2 for n in names})
  with pytest.raises(ValueError, match=r'--distractor_classes: no class folder others in the '
                     r'collection; its 12 classes: k00, k01, .*, k09 \.\.\.$'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root),
                                      distractor_classes=('k01', 'others'))
  with pytest.raises(ValueError, match=r'--num_classes=12 but the collection has 11 classes '
                     'besides --distractor_classes'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root), num_classes=12,
                                      distractor_classes=('k03',))
  flat = tmp_path / 'flat'
  _png(flat / 'one.png')
  with pytest.raises(ValueError, match='--num_classes needs a --collection_dir whose images all'):
    retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(flat), num_classes=1,
                                      references=[str(flat / 'one.png')])
  with pytest.raises(ValueError, match='--distractor_classes applies to a class-folder '
                     '--collection_dir, not to --fid300_dir'):
    retrieval_sets.load_retrieval_set(tmp_path, fid300_dir=str(shared_dir / 'data' / 'fid300_dev'),
                                      distractor_classes=('others',))


def test_a_class_folder_of_links_keeps_its_class(tmp_path):
  # A distractor class is often linked in from elsewhere (make_synthetic --mode=photo_folders
  # does so): its images belong to the folder they are listed in, not to where links lead.
  root = _distinct_folders(tmp_path / 'col', {'a': 4, 'b': 4})
  elsewhere = _distinct_folders(tmp_path / 'elsewhere', {'x': 3}, seed=5)
  (root / 'others').mkdir()
  for path in sorted((elsewhere / 'x').glob('*.png')):
    (root / 'others' / path.name).symlink_to(path)
  data = retrieval_sets.load_retrieval_set(tmp_path, collection_dir=str(root),
                                           distractor_classes=('others',))
  assert collections.Counter(data.classes) == {'a': 4, 'b': 4, 'others': 3}
  assert [q.target for q in data.queries(1)] == ['a', 'b']
