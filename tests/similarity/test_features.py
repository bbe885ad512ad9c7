"""Tests for fwjax.similarity.features: extraction against a plain forward pass and the PyTorch fixture,
content-keyed caching, streaming to .npy, and bad input."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fwjax.models import feature_model, imagenet
from fwjax.similarity import features
from fwjax import resample

HEIGHT, WIDTH = 64, 48


@pytest.fixture(scope='module')
def model():
  return feature_model.build_model(None, width=8, seed=0)


@pytest.fixture(scope='module')
def extractor(model):
  # One compiled program shared by the tests (batch 8 over the 4 fake devices).
  return features.Extractor(model, 'features', HEIGHT, WIDTH, batch_size=8)


def _write_images(folder, count, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for i in range(count):
    shape = (int(rng.integers(40, 120)), int(rng.integers(30, 90)))
    path = folder / f'img{i:02d}.png'
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), 'L').save(path)
    paths.append(path)
  return paths


def _reference_features(model, paths, stage='features', composition='B-B-B', policy='pad'):
  """A plain, unsharded forward pass over images prepared one by one (the obvious way)."""
  images = np.stack([
      resample.compose(np.asarray(Image.open(p).convert('L')), composition, HEIGHT, WIDTH,
                       policy=policy) for p in paths]).astype(np.float32) / 255.0
  x = (images - imagenet.IMAGENET_MEAN) / imagenet.IMAGENET_STD
  _, feats = jax.jit(lambda v, x: model.module.apply(v, x, train=False))(
      model.variables, jnp.asarray(x, jnp.float32))
  out = np.asarray(feats[stage])
  return out.mean(axis=(1, 2)) if out.ndim == 4 else out


def test_extraction_matches_plain_forward_pass_in_order(tmp_path, model, extractor):
  paths = _write_images(tmp_path / 'imgs', 11)  # 11: a short, padded last batch
  result = features.extract_features(model, paths, height=HEIGHT, width=WIDTH,
                                     extractor=extractor, cache_dir=tmp_path / 'cache',
                                     progress=False)
  assert result.paths == paths and not result.skipped
  assert result.features.shape == (11, 256) and result.features.dtype == np.float32
  np.testing.assert_allclose(result.features, _reference_features(model, paths),
                             rtol=1e-4, atol=1e-4)


def test_pooled_early_stage_matches_forward_pass(tmp_path, model):
  paths = _write_images(tmp_path / 'imgs', 3)
  result = features.extract_features(model, paths, stage='layer1', height=HEIGHT, width=WIDTH,
                                     batch_size=4, progress=False)
  assert result.features.shape == (3, 32)  # layer1 of a width-8 ResNet-50 has 32 channels
  np.testing.assert_allclose(result.features, _reference_features(model, paths, 'layer1'),
                             rtol=1e-4, atol=1e-4)


def test_torchvision_weights_reproduce_pytorch_features(shared_dir):
  """End to end against PyTorch: B-H-N squished to 352x144, the fixture's pooled layer4."""
  fixture = shared_dir / 'fixtures' / 'resnet50_parity'
  expected = np.load(fixture / 'activations.npz')['shoeprint352x144/features'][0]
  model = feature_model.build_model(fixture / 'resnet50_w8_torchvision.safetensors')
  assert model.width == 8 and model.identity.startswith('resnet50-sha256:')
  with jax.default_matmul_precision('float32'):
    result = features.extract_features(
        model, [shared_dir / 'data' / 'fid300_dev' / 'references' / '00001.png'], height=352,
        width=144, composition='B-H-N', policy='squish', batch_size=4, progress=False)
  np.testing.assert_allclose(result.features[0], expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_cache_reuse_extracts_only_what_changed(tmp_path, model, extractor):
  paths = _write_images(tmp_path / 'imgs', 6)
  kwargs = dict(height=HEIGHT, width=WIDTH, extractor=extractor, cache_dir=tmp_path / 'cache',
                progress=False)
  first = features.extract_features(model, paths, **kwargs)
  assert first.num_extracted == 6
  second = features.extract_features(model, paths, **kwargs)
  assert second.num_extracted == 0
  np.testing.assert_array_equal(second.features, first.features)
  # A renamed copy has the same bytes: nothing to compute.
  shutil.copy(paths[0], tmp_path / 'imgs' / 'renamed.png')
  renamed = features.extract_features(model, [tmp_path / 'imgs' / 'renamed.png'], **kwargs)
  assert renamed.num_extracted == 0
  np.testing.assert_array_equal(renamed.features[0], first.features[0])
  # Replace one file's content under the same name: exactly that one is re-extracted.
  Image.fromarray(np.full((50, 40), 200, np.uint8), 'L').save(paths[3])
  third = features.extract_features(model, paths, **kwargs)
  assert third.num_extracted == 1
  unchanged = [0, 1, 2, 4, 5]
  np.testing.assert_array_equal(third.features[unchanged], first.features[unchanged])
  assert not np.allclose(third.features[3], first.features[3])
  np.testing.assert_allclose(third.features[3], _reference_features(model, [paths[3]])[0],
                             rtol=1e-4, atol=1e-4)
  # Another stage or resolution is another cache entry.
  other = features.extract_features(model, paths[:2], stage='layer1', height=HEIGHT,
                                    width=WIDTH, cache_dir=tmp_path / 'cache', batch_size=4,
                                    progress=False)
  assert other.num_extracted == 2


def test_streams_to_memory_mapped_npy(tmp_path, model, extractor):
  paths = _write_images(tmp_path / 'imgs', 5)
  result = features.extract_features(model, paths, height=HEIGHT, width=WIDTH,
                                     extractor=extractor, out_path=tmp_path / 'f' / 'x.npy',
                                     progress=False)
  assert isinstance(result.features, np.memmap)
  np.testing.assert_array_equal(np.load(tmp_path / 'f' / 'x.npy'), result.features)


def test_unreadable_images_are_listed_not_dropped(tmp_path, model, extractor):
  paths = _write_images(tmp_path / 'imgs', 3)
  broken = tmp_path / 'imgs' / 'broken.png'
  broken.write_bytes(b'\x89PNG\r\n\x1a\n this is not a png')
  missing = tmp_path / 'imgs' / 'missing.png'
  result = features.extract_features(model, [paths[0], broken, paths[1], missing, paths[2]],
                                     height=HEIGHT, width=WIDTH, extractor=extractor,
                                     progress=False)
  assert result.paths == paths
  assert [p for p, _ in result.skipped] == [broken, missing]
  assert all(reason for _, reason in result.skipped)
  np.testing.assert_allclose(result.features, _reference_features(model, paths),
                             rtol=1e-4, atol=1e-4)


def test_unknown_stage_and_settings_fail_clearly(tmp_path, model):
  with pytest.raises(features.FeatureError, match='layer1, layer2, layer3, layer4'):
    features.extract_features(model, [], stage='layer5', progress=False)
  with pytest.raises(features.FeatureError, match='composition'):
    features.extract_features(model, [], composition='X-Y-Z', progress=False)
  with pytest.raises(FileNotFoundError, match='nothing.pth'):
    feature_model.build_model(tmp_path / 'nothing.pth')
  (tmp_path / 'weights.bin').write_bytes(b'123')
  with pytest.raises(features.FeatureError, match='unknown weights format'):
    feature_model.build_model(tmp_path / 'weights.bin')


def test_random_init_is_deterministic_and_named():
  a = feature_model.build_model(None, width=8, seed=3)
  b = feature_model.build_model(None, width=8, seed=3)
  c = feature_model.build_model(None, width=8, seed=4)
  assert a.identity == b.identity == 'resnet50-random-seed-3-width-8' != c.identity
  leaves_a, leaves_c = jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(c.variables)
  assert all(np.array_equal(x, y) for x, y in zip(leaves_a, jax.tree_util.tree_leaves(b.variables)))
  assert not all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_c))
  # Kaiming normal (fan-out) as torchvision: the stem's std is sqrt(2 / (7 * 7 * 8)).
  stem = a.variables['params']['conv1']['kernel']
  assert abs(stem.std() / np.sqrt(2 / (7 * 7 * 8)) - 1) < 0.1


