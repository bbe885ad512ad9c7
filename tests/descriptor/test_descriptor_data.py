"""A descriptor run's data on a tiny synthetic set: split sizes, the images as composed from the
originals (fwjax.resample and Pillow), one pass over the training set per epoch, seeded order."""

import csv
import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from fwjax import descriptors, resample
from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import data as descriptor_data

N, HEIGHT, WIDTH, BATCH = 32, 32, 16, 8


def _config(root: pathlib.Path, **kwargs):
  fields = {'out_dir': str(root / 'run'), 'synthetic': N, 'valid_fraction': 0.25,
            'height': HEIGHT, 'width': WIDTH, 'composition': 'B-H-N', 'batch_size': BATCH,
            'progress': False, 'cache_dir': str(root / 'cache')}
  return descriptor_config.DescriptorConfig(**{**fields, **kwargs})


def _load(config):
  out = pathlib.Path(config.out_dir)
  return descriptor_data.load(config, out, descriptor_data.plan(config, out))


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """A folder whose cache holds the synthetic set (built once for the module)."""
  path = tmp_path_factory.mktemp('descriptor_data')
  _load(_config(path))
  return path


def _originals(root):
  """{path: (greyscale original, (17,) labels)} read from the synthetic set's manifest."""
  (manifest,) = (root / 'cache').glob('synthetic_*/manifest.csv')
  with open(manifest, newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == N
  return {str(manifest.parent / row['path']): (
      np.asarray(Image.open(manifest.parent / row['path']).convert('L')),
      descriptors.encode(descriptors.parse_labels(row['labels']))) for row in rows}


def _identify(images, composed):
  """The path of each image, by its bytes among ``composed`` ({path: image})."""
  by_bytes = {image.tobytes(): path for path, image in composed.items()}
  assert len(by_bytes) == len(composed), 'two originals compose to the same image'
  return [by_bytes[image.tobytes()] for image in images]


@pytest.mark.parametrize('fraction', [0.1, 0.25, 0.5])
def test_split_sizes_follow_valid_fraction(root, fraction):
  data = _load(_config(root, valid_fraction=fraction))
  assert data.num_train + data.num_valid == N
  assert abs(data.num_valid - fraction * N) < 1
  assert len(data.valid_paths) == len(set(data.valid_paths)) == data.num_valid
  assert set(data.valid_paths) <= set(_originals(root))
  assert data.train_labels.shape == (data.num_train, descriptors.NUM_LABELS)
  assert data.fit_data.steps_per_epoch == data.num_train // BATCH
  assert data.fit_data.batch_size == BATCH


def test_valid_count_holds_out_exactly_that_many(root):
  data = _load(_config(root, valid_count=5))
  assert (data.num_valid, data.num_train) == (5, N - 5)
  assert len(set(data.valid_paths)) == 5 and not set(data.valid_paths) & set(data.train_paths)
  assert sorted(data.valid_paths + data.train_paths) == sorted(_originals(root))
  assert _load(_config(root, valid_count=5, valid_fraction=0.5)).valid_paths == data.valid_paths
  with pytest.raises(ValueError, match=r'valid_count=32 .* 32 rows'):
    _load(_config(root, valid_count=N))
  with pytest.raises(ValueError, match='--valid_count must be at least 1'):
    descriptor_config.validate(_config(root, valid_count=0))


def test_valid_count_unset_keeps_the_keys_of_stored_runs(root):
  config = _config(root)
  # The key as computed before valid_count existed: runs stored then are still found.
  fields = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in descriptor_config.UNKEYED and k not in descriptor_config.KEYED_WHEN_SET}
  before = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
  assert descriptor_config.config_key(config) == before
  assert descriptor_config.config_key(dataclasses.replace(config, valid_count=8)) != before


