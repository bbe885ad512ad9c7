"""NASNet-A: the Flax body against Keras's own NASNet, layer map, order and activations.

Keras is the reference: its NASNet is built with random weights (BatchNorm statistics too,
so that a BatchNorm convention that differs shows), copied into the Flax body through the
explicit layer map, and run on the same input. A tiny NASNet (one normal cell per stack) runs
by default; NASNetLarge itself is marked slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwjax.models import keras_layers
from fwjax.models import keras_names
from fwjax.models import nasnet

keras = pytest.importorskip('keras')  # conftest.py runs it on JAX
# The configurable builder behind NASNetLarge and NASNetMobile; Keras exports only those two.
from keras.src.applications.nasnet import NASNet as KerasNASNet

NASNET_LARGE_NOTOP_PARAMS = 84_916_818  # keras.applications.NASNetLarge(include_top=False)
TINY = {'penultimate_filters': 96, 'num_blocks': 1, 'stem_block_filters': 8}
# Non-square, so that a height/width mix-up shows; widths 23, 12, 6, 3, 2 and heights 31, 16,
# 8, 4, 2 after the stem and each reduction reach both odd and even sizes in correct_pad and
# in the shifted path of _adjust_block.
TINY_INPUT = (64, 48)
KINDS = {'Conv2D': 'conv2d', 'BatchNormalization': 'batch_normalization',
         'SeparableConv2D': 'separable_conv2d', 'Dense': 'dense'}


def _randomise_batch_norm(model, seed: int) -> None:
  """Gives every BatchNorm non-trivial gamma, beta and moving statistics."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if type(layer).__name__ == 'BatchNormalization':
      c = layer.get_weights()[0].shape
      layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                         rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])


def _keras_stages(model, num_blocks: int) -> dict:
  """A Keras model giving the output of every stage named in nasnet.FEATURE_KEYS."""
  names = keras_names.nasnet_stage_layers(num_blocks)
  outputs = {key: model.get_layer(name).output for key, name in names.items()}
  gap = next(l for l in model.layers if type(l).__name__ == 'GlobalAveragePooling2D')
  outputs['last_relu'] = gap.input
  outputs['features'] = gap.output
  return keras.Model(model.input, outputs)


def _images(shape: tuple[int, int], batch: int = 2, seed: int = 0) -> np.ndarray:
  pixels = np.random.default_rng(seed).uniform(0, 255, (batch, *shape, 3)).astype(np.float32)
  return pixels / 127.5 - 1  # Keras's 'tf' preprocessing


def _relative_errors(ours: dict, reference: dict) -> dict[str, float]:
  return {k: float(np.max(np.abs(np.asarray(ours[k]) - reference[k]))
                   / np.max(np.abs(reference[k]))) for k in reference}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope='module')
def tiny_keras():
  """The tiny Keras NASNet with a 5-class top (logits, no softmax), BatchNorm randomised."""
  model = KerasNASNet(input_shape=(*TINY_INPUT, 3), weights=None, include_top=True, classes=5,
                      classifier_activation=None, **TINY)
  _randomise_batch_norm(model, seed=1)
  return model


def _flax_variables(model: nasnet.NASNet, keras_model, x: np.ndarray, layers) -> dict:
  target = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))
  return keras_layers.fill(target, layers, keras_layers.from_keras_model(keras_model),
                           where=keras_model.name, check_names=True)


