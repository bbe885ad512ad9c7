"""Xception against ``keras.applications.Xception`` itself (JAX backend, random weights).

The Keras model is built once per module at Keras's smallest input (71x71), with its
BatchNorm statistics randomised so that a wrong epsilon, a missing BatchNorm or a swapped
mean/variance shows; its weights fill the Flax model through the explicit layer list.
"""

# conftest.py sets KERAS_BACKEND=jax before anything imports Keras.
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.utils import naming

from fwjax.models import keras_layers, keras_names, xception
from keras_parity import keras3_names, randomise_batch_norms, relative_error

SIZE = 71
TOLERANCE = 1e-4  # max|a - b| / max|b| at float32 with precision='highest'


def keras_stage_layers(model: keras.Model) -> dict[str, keras.KerasTensor]:
  """The Keras tensor behind each fwjax stage; blocks 2..13 end in unnamed ``add`` layers."""
  stages = {'block1': model.get_layer('block1_conv2_act').output}
  for i in range(2, 13):
    stages[f'block{i}'] = model.get_layer(f'block{i + 1}_sepconv1_act').input
  stages['block13'] = model.get_layer('block14_sepconv1').input
  stages['block14'] = model.get_layer('block14_sepconv2_act').output
  stages['features'] = model.output
  return stages


@pytest.fixture(scope='module')
def keras_model() -> keras.Model:
  keras.utils.set_random_seed(0)
  model = keras.applications.Xception(weights=None, include_top=False, pooling='avg',
                                      input_shape=(SIZE, SIZE, 3))
  randomise_batch_norms(model)
  return model


@pytest.fixture(scope='module')
def images() -> np.ndarray:
  # Already in Keras's 'tf' range [-1, 1].
  return np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def variables(keras_model) -> dict:
  model = xception.Xception(precision='highest')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  return keras_layers.fill(shapes, keras_names.xception_layers(),
                           keras_layers.from_keras_model(keras_model), where='Xception',
                           check_names=True)


@pytest.fixture(scope='module')
def keras_outputs(keras_model, images) -> dict[str, np.ndarray]:
  stages = keras_stage_layers(keras_model)
  probe = keras.Model(keras_model.input, list(stages.values()))
  return dict(zip(stages, (np.asarray(o) for o in probe(images, training=False)), strict=True))


def test_flax_same_is_tensorflow_same():
  """lax's 'SAME' splits padding exactly as TensorFlow/Keras (extra cell after), stride 2 too."""
  for n in range(1, 40):
    for k in (1, 2, 3, 5, 7):
      for s in (1, 2, 3):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        assert jax.lax.padtype_to_pads((n,), (k,), (s,), 'SAME') == [(total // 2,
                                                                      total - total // 2)]


def test_layer_list_follows_keras_order(keras_model):
  layers = keras_names.xception_layers()
  weighted = [layer for layer in keras_model.layers if layer.get_weights()]
  kinds = [naming.to_snake_case(type(k).__name__) for k in weighted]
  assert [layer.kind for layer in layers] == kinds
  # Keras 3 weight files know only class and position: the order alone must fill the model.
  model = xception.Xception()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  renamed = keras3_names(keras_layers.from_keras_model(keras_model), keras_model)
  # block2's residual (the third Conv2D) comes after its separable units, not before them.
  assert renamed[8][0] == 'layers/conv2d_2'
  keras_layers.fill(shapes, layers, renamed, check_names=False)


def test_parameter_count_equals_keras(keras_model, variables):
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables))
  assert count == keras_model.count_params() == 20_861_480


def test_parameter_count_with_top():
  model = xception.Xception(include_top=True)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  # Keras's Xception with its top: 22,910,480 (the body plus Dense 2048 -> 1000).
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(shapes)) == 22_910_480
  assert len(keras_names.xception_layers(include_top=True)) == 81


def test_stages_match_keras(variables, images, keras_outputs):
  model = xception.Xception(precision='highest')
  _, feats = jax.jit(model.apply)(variables, images)
  assert set(feats) == set(xception.FEATURE_KEYS)  # jit returns dicts sorted by key
  errors = {k: relative_error(feats[k], keras_outputs[k]) for k in xception.FEATURE_KEYS}
  for key in xception.FEATURE_KEYS:
    assert feats[key].shape == keras_outputs[key].shape, key
  print('relative error per stage:', {k: f'{e:.1e}' for k, e in errors.items()})
  assert max(errors.values()) < TOLERANCE, errors
  assert feats['features'].dtype == jnp.float32


def test_bfloat16_forward_close_to_float32(variables, images, keras_outputs):
  model = xception.Xception(dtype=jnp.bfloat16)
  _, feats = jax.jit(model.apply)(variables, images)
  assert feats['block14'].dtype == jnp.bfloat16 and feats['features'].dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa; 36 convolutions deep, a few per cent is expected.
  error = relative_error(feats['features'], keras_outputs['features'])
  print(f'bfloat16 features: relative error {error:.1e}')
  assert error < 0.1


def test_width_multiplier_tiny_model_trains_batch_stats():
  model = xception.Xception(width=0.125, include_top=True, num_classes=5)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  # Random numpy leaves instead of model.init: compiling init's random initialisers costs
  # several times as much as the forward pass here.
  rng = np.random.default_rng(5)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = jax.tree_util.tree_map(
      lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
  assert variables['params']['block14']['sepconv2']['pointwise']['kernel'].shape == (1, 1, 192,
                                                                                      256)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  (logits, feats), updates = apply(variables, x + 0.5, train=True, mutable=('batch_stats',))
  assert logits.shape == (2, 5) and feats['features'].shape == (2, 256)
  assert np.all(np.isfinite(logits))
  assert jax.tree_util.tree_structure(updates['batch_stats']) == jax.tree_util.tree_structure(
      variables['batch_stats'])


def test_refuses_inputs_below_keras_minimum():
  with pytest.raises(ValueError, match='at least 71x71'):
    xception.Xception(width=0.125).init(jax.random.key(0), jnp.zeros((1, 70, 96, 3)))


@pytest.mark.slow
def test_full_size_with_top_matches_keras():
  keras.utils.set_random_seed(2)
  keras_model = keras.applications.Xception(weights=None, include_top=True,
                                            classifier_activation=None)
  randomise_batch_norms(keras_model, seed=3)
  model = xception.Xception(include_top=True, precision='highest')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  variables = keras_layers.fill(shapes, keras_names.xception_layers(include_top=True),
                                keras_layers.from_keras_model(keras_model), check_names=True)
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(variables)) == (
      keras_model.count_params())
  images = np.random.default_rng(4).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
  stages = keras_stage_layers(keras_model)
  stages['features'] = keras_model.get_layer('avg_pool').output  # pooling='avg' with a top
  probe = keras.Model(keras_model.input, [*stages.values(), keras_model.output])
  *keras_stages, logits = (np.asarray(o) for o in probe(images, training=False))
  flax_logits, feats = jax.jit(model.apply)(variables, images)
  errors = {k: relative_error(feats[k], v) for k, v in zip(stages, keras_stages, strict=True)}
  errors['logits'] = relative_error(flax_logits, logits)
  print('299x299 relative error:', {k: f'{e:.1e}' for k, e in errors.items()})
  assert max(errors.values()) < TOLERANCE, errors