@pytest.mark.parametrize('composition,policy', [('B-H-N', 'squish'), ('N-B-H', 'pad')])
def test_images_are_the_originals_composed(root, composition, policy):
  data = _load(_config(root, composition=composition, policy=policy))
  originals = _originals(root)
  batches = list(data.fit_data.valid_batches())
  assert len(batches) == -(-data.num_valid // BATCH)
  images = np.concatenate([b['image'] for b in batches])[:data.num_valid]
  assert np.concatenate([b['mask'] for b in batches]).sum() == data.num_valid
  assert images.dtype == np.uint8 and images.shape[1:] == (HEIGHT, WIDTH, 3)
  for path, image in zip(data.valid_paths, images):
    original, _ = originals[path]
    np.testing.assert_array_equal(image, resample.compose(original, composition, HEIGHT, WIDTH,
                                                          policy), err_msg=path)
    if policy == 'squish':  # and straight from Pillow, channel by channel
      filters = {'N': Image.Resampling.NEAREST, 'B': Image.Resampling.BILINEAR,
                 'H': Image.Resampling.HAMMING}
      for channel, letter in enumerate(composition.split('-')):
        expected = Image.fromarray(original).resize((WIDTH, HEIGHT), filters[letter])
        np.testing.assert_array_equal(image[..., channel], np.asarray(expected), err_msg=path)
  np.testing.assert_array_equal(data.fit_data.valid_labels,
                                np.stack([originals[p][1] for p in data.valid_paths]))
  np.testing.assert_array_equal(data.valid_images([2, 0]), images[[2, 0]])


def test_each_epoch_shows_every_training_image_once(root):
  data = _load(_config(root))
  originals = _originals(root)
  composed = {p: resample.compose(o, 'B-H-N', HEIGHT, WIDTH) for p, (o, _) in originals.items()}
  train_paths = set(originals) - set(data.valid_paths)
  assert data.num_train == 24 and data.fit_data.steps_per_epoch == 3  # 24 = 3 batches of 8
  for epoch in (0, 1):
    seen = []
    for batch in data.fit_data.train_batches(epoch):
      assert batch['image'].shape == (BATCH, HEIGHT, WIDTH, 3) and batch['mask'].all()
      paths = _identify(batch['image'], composed)
      np.testing.assert_array_equal(batch['label'], np.stack([originals[p][1] for p in paths]))
      assert batch['label'].dtype == np.float32
      seen += paths
    assert sorted(seen) == sorted(train_paths)
  # The training labels are those of the training images.
  assert sorted(map(tuple, data.train_labels)) == sorted(
      tuple(originals[p][1]) for p in train_paths)


def test_an_epoch_that_drops_a_remainder_repeats_no_image(root):
  data = _load(_config(root, valid_fraction=0.3))
  composed = {p: resample.compose(o, 'B-H-N', HEIGHT, WIDTH)
              for p, (o, _) in _originals(root).items()}
  seen = [p for b in data.fit_data.train_batches(0) for p in _identify(b['image'], composed)]
  assert len(seen) == len(set(seen)) == data.fit_data.steps_per_epoch * BATCH < data.num_train
  assert not set(seen) & set(data.valid_paths)
  # The validation set is covered once, its last batch padded with mask False.
  batches = list(data.fit_data.valid_batches())
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == data.num_valid and not masks[-1] and masks[:data.num_valid].all()


def _fixed_split_manifest(root, valid_rows):
  """The synthetic set as a manifest whose ``split`` column fixes the split."""
  (manifest,) = (root / 'cache').glob('synthetic_*/manifest.csv')
  with open(manifest, newline='') as f:
    rows = list(csv.DictReader(f))
  path = root / f'fixed_{len(valid_rows)}.csv'
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels', 'split'])
    for i, row in enumerate(rows):
      writer.writerow([str(manifest.parent / row['path']), row['labels'],
                       'valid' if i in valid_rows else 'train'])
  return path


def test_batch_order_is_drawn_from_split_seed_seed_and_epoch(root):
  # The split is fixed by the manifest, so only the order can depend on the seeds.
  manifest = _fixed_split_manifest(root, valid_rows=range(24, 32))
  composed = {p: resample.compose(o, 'B-H-N', HEIGHT, WIDTH)
              for p, (o, _) in _originals(root).items()}

  def order(split_seed, seed, epoch):
    data = _load(_config(root, synthetic=0, manifest=str(manifest), split_seed=split_seed,
                         seed=seed))
    assert data.num_train == 24
    return [tuple(_identify(b['image'], composed)) for b in data.fit_data.train_batches(epoch)]

  first = order(0, 0, 0)
  assert order(0, 0, 0) == first  # reproducible: a resumed run sees the same batches
  others = [order(1, 0, 0), order(0, 1, 0), order(0, 0, 1)]
  for other in others:
    assert other != first and sorted(sum(other, ())) == sorted(sum(first, ()))
  assert len({tuple(o) for o in others}) == 3


def test_an_empty_validation_split_is_refused(tmp_path):
  # 3 images at a tenth each: with this seed's random phase no image reaches validation.
  config = _config(tmp_path, synthetic=3, valid_fraction=0.1, split_seed=0)
  with pytest.raises(ValueError, match=r'no validation images: raise --valid_fraction \(0.1\) or '
                     r'add images \(3 without a fixed split, 3 in all\)'):
    _load(config)


def test_a_fixed_split_without_validation_rows_is_refused_naming_the_split_column(root):
  manifest = _fixed_split_manifest(root, valid_rows=())
  with pytest.raises(ValueError) as error:
    _load(_config(root, synthetic=0, manifest=str(manifest)))
  assert 'split' in str(error.value)
