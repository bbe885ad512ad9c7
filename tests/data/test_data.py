"""fwjax.data: decoding, manifests, FID-300, synthetic shoeprints and the resized cache."""

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from fwjax import descriptors, resample
from fwjax.data import cache, fid300, images, manifest, synthetic


def _save(path, array, mode=None, **kwargs):
  Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(
      path, **kwargs)
  return path


# ----------------------------------------------------------------------------- decoding


def test_load_greyscale_accepts_grey_and_grey_saved_as_colour(tmp_path):
  grey = np.arange(60, dtype=np.uint8).reshape(6, 10)
  np.testing.assert_array_equal(images.load_greyscale(_save(tmp_path / 'a.png', grey)), grey)
  rgb = np.repeat(grey[..., None], 3, axis=2)
  np.testing.assert_array_equal(images.load_greyscale(_save(tmp_path / 'b.png', rgb)), grey)
  opaque = np.concatenate([rgb, np.full((6, 10, 1), 255, np.uint8)], axis=2)
  np.testing.assert_array_equal(images.load_greyscale(_save(tmp_path / 'c.png', opaque)), grey)


@pytest.mark.parametrize('kind, message', [
    ('colour', 'colour image'), ('alpha', 'transparency'), ('sixteen', '16/32-bit'),
    ('palette', 'palette image with colours'), ('truncated', 'truncated'),
    ('text', 'not an image'), ('missing', 'no such file'), ('bomb', 'decompression-bomb'),
])
def test_load_greyscale_refuses_with_the_reason(tmp_path, kind, message):
  rng = np.random.default_rng(0)
  path = tmp_path / f'{kind}.png'
  if kind == 'colour':
    _save(path, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  elif kind == 'alpha':
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 10
    _save(path, rgba)
  elif kind == 'sixteen':
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path)
  elif kind == 'palette':
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert('P').save(path)
  elif kind == 'truncated':
    _save(path, rng.integers(0, 256, (300, 300), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:2000])
  elif kind == 'text':
    path.write_text('not an image')
  elif kind == 'bomb':
    _save(path, np.zeros((100, 100), np.uint8))
  with pytest.raises(images.BadImageError, match=message) as error:
    images.load_greyscale(path, **({'max_pixels': 5000} if kind == 'bomb' else {}))
  assert str(path) in str(error.value)


def test_a_scan_over_pillows_default_limit_loads(tmp_path):
  # 9,100 x 10,000 = 91 Mpx: over Pillow's 89.5 Mpx warning limit, under fwjax's explicit one.
  path = tmp_path / 'big.png'
  Image.new('L', (9100, 10000), 200).save(path, optimize=False, compress_level=1)
  assert images.load_greyscale(path).shape == (10000, 9100)


# ----------------------------------------------------------------------------- manifests


def _manifest(tmp_path, rows):
  with open(tmp_path / 'm.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels'])
    writer.writerows(rows)
  return tmp_path / 'm.csv'


def test_manifest_adds_parents_and_names_bad_rows(tmp_path):
  _save(tmp_path / 'a.png', np.zeros((20, 8), np.uint8))
  (tmp_path / 'b.png').write_text('garbage')
  path = _manifest(tmp_path, [('a.png', 'D02-01;D09'), ('b.png', 'D04'), ('c.png', 'D01')])
  with pytest.raises(manifest.ManifestError, match=r'm.csv row 3: .*b.png.*not an image'):
    manifest.read_manifest(path)
  report = tmp_path / 'skipped.csv'
  examples = manifest.read_manifest(path, on_bad_image='skip', report_path=report)
  assert [e.labels for e in examples] == [('D02', 'D02-01', 'D09')]
  rows = list(csv.DictReader(open(report)))
  assert [(r['row'], r['path']) for r in rows] == [('3', 'b.png'), ('4', 'c.png')]
  assert 'no such file' in rows[1]['reason']


def test_manifest_unknown_code_stops_with_the_row(tmp_path):
  _save(tmp_path / 'a.png', np.zeros((20, 8), np.uint8))
  with pytest.raises(manifest.ManifestError, match=r"\['D42'\] in .*m.csv row 2"):
    manifest.read_manifest(_manifest(tmp_path, [('a.png', 'D01;D42')]), on_bad_image='skip')


