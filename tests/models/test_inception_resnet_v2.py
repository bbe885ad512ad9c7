"""InceptionResNetV2 against ``keras.applications.InceptionResNetV2`` (JAX backend, random weights).

The Keras model is built once per module at Keras's smallest input (75x75), with its
BatchNorm statistics randomised so that a wrong epsilon, a missing BatchNorm or a swapped
mean/variance shows. Keras leaves most layers unnamed, so ``fill`` matches them by position
alone: activation parity is what proves the layer list's order, including branches whose
layers have equal shapes (the three 1x1 320 -> 32 convolutions of every block35).
"""

# conftest.py sets KERAS_BACKEND=jax before anything imports Keras.
import flax.linen as nn
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.utils import naming

from fwjax.models import inception_resnet_v2 as irv2
from fwjax.models import keras_layers, keras_names
from keras_parity import keras3_names, randomise_batch_norms, relative_error

SIZE = 75
TOLERANCE = 1e-4  # max|a - b| / max|b| at float32 with precision='highest'


def keras_stage_layers(model: keras.Model) -> dict[str, keras.KerasTensor]:
  """The Keras tensor behind each fwjax stage (the stem's max-pool is unnamed)."""
  pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
  return {
      'stem': pools[1].output,
      'mixed_5b': model.get_layer('mixed_5b').output,
      'block35': model.get_layer('block35_10_ac').output,
      'mixed_6a': model.get_layer('mixed_6a').output,
      'block17': model.get_layer('block17_20_ac').output,
      'mixed_7a': model.get_layer('mixed_7a').output,
      'block8': model.get_layer('conv_7b').input,
      'conv_7b': model.get_layer('conv_7b_ac').output,
      'features': model.output,
  }


@pytest.fixture(scope='module')
def keras_model() -> keras.Model:
  keras.utils.set_random_seed(0)
  model = keras.applications.InceptionResNetV2(weights=None, include_top=False,
                                                pooling='avg', input_shape=(SIZE, SIZE, 3))
  randomise_batch_norms(model)
  return model


@pytest.fixture(scope='module')
def images() -> np.ndarray:
  # Already in Keras's 'tf' range [-1, 1].
  return np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def variables(keras_model) -> dict:
  model = irv2.InceptionResNetV2(precision='highest')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  return keras_layers.fill(shapes, keras_names.inception_resnet_v2_layers(),
                           keras_layers.from_keras_model(keras_model),
                           where='InceptionResNetV2', check_names=True)


@pytest.fixture(scope='module')
def keras_outputs(keras_model, images) -> dict[str, np.ndarray]:
  stages = keras_stage_layers(keras_model)
  probe = keras.Model(keras_model.input, list(stages.values()))
  return dict(zip(stages, (np.asarray(o) for o in probe(images, training=False)), strict=True))


def test_layer_list_follows_keras_order(keras_model):
  layers = keras_names.inception_resnet_v2_layers()
  weighted = [layer for layer in keras_model.layers if layer.get_weights()]
  kinds = [naming.to_snake_case(type(k).__name__) for k in weighted]
  assert [layer.kind for layer in layers] == kinds
  named = [k.name for k in weighted if k.name.startswith(('block', 'conv_7b'))]
  assert [layer.name for layer in layers if layer.name] == named
  # Keras 3 weight files know only class and position: the order alone must fill the model.
  model = irv2.InceptionResNetV2()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  renamed = keras3_names(keras_layers.from_keras_model(keras_model), keras_model)
  keras_layers.fill(shapes, layers, renamed, check_names=False)


def test_parameter_count_equals_keras(keras_model, variables):
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables))
  assert count == keras_model.count_params() == 54_336_736
  # scale=False: a BatchNorm holds beta only, and the up-projections keep their biases.
  assert set(variables['params']['block35_1']['branch0_0']['bn']) == {'bias'}
  assert set(variables['params']['block35_1']['conv']) == {'kernel', 'bias'}


