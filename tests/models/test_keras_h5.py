"""Keras weight files: both layouts as Keras writes them, and every way a file can be wrong."""

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from fwjax.models import bodies
from fwjax.models import keras_h5
from fwjax.models import keras_layers
from fwjax.models import pretrained
from fwjax.models.keras_layers import KerasLayer

# Keras 3.15 on numpy 2 warns on every weight it hands over; nothing to act on here.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

TINY = {'width': 8}  # the width-8 bodies keep synthetic files small


# --- every layer kind, written by Keras itself -------------------------------------------------

def _keras_every_kind():
  """A functional Keras model with each kind of weighted layer the bodies use."""
  inputs = keras.Input((9, 7, 3))
  x = keras.layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = keras.layers.BatchNormalization(epsilon=1e-3, name='bn1')(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.DepthwiseConv2D(3, padding='same', name='dw')(x)
  x = keras.layers.SeparableConv2D(5, 3, padding='same', name='sep')(x)
  x = keras.layers.Conv2D(6, 1, use_bias=False, name='c2')(x)
  x = keras.layers.BatchNormalization(epsilon=1e-3, center=False, name='bn2')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(3, name='fc')(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(0)
  for layer in model.layers:
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                       for w in layer.get_weights()])
  return model


class _EveryKind(nn.Module):
  """The Flax twin of :func:`_keras_every_kind`."""

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: nn.Conv(*a, padding='SAME', precision='highest', **k)
    x = conv(4, (3, 3), name='c1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn1')(x))
    x = conv(4, (3, 3), feature_group_count=4, name='dw')(x)
    x = conv(4, (3, 3), feature_group_count=4, use_bias=False, name='sep_depthwise')(x)
    x = conv(5, (1, 1), name='sep_pointwise')(x)
    x = conv(6, (1, 1), use_bias=False, name='c2')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, use_bias=False, name='bn2')(x)
    return nn.Dense(3, precision='highest', name='fc')(jnp.mean(x, axis=(1, 2)))


class _EveryKindNested(nn.Module):
  """Separable convolutions nest as ``path/depthwise`` and ``path/pointwise``."""

  @nn.compact
  def __call__(self, x):
    return _EveryKind(name='net')(x)


EVERY_KIND_LAYERS = [
    KerasLayer('conv2d', ('c1',), 'c1'),
    KerasLayer('batch_normalization', ('bn1',), 'bn1'),
    KerasLayer('depthwise_conv2d', ('dw',), 'dw'),
    KerasLayer('separable_conv2d', ('sep',), 'sep'),
    KerasLayer('conv2d', ('c2',), 'c2'),
    KerasLayer('batch_normalization', ('bn2',), 'bn2'),
    KerasLayer('dense', ('fc',), 'fc'),
]


def _flax_every_kind_target():
  """The variables of _EveryKind, with the separable pair regrouped under 'sep'."""
  shapes = jax.eval_shape(_EveryKind().init, jax.random.key(0), jnp.zeros((1, 9, 7, 3)))
  params = dict(shapes['params'])
  params['sep'] = {'depthwise': params.pop('sep_depthwise'),
                   'pointwise': params.pop('sep_pointwise')}
  return {'params': params, 'batch_stats': shapes['batch_stats']}


