"""VGG16/VGG19 against keras.applications (both weight-file formats), padding and pooling."""

import functools

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from fwjax.models import bodies
from fwjax.models import imagenet
from fwjax.models import pretrained
from fwjax.models import vgg

# Keras 3.15 on numpy 2 warns on every weight it hands over; nothing to act on here.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

KERAS_APPS = {16: keras.applications.VGG16, 19: keras.applications.VGG19}
# Odd, non-square: 'valid' pools drop a row or column on the way, and a transposed map shows.
SMALL = (45, 37)


def _max_relative_error(got, want):
  """Largest absolute error relative to the largest reference magnitude."""
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def _stage_names(depth):
  """Keras layer whose output each stage is: each block's last convolution."""
  return {f'block{b + 1}': f'block{b + 1}_conv{n}'
          for b, n in enumerate(vgg.CONVS_PER_BLOCK[depth])}


def _keras_peer(depth, size, directory):
  """A random-weight Keras VGG, its outputs on a random image, and both weight files."""
  rng = np.random.default_rng(depth)
  model = KERAS_APPS[depth](weights=None, include_top=False, pooling='avg',
                            input_shape=size + (3,))
  for layer in model.layers:  # Keras starts biases at 0, which would hide a dropped bias.
    if layer.get_weights():
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape).astype(np.float32)])
  stages = _stage_names(depth)
  probe = keras.Model(model.input, [model.get_layer(n).output for n in stages.values()]
                      + [model.output])
  x = np.asarray(imagenet.caffe(rng.integers(0, 256, (2,) + size + (3,), dtype=np.uint8)))
  outputs = [np.asarray(o) for o in probe(x)]
  files = {'keras3': directory / f'vgg{depth}.weights.h5', 'legacy': directory / f'vgg{depth}.h5'}
  model.save_weights(files['keras3'])
  with h5py.File(files['legacy'], 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  want = dict(zip(list(stages) + ['features'], outputs))
  return dict(x=x, want=want, files=files, count=model.count_params())


@pytest.fixture(scope='module', params=[16, 19])
def peer(request, tmp_path_factory):
  depth = request.param
  return depth, _keras_peer(depth, SMALL, tmp_path_factory.mktemp(f'vgg{depth}'))


@functools.cache
def _forward(arch):
  model = bodies.build_body(arch, precision='highest')
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _check_parity(arch, peer_data, file_format):
  variables = pretrained.load_keras(peer_data['files'][file_format], arch)
  assert sum(a.size for a in jax.tree.leaves(variables)) == peer_data['count']
  _, feats = _forward(arch)(variables, peer_data['x'])
  assert set(feats) == set(vgg.FEATURE_KEYS)  # jit returns dicts with sorted keys
  errors = {}
  for key, want in peer_data['want'].items():
    assert feats[key].shape == want.shape, key
    errors[key] = _max_relative_error(feats[key], want)
  assert feats['features'].dtype == jnp.float32
  assert max(errors.values()) < 1e-4, errors
  return errors


@pytest.mark.parametrize('file_format', ['keras3', 'legacy'])
def test_matches_keras(peer, file_format):
  depth, peer_data = peer
  _check_parity(f'vgg{depth}', peer_data, file_format)


@pytest.mark.slow
@pytest.mark.parametrize('depth', [16, 19])
def test_matches_keras_full_size(depth, tmp_path):
  peer_data = _keras_peer(depth, (224, 224), tmp_path)
  _check_parity(f'vgg{depth}', peer_data, 'legacy')


@pytest.mark.parametrize('kernel,stride', [(1, 1), (2, 2), (3, 1), (3, 2), (7, 2), (1, 2)])
def test_lax_same_padding_is_tensorflows(kernel, stride):
  """TensorFlow's 'same': total = max((ceil(n/s)-1)s + k - n, 0), total//2 before."""
  for n in range(1, 40):
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    assert jax.lax.padtype_to_pads((n,), (kernel,), (stride,), 'SAME') == [
        (total // 2, total - total // 2)], n


@pytest.mark.parametrize('padding', ['valid', 'same'])
def test_max_pool_matches_keras_on_odd_sizes(padding):
  x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
  want = np.asarray(keras.layers.MaxPooling2D(2, 2, padding=padding)(x))
  got = vgg.nn.max_pool(jnp.asarray(x), (2, 2), strides=(2, 2), padding=padding.upper())
  np.testing.assert_array_equal(got, want)


def test_width_and_pool_padding_shape_the_model():
  x = jnp.zeros((1, 45, 37, 3))
  model = vgg.VGG(depth=19, width=8)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(variables) == {'params'}
  assert len(variables['params']) == 16
  assert variables['params']['block4_conv4']['kernel'].shape == (3, 3, 64, 64)
  _, feats = jax.eval_shape(model.apply, variables, x)
  assert feats['block5'].shape == (1, 2, 2, 64)  # 45 -> 22 -> 11 -> 5 -> 2
  same = vgg.VGG(depth=19, width=8, pool_padding='SAME')
  _, feats = jax.eval_shape(same.apply, variables, x)
  assert feats['block5'].shape == (1, 3, 3, 64)  # 45 -> 23 -> 12 -> 6 -> 3
  assert feats['features'].shape == (1, 64)
  with pytest.raises(ValueError, match='depth'):
    jax.eval_shape(vgg.VGG(depth=13).init, jax.random.key(0), x)