def test_correct_pad_is_tensorflow_same_for_stride_2():
  for kernel in (3, 5, 7):
    for size in range(1, 40):
      total = max((-(-size // 2) - 1) * 2 + kernel - size, 0)
      assert nasnet.correct_pad(size, kernel) == (total // 2, total - total // 2)
      assert nasnet.correct_pad(size, kernel) == tuple(
          jax.lax.padtype_to_pads((size,), (kernel,), (2,), 'SAME')[0])


def test_layer_order_is_keras_model_layers_order(tiny_keras):
  ours = keras_names.nasnet_large_layers(**TINY, include_top=True)
  weighted = [l for l in tiny_keras.layers if l.weights]
  assert [(l.name, l.kind) for l in ours] == [(l.name, KINDS[type(l).__name__])
                                              for l in weighted]
  assert all(l.path[-1] == l.name for l in ours)


def test_tiny_nasnet_matches_keras(tiny_keras):
  x = _images(TINY_INPUT)
  model = nasnet.NASNet(**TINY, include_top=True, num_classes=5, precision='highest')
  variables = _flax_variables(model, tiny_keras, x, keras_names.nasnet_large_layers(
      **TINY, include_top=True))
  assert _count(variables) == tiny_keras.count_params()
  logits, feats = jax.jit(model.apply)(variables, x)
  assert set(feats) == set(nasnet.FEATURE_KEYS)  # jit returns dicts with sorted keys
  reference = _keras_stages(tiny_keras, TINY['num_blocks']).predict(x, verbose=0)
  errors = _relative_errors(feats, reference)
  assert max(errors.values()) < 1e-4, errors
  assert feats['features'].dtype == jnp.float32
  want = tiny_keras.predict(x, verbose=0)
  assert np.max(np.abs(logits - want)) / np.max(np.abs(want)) < 1e-4


# Slow: a second compile of the whole network in train mode (the forward parity above is fast).
@pytest.mark.slow
def test_tiny_nasnet_train_mode_matches_keras(tiny_keras):
  """Batch statistics and the running-average update (momentum 0.9997) as Keras's."""
  x = _images(TINY_INPUT, batch=4, seed=2)
  model = nasnet.NASNet(**TINY, include_top=True, num_classes=5, precision='highest')
  layers = keras_names.nasnet_large_layers(**TINY, include_top=True)
  variables = _flax_variables(model, tiny_keras, x, layers)
  (logits, _), updated = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  before = keras_layers.from_keras_model(tiny_keras)
  try:
    want = np.asarray(tiny_keras(x, training=True))
    after = keras_layers.fill(variables, layers, keras_layers.from_keras_model(tiny_keras),
                              check_names=True)
  finally:  # the fixture is shared: put the moving statistics back
    for name, arrays in before:
      tiny_keras.get_layer(name).set_weights(arrays)
  assert np.max(np.abs(logits - want)) / np.max(np.abs(want)) < 1e-4
  # The update is 3e-4 of the gap to the batch statistic: compare the steps, not the sums.
  step = lambda new: jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new,
                                  variables['batch_stats'])
  ours, theirs = step(updated['batch_stats']), step(after['batch_stats'])
  errors = jax.tree.leaves(jax.tree.map(
      lambda a, b: np.max(np.abs(a - b)) / np.max(np.abs(b)), ours, theirs))
  assert max(errors) < 1e-2


def test_nasnet_large_parameter_count():
  target = jax.eval_shape(nasnet.NASNet().init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert _count(target) == NASNET_LARGE_NOTOP_PARAMS
  layers = keras_names.nasnet_large_layers()
  assert len(layers) == 532
  mapped = {l.path for l in layers}
  assert {('stem_conv1',), ('stem_bn1',)} <= mapped
  assert len(mapped) == 532
  assert mapped == set(_module_paths(target['params']))


def _module_paths(tree, prefix=()) -> list[tuple[str, ...]]:
  """Paths of the modules holding kernels or BatchNorm scales (a separable conv counts once)."""
  if any(k in tree for k in ('kernel', 'scale')):
    return [prefix]
  if 'depthwise' in tree:
    return [prefix]
  return [p for k, v in tree.items() for p in _module_paths(v, prefix + (k,))]


def test_small_inputs_are_refused():
  with pytest.raises(ValueError, match='at least 32x32'):
    jax.eval_shape(nasnet.NASNet(**TINY).init, jax.random.key(0), jnp.zeros((1, 31, 64, 3)))


@pytest.mark.slow
def test_nasnet_mobile_style_cells_match_keras():
  """skip_reduction=False (NASNetMobile's wiring) and two cells per stack."""
  config = {'penultimate_filters': 192, 'num_blocks': 2, 'stem_block_filters': 16,
            'skip_reduction': False}
  keras_model = KerasNASNet(input_shape=(72, 72, 3), weights=None, include_top=False,
                            pooling='avg', **config)
  _randomise_batch_norm(keras_model, seed=3)
  layers = keras_names.nasnet_large_layers(**config)
  assert [l.name for l in layers] == [l.name for l in keras_model.layers if l.weights]
  x = _images((72, 72))
  model = nasnet.NASNet(**config, precision='highest')
  variables = _flax_variables(model, keras_model, x, layers)
  _, feats = jax.jit(model.apply)(variables, x)
  errors = _relative_errors(feats, _keras_stages(keras_model, 2).predict(x, verbose=0))
  assert max(errors.values()) < 1e-4, errors


@pytest.mark.slow
def test_nasnet_large_matches_keras():
  """NASNetLarge at its full 331x331: map, order, parameter count and every stage."""
  keras_model = keras.applications.NASNetLarge(input_shape=(331, 331, 3), weights=None,
                                               include_top=False, pooling='avg')
  assert keras_model.count_params() == NASNET_LARGE_NOTOP_PARAMS
  _randomise_batch_norm(keras_model, seed=4)
  x = _images((331, 331), batch=1)
  model = nasnet.NASNet(precision='highest')
  variables = _flax_variables(model, keras_model, x, keras_names.nasnet_large_layers())
  _, feats = jax.jit(model.apply)(variables, x)
  errors = _relative_errors(feats, _keras_stages(keras_model, 6).predict(x, verbose=0))
  assert max(errors.values()) < 1e-4, errors