def test_split_is_deterministic_stratified_and_complete():
  examples = [manifest.Example(pathlib.Path(f'{i}.png'), ('D05',) if i % 10 == 0 else ('D01',))
              for i in range(200)]
  train, valid = manifest.split_examples(examples, 0.2, seed=3)
  assert sorted(map(str, (e.path for e in train + valid))) == sorted(
      str(e.path) for e in examples)
  assert len(valid) == 40
  rare_valid = sum(e.labels == ('D05',) for e in valid)
  assert 3 <= rare_valid <= 5          # the rare label is split in proportion (20 in all)
  assert manifest.split_examples(examples, 0.2, seed=3) == (train, valid)


def test_split_by_count_holds_out_exactly_that_many_stratified_and_fixed():
  examples = [manifest.Example(pathlib.Path(f'{i}.png'), ('D05',) if i % 10 == 0 else ('D01',))
              for i in range(200)]
  train, valid = manifest.split_examples(examples, 0.2, seed=3, valid_count=30)
  assert len(valid) == 30 and len(train) == 170
  assert sorted(str(e.path) for e in train + valid) == sorted(str(e.path) for e in examples)
  assert 2 <= sum(e.labels == ('D05',) for e in valid) <= 4  # 20 rare images x 30/200 = 3
  # Fixed by the seed (the fraction is ignored); another seed draws another set.
  assert manifest.split_examples(examples, 0.5, seed=3, valid_count=30) == (train, valid)
  other = manifest.split_examples(examples, 0.2, seed=4, valid_count=30)[1]
  assert len(other) == 30 and other != valid
  for count in (1, 199):  # the extremes leave both sides non-empty
    assert len(manifest.split_examples(examples, 0.2, seed=0, valid_count=count)[1]) == count
  # Rows with a fixed split keep it; the count is drawn from the others.
  fixed = [manifest.Example(pathlib.Path('v.png'), ('D01',), 'valid'),
           manifest.Example(pathlib.Path('t.png'), ('D01',), 'train')]
  train, valid = manifest.split_examples(fixed + examples, 0.2, seed=3, valid_count=30)
  assert len(valid) == 31 and fixed[0] in valid and fixed[1] in train
  with pytest.raises(ValueError, match=r'valid_count=200 .* 200 rows without a fixed split'):
    manifest.split_examples(examples, 0.2, seed=0, valid_count=200)
  with pytest.raises(ValueError, match='valid_count=0'):
    manifest.split_examples(examples, 0.2, seed=0, valid_count=0)


# ----------------------------------------------------------------------------- FID-300


def test_fid300_development_folder(shared_dir):
  data = fid300.load_fid300(shared_dir / 'data' / 'fid300_dev')
  assert len(data.references) == 1175 and len(data.probes) == 50
  assert data.reference_ids == list(range(1, 1176))
  assert data.probe_to_reference[1] == 1044 and data.probe_to_reference[2] == 14
  assert all(p.name == f'{i:05d}.jpg' for i, p in zip(data.probe_ids, data.probes))


def test_fid300_names_a_missing_reference(tmp_path):
  (tmp_path / 'references').mkdir()
  (tmp_path / 'probes').mkdir()
  _save(tmp_path / 'references' / '00001.png', np.zeros((9, 4), np.uint8))
  _save(tmp_path / 'probes' / '00001.jpg', np.zeros((9, 4), np.uint8))
  (tmp_path / 'label_table.csv').write_text('1,7\n')
  with pytest.raises(FileNotFoundError, match=r'reference\(s\) \[7\]'):
    fid300.load_fid300(tmp_path)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_set_is_deterministic_labelled_and_skewed(tmp_path):
  a = manifest.read_manifest(synthetic.make_descriptor_set(tmp_path / 'a', 120, seed=5,
                                                           height=120, width=50))
  b = manifest.read_manifest(synthetic.make_descriptor_set(tmp_path / 'b', 120, seed=5,
                                                           height=120, width=50))
  for x, y in zip(a, b):
    assert x.labels == y.labels
    np.testing.assert_array_equal(np.asarray(Image.open(x.path)), np.asarray(Image.open(y.path)))
  for e in a:
    assert e.labels == descriptors.with_parents(e.labels) and e.labels
  counts = descriptors.encode_many([e.labels for e in a]).sum(axis=0)
  common = [counts[descriptors.INDEX[c]] for c in ('D01', 'D02', 'D04', 'D07')]
  rare = [counts[descriptors.INDEX[c]] for c in ('D01-01', 'D02-01', 'D05', 'D14')]
  assert min(common) > max(rare)


