"""build_body: every body by name, its stages, preprocessing mode and Keras layer map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwjax.models import bodies
from fwjax.models import imagenet
from fwjax.models import keras_layers
from fwjax.models import keras_names
from fwjax.models import resnet
from fwjax.models import vgg


@pytest.mark.parametrize('arch', sorted(bodies.CONSTRUCTORS))
def test_every_body_returns_its_stages(arch):
  model = bodies.build_body(arch, **bodies.TINY[arch])
  x = jnp.zeros((2, max(64, bodies.MIN_SIZE[arch]), max(48, bodies.MIN_SIZE[arch]), 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  order = []  # jax returns dicts with sorted keys: the network order is seen while tracing

  def apply(variables, x):
    logits, feats = model.apply(variables, x)
    order.extend(feats)
    return logits, feats

  logits, feats = jax.eval_shape(apply, variables, x)
  assert logits is None  # include_top=False is the default use
  keys = bodies.feature_keys(arch)
  assert tuple(order) == keys and keys[-1] == 'features'
  assert feats['features'].shape[0] == 2 and feats['features'].dtype == jnp.float32
  assert feats['features'].shape[1] == feats[keys[-2]].shape[-1]
  assert bodies.preprocessing_mode(arch) in imagenet.MODES


def test_tables_cover_the_same_architectures():
  assert set(bodies.FEATURE_KEYS) == set(bodies.CONSTRUCTORS) == set(bodies.PREPROCESSING)
  assert set(bodies.TINY) == set(bodies.MIN_SIZE) == set(bodies.CONSTRUCTORS)
  assert set(bodies.KERAS_LAYERS) <= set(bodies.CONSTRUCTORS)
  assert bodies.FEATURE_KEYS['vgg16'] == vgg.FEATURE_KEYS
  assert bodies.FEATURE_KEYS['keras_resnet50'] == resnet.FEATURE_KEYS


@pytest.mark.parametrize('arch', sorted(bodies.KERAS_LAYERS))
def test_keras_layer_map_fills_every_variable_once(arch):
  """Arrays shaped like the body's own variables fill it completely, names checked."""
  model = bodies.build_body(arch, **bodies.TINY[arch])
  size = max(64, bodies.MIN_SIZE[arch])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  layers = bodies.keras_layers_for(arch)
  if arch == 'nasnet_large':  # its cells depend on the configuration: the tiny one's map
    layers = keras_names.nasnet_large_layers(**bodies.TINY[arch])
  paths = [layer.path for layer in layers]
  assert len(set(paths)) == len(paths)
  weights = []
  for layer in layers:
    node = shapes['params']
    for p in layer.path:
      node = node[p]
    zeros = lambda leaf: np.zeros(leaf.shape)  # noqa: E731
    if layer.kind == 'batch_normalization':
      arrays = [zeros(node[k]) for k in ('scale', 'bias') if k in node]
      arrays += [np.zeros(node['bias' if 'bias' in node else 'scale'].shape)] * 2
    elif layer.kind == 'separable_conv2d':  # Keras: depthwise (h, w, C, 1), pointwise, [bias]
      h, w, _, c = node['depthwise']['kernel'].shape
      arrays = [np.zeros((h, w, c, 1)), zeros(node['pointwise']['kernel'])]
      arrays += [zeros(node['pointwise']['bias'])] if 'bias' in node['pointwise'] else []
    else:
      arrays = [zeros(node['kernel'])] + ([zeros(node['bias'])] if 'bias' in node else [])
    weights.append((layer.name, arrays))
  filled = keras_layers.fill(shapes, layers, weights, check_names=True)
  assert jax.tree.structure(filled) == jax.tree.structure(dict(shapes))


def test_options_pass_through_and_unknown_names_are_listed():
  model = bodies.build_body('keras_resnet50', include_top=True, num_classes=7)
  assert model.include_top and model.stride_in_1x1 and model.num_classes == 7
  assert not bodies.build_body('resnet50').stride_in_1x1
  assert bodies.build_body('vgg19', pool_padding='SAME').depth == 19
  for lookup in (bodies.build_body, bodies.feature_keys, bodies.preprocessing_mode):
    with pytest.raises(ValueError, match='inception_resnet_v2, keras_resnet50, nasnet_large, resnet50, vgg16, vgg19, xception'):
      lookup('vgg17')
  with pytest.raises(ValueError, match='Keras architecture'):
    bodies.keras_layers_for('resnet50')