def test_parameter_count_with_top():
  model = irv2.InceptionResNetV2(include_top=True)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  # Keras's InceptionResNetV2 with its top: the body plus Dense 1536 -> 1000.
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(shapes)) == 55_873_736
  assert len(keras_names.inception_resnet_v2_layers(include_top=True)) == 449


def test_stages_match_keras(variables, images, keras_outputs):
  model = irv2.InceptionResNetV2(precision='highest')
  _, feats = jax.jit(model.apply)(variables, images)
  assert set(feats) == set(irv2.FEATURE_KEYS)  # jit returns dicts sorted by key
  for key in irv2.FEATURE_KEYS:
    assert feats[key].shape == keras_outputs[key].shape, key
  errors = {k: relative_error(feats[k], keras_outputs[k]) for k in irv2.FEATURE_KEYS}
  print('relative error per stage:', {k: f'{e:.1e}' for k, e in errors.items()})
  assert max(errors.values()) < TOLERANCE, errors
  assert feats['features'].dtype == jnp.float32


# A second compilation of the whole network (in bfloat16), too long for the fast suite.
@pytest.mark.slow
def test_bfloat16_forward_close_to_float32(variables, images, keras_outputs):
  model = irv2.InceptionResNetV2(dtype=jnp.bfloat16)
  _, feats = jax.jit(model.apply)(variables, images)
  assert feats['conv_7b'].dtype == jnp.bfloat16 and feats['features'].dtype == jnp.float32
  error = relative_error(feats['features'], keras_outputs['features'])
  print(f'bfloat16 features: relative error {error:.1e}')
  # bfloat16 keeps 8 bits of mantissa over some 130 convolutions in a row.
  assert error < 0.1


def test_average_pool_excludes_padding():
  """Keras's AveragePooling2D 'same' (mixed_5b) divides by the cells inside the image."""
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  keras_pool = keras.layers.AveragePooling2D(3, strides=1, padding='same')(x)
  flax_pool = nn.avg_pool(x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False)
  np.testing.assert_allclose(flax_pool, keras_pool, rtol=1e-6)
  assert float(flax_pool[0, 0, 0, 0]) == (0 + 1 + 4 + 5) / 4


# Compiles the whole network once more (in training mode), too long for the fast suite.
@pytest.mark.slow
def test_width_multiplier_tiny_model_trains_batch_stats():
  model = irv2.InceptionResNetV2(width=0.125, include_top=True, num_classes=5)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  # Random numpy leaves instead of model.init: compiling init's random initialisers costs
  # several times as much as the forward pass here.
  rng = np.random.default_rng(5)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = jax.tree_util.tree_map(
      lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(np.float32), shapes)
  assert variables['params']['conv_7b']['conv']['kernel'].shape == (1, 1, 260, 192)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  (logits, feats), updates = apply(variables, x + 0.5, train=True, mutable=('batch_stats',))
  assert logits.shape == (2, 5) and feats['features'].shape == (2, 192)
  assert np.all(np.isfinite(logits))
  assert jax.tree_util.tree_structure(updates['batch_stats']) == jax.tree_util.tree_structure(
      variables['batch_stats'])


def test_refuses_inputs_below_keras_minimum():
  with pytest.raises(ValueError, match='at least 75x75'):
    irv2.InceptionResNetV2(width=0.125).init(jax.random.key(0), jnp.zeros((1, 299, 74, 3)))


@pytest.mark.slow
def test_full_size_with_top_matches_keras():
  keras.utils.set_random_seed(2)
  keras_model = keras.applications.InceptionResNetV2(weights=None, include_top=True,
                                                      classifier_activation=None)
  randomise_batch_norms(keras_model, seed=3)
  model = irv2.InceptionResNetV2(include_top=True, precision='highest')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  variables = keras_layers.fill(shapes, keras_names.inception_resnet_v2_layers(True),
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