def test_every_motif_is_drawn_inside_its_sole_region():
  rng = np.random.default_rng(0)
  for code in synthetic.LEAF_WEIGHTS:
    design = synthetic.random_design(rng)
    design = synthetic.Design((code,) * 4, design.region_seeds, design.toe_width,
                              design.heel_width, design.unit)
    image = synthetic.render(design, 350, 144)
    sole, regions = synthetic.sole_masks(design, 350, 144)
    ink = image < 128
    assert not ink[~sole].any(), code                        # nothing printed off the sole
    for name, mask in regions.items():                      # every region carries the motif
      share = ink[mask].mean()
      assert share > 0.03, (code, name, share)


def test_retrieval_set_reads_as_fid300(tmp_path):
  root = synthetic.make_retrieval_set(tmp_path / 'r', 4, 3, seed=2, height=120, width=50)
  data = fid300.load_fid300(root)
  assert len(data.references) == 4 and len(data.probes) == 12
  assert [data.probe_to_reference[p] for p in data.probe_ids] == [1, 1, 1, 2, 2, 2, 3, 3, 3,
                                                                   4, 4, 4]


# ----------------------------------------------------------------------------- cache


def test_cache_planes_equal_compose_and_rebuild_incrementally(tmp_path, monkeypatch):
  examples = manifest.read_manifest(synthetic.make_descriptor_set(
      tmp_path / 'set', 12, seed=1, height=160, width=66))
  built = cache.build_cache(examples, tmp_path / 'cache', 88, 36, workers=1)
  for i in (0, 7):
    expected = resample.compose(images.load_greyscale(examples[i].path), 'H-N-B', 88, 36)
    np.testing.assert_array_equal(built.images('H-N-B', [i])[0], expected)
  np.testing.assert_array_equal(built.labels, descriptors.encode_many([e.labels
                                                                       for e in examples]))
  calls = []
  original = cache._resize_one
  monkeypatch.setattr(cache, '_resize_one', lambda *a: calls.append(a[0]) or original(*a))
  _save(examples[3].path, np.zeros((160, 66), np.uint8))  # one original changes
  rebuilt = cache.build_cache(examples, tmp_path / 'cache', 88, 36, workers=1)
  assert calls == [str(examples[3].path)]
  assert (rebuilt.planes('bilinear')[3] == 0).all()
  np.testing.assert_array_equal(rebuilt.planes('hamming')[5], built.planes('hamming')[5])


def test_damaged_cache_says_rebuild_and_interrupted_build_keeps_the_old(tmp_path, monkeypatch):
  examples = manifest.read_manifest(synthetic.make_descriptor_set(
      tmp_path / 'set', 5, seed=2, height=80, width=33))
  built = cache.build_cache(examples, tmp_path / 'cache', 40, 16, workers=1)
  first = built.planes('nearest').copy()

  def fail(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(cache, '_resize_one', fail)
  _save(examples[0].path, np.zeros((80, 33), np.uint8))
  with pytest.raises(KeyboardInterrupt):
    cache.build_cache(examples, tmp_path / 'cache', 40, 16, workers=1)
  np.testing.assert_array_equal(cache.ResizedCache.open(tmp_path / 'cache').planes('nearest'),
                                first)
  array = built.directory / 'nearest.npy'
  array.write_bytes(array.read_bytes()[:-10])
  with pytest.raises(cache.CacheError, match='damaged.*rebuild'):
    cache.ResizedCache.open(tmp_path / 'cache')
