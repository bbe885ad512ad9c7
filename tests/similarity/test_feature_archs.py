"""Features from every body of the thesis, from Keras weight files and the real HED weights,
on colour photographs and greyscale marks."""

import numpy as np
import pytest
from PIL import Image

from fwjax import resample
from fwjax.models import bodies, feature_model, imagenet, keras_layers
from fwjax.similarity import features

HED = 'fixtures/hed_vgg16/hed_bsds500.weights.h5'


@pytest.fixture(scope='module')
def photos(shared_dir):
  return sorted((shared_dir / 'data' / 'imagenet_samples').glob('*.jpg'))


# The two largest graphs compile for long on 2 cores; their bodies' parity is tested fast.
_SLOW = ('inception_resnet_v2', 'nasnet_large')


@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a in _SLOW else a
                                  for a in sorted(bodies.CONSTRUCTORS)])
def test_every_arch_extracts_what_its_body_computes(arch, photos, tmp_path):
  model = feature_model.build_model(None, arch=arch, width=8, seed=1)
  size = max(64, bodies.MIN_SIZE[arch])
  result = features.extract_features(model, photos, height=size, width=size, composition='B-B-B',
                                     policy='pad', batch_size=4, cache_dir=tmp_path,
                                     progress=False)
  # The obvious way: Pillow's RGB resize into the letterbox, the arch's preprocessing, apply.
  images = np.stack([resample.compose_image(np.asarray(Image.open(p).convert('RGB')), 'B-B-B',
                                            size, size, 'pad') for p in photos])
  _, feats = model.module.apply(model.variables, imagenet.preprocess_for(arch)(images))
  np.testing.assert_allclose(result.features, np.asarray(feats['features']), rtol=2e-4,
                             atol=1e-5 * float(np.abs(feats['features']).max()))
  assert result.features.shape == (3, feats['features'].shape[-1])


def test_keras_weights_file_gives_keras_features(photos, tmp_path):
  import keras  # noqa: PLC0415 (the test-only peer)
  net = keras.applications.Xception(weights=None, include_top=False, pooling='avg',
                                    input_shape=(96, 96, 3))
  net.save_weights(tmp_path / 'xception.weights.h5')
  model = feature_model.build_model(tmp_path / 'xception.weights.h5', arch='xception')
  assert model.identity.startswith('xception-sha256:')
  result = features.extract_features(model, photos, height=96, width=96, batch_size=4,
                                     cache_dir=tmp_path / 'cache', progress=False)
  images = np.stack([resample.compose_image(np.asarray(Image.open(p).convert('RGB')), 'B-B-B',
                                            96, 96, 'pad') for p in photos]).astype(np.float32)
  want = np.asarray(net(keras.applications.xception.preprocess_input(images)))
  np.testing.assert_allclose(result.features, want, rtol=1e-3,
                             atol=1e-4 * float(np.abs(want).max()))


def test_hed_weights_give_real_vgg16_features(shared_dir, photos, tmp_path):
  model = feature_model.build_model(shared_dir / HED, arch='vgg16')
  assert model.identity.endswith('-hed') and model.arch == 'vgg16'
  refs = sorted((shared_dir / 'data' / 'fid300_dev' / 'references').iterdir())[:4]
  result = features.extract_features(model, [*photos, *refs], stage='block3', height=128,
                                     width=64, composition='B-B-B', batch_size=8,
                                     cache_dir=tmp_path, progress=False)
  x = result.features
  assert x.shape == (7, 256) and np.isfinite(x).all() and (x >= 0).all()
  # Learned filters respond differently to photographs and to shoe marks: the two groups are
  # closer within than across (random filters see mostly brightness).
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  similarity = unit @ unit.T
  within = (similarity[:3, :3].sum() - 3) / 6 + (similarity[3:, 3:].sum() - 4) / 12
  across = similarity[:3, 3:].mean()
  assert within / 2 > across


def test_files_of_another_family_are_refused(shared_dir, tmp_path):
  fixture = shared_dir / 'fixtures' / 'resnet50_parity' / 'resnet50_w8_torchvision.safetensors'
  with pytest.raises(feature_model.FeatureError, match='--arch=xception takes Keras weights'):
    feature_model.build_model(fixture, arch='xception')
  with pytest.raises(feature_model.FeatureError, match='is the HED edge detector'):
    feature_model.build_model(shared_dir / HED, arch='vgg19')
  with pytest.raises(feature_model.FeatureError, match='unknown architecture'):
    feature_model.build_model(None, arch='alexnet')
  (tmp_path / 'x.weights.h5').write_bytes(b'not hdf5 at all')
  with pytest.raises(ValueError, match='x.weights.h5'):
    feature_model.build_model(tmp_path / 'x.weights.h5', arch='vgg16')


def test_a_keras_file_of_another_arch_names_the_layers(shared_dir, tmp_path):
  import keras  # noqa: PLC0415
  keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(
      tmp_path / 'vgg19.weights.h5')
  with pytest.raises(keras_layers.KerasWeightsMismatchError, match='block5_conv4|conv2d_'):
    feature_model.build_model(tmp_path / 'vgg19.weights.h5', arch='vgg16')