@pytest.fixture(scope='module')
def every_kind(tmp_path_factory):
  directory = tmp_path_factory.mktemp('every_kind')
  model = _keras_every_kind()
  files = {'keras3': directory / 'm.weights.h5', 'legacy': directory / 'm.h5'}
  model.save_weights(files['keras3'])
  with h5py.File(files['legacy'], 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return model, files


@pytest.mark.parametrize('file_format', ['keras3', 'legacy'])
def test_every_kind_reads_and_runs_as_keras(every_kind, file_format):
  model, files = every_kind
  assert keras_h5.file_format(files[file_format]) == file_format
  weights, named = keras_h5.read_weights(files[file_format], EVERY_KIND_LAYERS)
  assert named  # Keras 3.15 records layer names in both layouts
  want = keras_layers.from_keras_model(model)
  assert [n for n, _ in weights] == [n for n, _ in want]
  for (_, got_arrays), (name, want_arrays) in zip(weights, want):
    assert len(got_arrays) == len(want_arrays), name
    for got, expected in zip(got_arrays, want_arrays):
      np.testing.assert_array_equal(got, expected)
  variables = keras_layers.fill(_flax_every_kind_target(), EVERY_KIND_LAYERS, weights,
                                check_names=True)
  params = dict(variables['params'])
  sep = params.pop('sep')
  params['sep_depthwise'], params['sep_pointwise'] = sep['depthwise'], sep['pointwise']
  x = np.random.default_rng(1).normal(size=(2, 9, 7, 3)).astype(np.float32)
  got = _EveryKind().apply({'params': params, 'batch_stats': variables['batch_stats']}, x)
  np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_keras3_keys_number_each_class_in_model_order(every_kind):
  _, files = every_kind
  assert keras_h5.keras3_keys(EVERY_KIND_LAYERS) == [
      'conv2d', 'batch_normalization', 'depthwise_conv2d', 'separable_conv2d', 'conv2d_1',
      'batch_normalization_1', 'dense']
  found = keras_h5.read_keras3(files['keras3'])
  assert {k: name for k, (name, _) in found.items()} == dict(
      zip(keras_h5.keras3_keys(EVERY_KIND_LAYERS), [layer.name for layer in EVERY_KIND_LAYERS]))


def test_keras3_files_without_names_are_ordered_by_class(every_kind, tmp_path):
  """Files without the ``name`` attribute (older Keras 3): keys and classes place each layer."""
  _, files = every_kind
  path = tmp_path / 'unnamed.weights.h5'
  path.write_bytes(files['keras3'].read_bytes())
  with h5py.File(path, 'a') as f:
    for group in f['layers'].values():
      group['vars'].attrs.pop('name', None)
  weights, named = keras_h5.read_weights(path, EVERY_KIND_LAYERS)
  assert not named
  assert [n for n, _ in weights] == keras_h5.keras3_keys(EVERY_KIND_LAYERS)
  keras_layers.fill(_flax_every_kind_target(), EVERY_KIND_LAYERS, weights)


# --- synthetic files of the bodies, for the errors ------------------------------------------------

def _in_keras_order(variables, layer):
  """A conv's or BatchNorm's Flax leaves in Keras's weight order."""
  node = variables['params']
  for p in layer.path:
    node = node[p]
  if layer.kind != 'batch_normalization':
    return [node['kernel'], node['bias']]
  stats = variables['batch_stats']
  for p in layer.path:
    stats = stats[p]
  return [node['scale'], node['bias'], stats['mean'], stats['var']]


def _body_weights(arch, seed=0):
  """(name, [arrays]) in Keras's order for a width-8 body, random values."""
  rng = np.random.default_rng(seed)
  shapes = pretrained.body_shapes(bodies.build_body(arch, **TINY))
  return [(layer.name, [rng.normal(size=leaf.shape).astype(np.float32)
                        for leaf in _in_keras_order(shapes, layer)])
          for layer in bodies.keras_layers_for(arch)]


WEIGHT_SUFFIXES = {2: ('kernel', 'bias'), 4: ('gamma', 'beta', 'moving_mean', 'moving_variance')}


def _write_legacy(path, weights, extra_layer_names=('input_layer',), whole_model=False):
  """The layout of Keras's save_weights_to_hdf5_group (TensorFlow-era ':0' suffixes).

  ``whole_model`` nests it in ``model_weights``, as Keras 2's ``model.save('x.h5')`` does.
  """
  with h5py.File(path, 'w') as f:
    root = f.create_group('model_weights') if whole_model else f
    root.attrs['layer_names'] = [n.encode() for n in
                                 list(extra_layer_names) + [n for n, _ in weights]]
    for name in extra_layer_names:
      root.create_group(name).attrs['weight_names'] = np.array([], dtype='S1')
    for name, arrays in weights:
      group = root.create_group(name)
      names = [f'{name}/{s}:0' for s in WEIGHT_SUFFIXES[len(arrays)]]
      group.attrs['weight_names'] = [n.encode() for n in names]
      for n, a in zip(names, arrays):
        group.create_dataset(n, data=a)


def _write_keras3(path, arch, weights):
  with h5py.File(path, 'w') as f:
    f.create_group('vars')
    layers = f.create_group('layers')
    layers.create_group('input_layer').create_group('vars')
    for key, (name, arrays) in zip(keras_h5.keras3_keys(bodies.keras_layers_for(arch)),
                                   weights):
      group = layers.create_group(key).create_group('vars')
      group.attrs['name'] = name
      for i, a in enumerate(arrays):
        group.create_dataset(str(i), data=a)


@pytest.mark.parametrize('arch', ['vgg16', 'keras_resnet50'])
@pytest.mark.parametrize('file_format', ['keras3', 'legacy', 'legacy_whole_model'])
def test_synthetic_files_load_exactly(tmp_path, arch, file_format):
  weights = _body_weights(arch)
  path = tmp_path / ('w.weights.h5' if file_format == 'keras3' else 'w.h5')
  if file_format == 'keras3':
    _write_keras3(path, arch, weights)
  else:
    _write_legacy(path, weights, whole_model=file_format == 'legacy_whole_model')
  variables = pretrained.load_keras(path, arch, body_kwargs=TINY)
  for layer, (_, arrays) in zip(bodies.keras_layers_for(arch), weights):
    for got, want in zip(_in_keras_order(variables, layer), arrays):
      np.testing.assert_array_equal(got, want)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.h5'):
    pretrained.load_keras(tmp_path / 'nothing.h5', 'vgg16')


def test_not_hdf5_and_truncated_files_fail_clearly(tmp_path):
  text = tmp_path / 'notes.h5'
  text.write_text('not weights\n' * 100)
  with pytest.raises(keras_h5.KerasWeightsFileError, match='notes.h5.*not an HDF5'):
    pretrained.load_keras(text, 'vgg16', body_kwargs=TINY)
  good = tmp_path / 'good.h5'
  _write_legacy(good, _body_weights('vgg16'))
  for fraction in (0.5, 0.02):
    cut = tmp_path / f'cut{fraction}.h5'
    cut.write_bytes(good.read_bytes()[:int(good.stat().st_size * fraction)])
    with pytest.raises(keras_h5.KerasWeightsFileError, match=f'cut{fraction}.h5'):
      pretrained.load_keras(cut, 'vgg16', body_kwargs=TINY)
  other = tmp_path / 'other.h5'
  with h5py.File(other, 'w') as f:
    f['data'] = np.zeros(3)
  with pytest.raises(keras_h5.KerasWeightsFileError, match='other.h5.*not Keras weights'):
    pretrained.load_keras(other, 'vgg16', body_kwargs=TINY)
  assert issubclass(keras_h5.KerasWeightsFileError, ValueError)


@pytest.mark.parametrize('file_format', ['keras3', 'legacy'])
def test_file_of_another_architecture(tmp_path, file_format):
  path = tmp_path / ('w.weights.h5' if file_format == 'keras3' else 'w.h5')
  if file_format == 'keras3':
    _write_keras3(path, 'keras_resnet50', _body_weights('keras_resnet50'))
  else:
    _write_legacy(path, _body_weights('vgg19'))
  with pytest.raises(keras_layers.KerasWeightsMismatchError) as e:
    pretrained.load_keras(path, 'vgg16', body_kwargs=TINY)
  message = str(e.value)
  assert str(path) in message
  if file_format == 'keras3':
    assert 'unexpected layers' in message and 'batch_normalization (conv1_bn)' in message
  else:
    assert 'unexpected layers (3): block3_conv4, block4_conv4, block5_conv4' in message


@pytest.mark.parametrize('file_format', ['keras3', 'legacy'])
def test_missing_extra_and_misshapen_layers_are_listed(tmp_path, file_format):
  def write(name, weights):
    path = tmp_path / (f'{name}.weights.h5' if file_format == 'keras3' else f'{name}.h5')
    if file_format == 'keras3':
      _write_keras3(path, 'vgg16', weights)
      if name == 'extra':
        with h5py.File(path, 'a') as f:
          f['layers/dense/vars/0'] = np.zeros((4, 2), np.float32)
          f['layers/dense/vars'].attrs['name'] = 'predictions'
    else:
      _write_legacy(path, weights + ([('predictions', [np.zeros((4, 2), np.float32),
                                                       np.zeros(2, np.float32)])]
                                     if name == 'extra' else []))
    return path

  weights = _body_weights('vgg16')
  missing = write('missing', weights[:4] + weights[5:])  # no block3_conv1
  # Keras 3 keys are numbered: with one conv2d fewer, the last key (conv2d_12) is the one absent.
  with pytest.raises(keras_layers.KerasWeightsMismatchError,
                     match=(r'missing layers \(1\): conv2d_12 \(block5_conv3\)'
                            if file_format == 'keras3' else
                            r'missing layers \(1\): block3_conv1')):
    pretrained.load_keras(missing, 'vgg16', body_kwargs=TINY)
  with pytest.raises(keras_layers.KerasWeightsMismatchError, match='predictions'):
    pretrained.load_keras(write('extra', weights), 'vgg16', body_kwargs=TINY)
  misshapen = [(n, [a[..., :4] if n == 'block2_conv1' else a for a in arrays])
               for n, arrays in weights]
  with pytest.raises(keras_layers.KerasWeightsMismatchError,
                     match=r"block2_conv1.*kernel has shape \(3, 3, 8, 4\), expected "
                           r"\(3, 3, 8, 16\)"):
    pretrained.load_keras(write('misshapen', misshapen), 'vgg16', body_kwargs=TINY)
  # Full-width VGG16 from a width-8 file: every layer is listed as the wrong shape.
  with pytest.raises(keras_layers.KerasWeightsMismatchError, match='block5_conv3'):
    pretrained.load_keras(write('tiny', weights), 'vgg16')


def test_unknown_architecture_lists_known_ones(tmp_path):
  path = tmp_path / 'w.h5'
  _write_legacy(path, _body_weights('vgg16'))
  with pytest.raises(ValueError, match='vgg19'):
    pretrained.load_keras(path, 'vgg17')
  with pytest.raises(ValueError, match='Keras architecture.*keras_resnet50'):
    pretrained.load_keras(path, 'resnet50')
