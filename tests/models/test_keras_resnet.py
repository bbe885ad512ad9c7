"""Keras's ResNet50 (v1) variant against keras.applications.ResNet50, both weight formats."""

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
from fwjax.models import keras_layers
from fwjax.models import keras_names
from fwjax.models import pretrained
from fwjax.models import resnet

# Keras 3.15 on numpy 2 warns on every weight it hands over; nothing to act on here.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# Odd, non-square: every stride-2 layer meets an odd size somewhere on the way.
SMALL = (67, 45)
STAGES = {'stem': 'conv1_relu', 'maxpool': 'pool1_pool', 'layer1': 'conv2_block3_out',
          'layer2': 'conv3_block4_out', 'layer3': 'conv4_block6_out',
          'layer4': 'conv5_block3_out'}
NUM_CLASSES = 10


def _max_relative_error(got, want):
  """Largest absolute error relative to the largest reference magnitude."""
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def _randomise(model, rng):
  """Random biases and BatchNorm statistics: Keras's zeros and ones would hide their misuse."""
  for layer in model.layers:
    weights = layer.get_weights()
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, var = weights
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                         rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    elif len(weights) == 2:
      layer.set_weights([weights[0], rng.normal(0, 0.1, weights[1].shape)])


def _keras_peer(size, directory, include_top=False):
  rng = np.random.default_rng(50)
  kwargs = dict(classes=NUM_CLASSES) if include_top else dict(pooling='avg')
  model = keras.applications.ResNet50(weights=None, include_top=include_top,
                                      input_shape=size + (3,), **kwargs)
  _randomise(model, rng)
  probe = keras.Model(model.input, [model.get_layer(n).output for n in STAGES.values()]
                      + [model.output])
  x = np.asarray(imagenet.caffe(rng.integers(0, 256, (2,) + size + (3,), dtype=np.uint8)))
  outputs = [np.asarray(o) for o in probe(x)]
  files = {'keras3': directory / 'resnet50.weights.h5', 'legacy': directory / 'resnet50.h5'}
  model.save_weights(files['keras3'])
  with h5py.File(files['legacy'], 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  want = dict(zip(list(STAGES) + ['output'], outputs))
  return dict(model=model, x=x, want=want, files=files, count=model.count_params())


@pytest.fixture(scope='module')
def peer(tmp_path_factory):
  return _keras_peer(SMALL, tmp_path_factory.mktemp('keras_resnet50'))


@functools.cache
def _forward(**kwargs):
  model = bodies.build_body('keras_resnet50', precision='highest', **kwargs)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _check_parity(peer_data, file_format):
  variables = pretrained.load_keras(peer_data['files'][file_format], 'keras_resnet50')
  assert sum(a.size for a in jax.tree.leaves(variables)) == peer_data['count']
  _, feats = _forward()(variables, peer_data['x'])
  assert set(feats) == set(resnet.FEATURE_KEYS)  # jit returns dicts with sorted keys
  got = dict(feats, output=feats['features'])
  errors = {}
  for key, want in peer_data['want'].items():
    assert got[key].shape == want.shape, key
    errors[key] = _max_relative_error(got[key], want)
  assert max(errors.values()) < 1e-4, errors
  return errors


@pytest.mark.parametrize('file_format', ['keras3', 'legacy'])
def test_matches_keras(peer, file_format):
  _check_parity(peer, file_format)


def test_layer_list_is_keras_model_order(peer):
  names = [layer.name for layer in peer['model'].layers if layer.get_weights()]
  assert [layer.name for layer in keras_names.keras_resnet50_layers()] == names


def test_batch_norm_updates_as_keras():
  """Train mode: batch statistics, and moving averages with Keras's momentum 0.99."""
  rng = np.random.default_rng(1)
  x = rng.normal(1.0, 2.0, (4, 5, 3, 6)).astype(np.float32)
  keras_bn = keras.layers.BatchNormalization(epsilon=1.001e-5)  # as Keras's ResNet50 builds it
  keras_bn.build(x.shape)
  start = [rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.2, 6), rng.normal(0, 0.5, 6),
           rng.uniform(0.5, 2.0, 6)]
  keras_bn.set_weights([w.astype(np.float32) for w in start])
  want = np.asarray(keras_bn(x, training=True))  # updates the moving statistics in place
  bn = resnet.keras_resnet50().norm(use_running_average=False)
  variables = {'params': {'scale': start[0], 'bias': start[1]},
               'batch_stats': {'mean': start[2], 'var': start[3]}}
  got, updates = bn.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], np.asarray(keras_bn.moving_mean),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['var'],
                             np.asarray(keras_bn.moving_variance), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_top_matches_keras_predictions(tmp_path):
  peer_data = _keras_peer((32, 32), tmp_path, include_top=True)
  layers = keras_names.keras_resnet50_layers(include_top=True)
  kwargs = dict(include_top=True, num_classes=NUM_CLASSES)
  variables = pretrained.load_keras(peer_data['files']['legacy'], 'keras_resnet50',
                                    layers=layers, body_kwargs=kwargs)
  assert sum(a.size for a in jax.tree.leaves(variables)) == peer_data['count']
  logits, _ = _forward(**kwargs)(variables, peer_data['x'])
  assert _max_relative_error(jax.nn.softmax(logits), peer_data['want']['output']) < 1e-4


@pytest.mark.slow
def test_matches_keras_full_size(tmp_path):
  _check_parity(_keras_peer((224, 224), tmp_path), 'legacy')


def test_torchvision_variant_is_untouched():
  """Same tree apart from biases; the Keras one strides the first 1x1 convolution."""
  x = jnp.zeros((1, 64, 64, 3))
  torch_style = jax.eval_shape(resnet.ResNet50(width=8, include_top=False).init,
                               jax.random.key(0), x)
  keras_model = resnet.keras_resnet50(width=8, include_top=False)
  keras_style = jax.eval_shape(keras_model.init, jax.random.key(0), x)
  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  conv_biases = {p for p in paths(keras_style) if p.endswith("'bias']") and "['conv" in p
                 or "downsample_conv']['bias" in p}
  assert len(conv_biases) == 53
  assert paths(keras_style) - conv_biases == paths(torch_style)
  _, feats = jax.eval_shape(keras_model.apply, keras_style, jnp.zeros((1, 67, 45, 3)))
  assert feats['layer4'].shape == (1, 3, 2, 256)  # Keras's sizes: 67 -> 34 -> 17 -> 9 -> 5 -> 3
  bn = keras_model.norm()
  assert (bn.momentum, bn.epsilon) == (0.99, 1.001e-5)
  shapes = pretrained.body_shapes(keras_model)
  weights = [(layer.name, [np.zeros(leaf.shape) for leaf in _leaves(shapes, layer)])
             for layer in keras_names.keras_resnet50_layers()]
  filled = keras_layers.fill(shapes, keras_names.keras_resnet50_layers(), weights,
                             check_names=True)
  assert jax.tree.structure(filled) == jax.tree.structure(jax.tree.map(np.zeros_like, shapes))


def _leaves(shapes, layer):
  """A layer's Flax leaves in Keras's weight order (conv: kernel, bias; BN: 4)."""
  node = shapes['params']
  for p in layer.path:
    node = node[p]
  if layer.kind == 'batch_normalization':
    stats = shapes['batch_stats']
    for p in layer.path:
      stats = stats[p]
    return [node['scale'], node['bias'], stats['mean'], stats['var']]
  return [node['kernel'], node['bias']]