def test_descriptor_checkpoint_body_gives_the_same_features(tmp_path, model, extractor):
  """A fwjax checkpoint of a classifier-shaped tree: its 'body' is the feature model."""
  from fwjax.models import checkpoint
  tree = {'params': {'body': model.variables['params'], 'head': {'w': np.ones((3, 2))}},
          'batch_stats': {'body': model.variables['batch_stats']}}
  folder = checkpoint.save_variables(tmp_path / 'ckpt', tree)
  loaded = feature_model.build_model(folder)
  assert loaded.width == 8 and loaded.identity.startswith('resnet50-sha256:')
  paths = _write_images(tmp_path / 'imgs', 3)
  kwargs = dict(height=HEIGHT, width=WIDTH, batch_size=8, progress=False)
  np.testing.assert_allclose(features.extract_features(loaded, paths, **kwargs).features,
                             features.extract_features(model, paths, extractor=extractor,
                                                       **kwargs).features, rtol=1e-6)


def test_damaged_cache_rows_are_extracted_again(tmp_path, model, extractor, caplog):
  """Issue 16, finding 2: an altered or cut-off cache file never changes the features."""
  paths = _write_images(tmp_path / 'imgs', 9)
  kwargs = dict(height=HEIGHT, width=WIDTH, extractor=extractor, cache_dir=tmp_path / 'cache',
                progress=False)
  first = features.extract_features(model, paths, **kwargs)
  (data_path,) = (tmp_path / 'cache').glob('*/features.f32')
  row_bytes = 4 * first.features.shape[1]
  data = bytearray(data_path.read_bytes())
  data[row_bytes * 2 + 17] ^= 0x10  # alter one value of row 2
  data_path.write_bytes(bytes(data))
  with caplog.at_level('WARNING'):
    altered = features.extract_features(model, paths, **kwargs)
  assert altered.repaired == 1 and altered.num_extracted == 1
  np.testing.assert_array_equal(altered.features, first.features)
  assert str(data_path) in caplog.text and 'rows 2)' in caplog.text

  # Rows 6.. cut off: images 6, 7, 8 and image 2, whose repaired row was appended as row 9.
  data_path.write_bytes(data_path.read_bytes()[:row_bytes * 6 + 100])
  truncated = features.extract_features(model, paths, out_path=tmp_path / 'f.npy', **kwargs)
  assert truncated.repaired == 4
  assert 'rows 6, 7, 8, 9)' in caplog.text
  np.testing.assert_array_equal(truncated.features, first.features)
  np.testing.assert_array_equal(np.load(tmp_path / 'f.npy'), first.features)
  # Repaired for good: the next run finds every row intact.
  assert features.extract_features(model, paths, **kwargs).num_extracted == 0
