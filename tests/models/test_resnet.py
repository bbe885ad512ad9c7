"""ResNet50 against PyTorch's activations (the parity fixture) and BatchNorm semantics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from fwjax.models import pretrained
from fwjax.models import resnet

FIXTURE = 'fixtures/resnet50_parity'
INPUTS = ('photo224', 'shoeprint352x144')
LAYERS = ('stem', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4', 'features', 'logits')


@functools.lru_cache(maxsize=None)
def _forward(precision):
  model = resnet.ResNet50(width=8, precision=precision)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _max_relative_error(got, want):
  """Largest absolute error relative to the largest reference magnitude of that layer."""
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.fixture(scope='module')
def activations(shared_dir):
  with np.load(shared_dir / FIXTURE / 'activations.npz') as f:
    return dict(f)


@pytest.mark.parametrize('suffix', ['pth', 'safetensors'])
@pytest.mark.parametrize('tag', INPUTS)
def test_matches_torchvision_activations(shared_dir, activations, suffix, tag):
  variables = pretrained.load_torchvision(
      shared_dir / FIXTURE / f'resnet50_w8_torchvision.{suffix}', width=8)
  x = activations[f'{tag}/input_nhwc']
  logits, feats = _forward('highest')(variables, x)
  assert set(feats) == set(resnet.FEATURE_KEYS)
  got = dict(feats, logits=logits)
  for layer in LAYERS:
    want = activations[f'{tag}/{layer}']
    assert got[layer].shape == want.shape, layer
    assert got[layer].dtype == jnp.float32, layer
    assert _max_relative_error(got[layer], want) < 1e-4, layer


def test_same_padding_would_fail_parity(shared_dir, activations):
  """The fixture detects the half-pixel shift of Flax's 'SAME' stride-2 padding."""
  variables = pretrained.load_torchvision(shared_dir / FIXTURE / 'resnet50_w8_torchvision.pth')
  x = activations['photo224/input_nhwc']
  kernel = variables['params']['conv1']['kernel']
  same = jax.lax.conv_general_dilated(x, kernel, (2, 2), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')
  explicit = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                          precision='highest')
  _, feats = _forward('highest')(variables, x)
  bn = variables['params']['bn1'], variables['batch_stats']['bn1']
  normalize = lambda y: np.maximum(
      (y - bn[1]['mean']) / np.sqrt(bn[1]['var'] + 1e-5) * bn[0]['scale'] + bn[0]['bias'], 0)
  np.testing.assert_allclose(normalize(explicit), feats['stem'], rtol=1e-4, atol=1e-4)
  assert _max_relative_error(normalize(same), activations['photo224/stem']) > 1e-2


def test_full_size_name_map_matches_manifest(shared_dir):
  import json
  manifest = json.loads((shared_dir / FIXTURE / 'resnet50_torchvision_manifest.json').read_text())
  assert len(manifest) == 320
  names = pretrained.torchvision_name_map()
  ignored = {k for k in manifest if k.endswith('.num_batches_tracked')}
  assert len(ignored) == 53
  assert set(names) == set(manifest) - ignored
  shapes = pretrained.expected_shapes()  # Full size, via eval_shape: nothing allocated.
  used = set()
  for key, (collection, path, transform) in names.items():
    leaf = shapes[collection]
    for p in path:
      leaf = leaf[p]
    assert transform(np.empty(manifest[key], np.float32)).shape == leaf.shape, key
    used.add((collection, path))
  flax_paths = {(c, tuple(k.key for k in p))
                for c in shapes for p, _ in jax.tree_util.tree_leaves_with_path(shapes[c])}
  assert used == flax_paths  # Every Flax variable filled exactly once.
  count = sum(np.prod(s) for k, s in manifest.items() if k not in ignored and 'running' not in k)
  assert count == 25_557_032  # torchvision's published parameter count.


def _random_variables(model, x, seed=0):
  """Random variables shaped like model.init's (positive running variances), without compiling
  init: each compile of a ResNet costs seconds on a loaded 2-core machine."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.uniform(0.5, 2, s.shape) if 'var' in str(path[-1])
                                  else rng.normal(0, 0.2, s.shape), s.dtype),
      jax.eval_shape(model.init, jax.random.key(0), x))


def _small_model(**kwargs):
  return resnet.ResNet50(width=8, stage_sizes=(1, 1, 1, 1), num_classes=5,
                         precision='highest', **kwargs)


def test_train_mode_batch_stats_use_torch_momentum():
  model = _small_model()
  x = jax.random.normal(jax.random.key(1), (4, 40, 24, 3))
  variables = _random_variables(model, x)
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x)
  conv = jax.lax.conv_general_dilated(x, variables['params']['conv1']['kernel'], (2, 2),
                                      ((3, 3), (3, 3)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')
  old = variables['batch_stats']['bn1']
  new = updates['batch_stats']['bn1']
  # PyTorch momentum 0.1 == Flax momentum 0.9; PyTorch keeps the unbiased running variance,
  # Flax the biased one (both normalise the batch with the biased variance).
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * conv.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * conv.var((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_cross_device_batch_norm_equals_global_batch():
  """norm=batch_norm('data') under shard_map gives the statistics of the whole batch."""
  devices = jax.devices()[:4]
  assert len(devices) == 4, 'conftest fakes 4 CPU devices'
  mesh = Mesh(np.array(devices), ('data',))
  x = jax.random.normal(jax.random.key(1), (8, 48, 32, 3))
  local = _small_model()
  synced = _small_model(norm=resnet.batch_norm(axis_name='data'))
  variables = _random_variables(local, x)

  def step(v, x):
    (logits, _), updates = synced.apply(v, x, train=True, mutable=['batch_stats'])
    return logits, updates

  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P('data')), out_specs=(P('data'), P()))
  got_logits, got_updates = jax.jit(sharded)(variables, x)
  (want_logits, _), want_updates = jax.jit(
      functools.partial(local.apply, train=True, mutable=['batch_stats']))(variables, x)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.tree.leaves(got_updates), jax.tree.leaves(want_updates)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_options_shape_the_tree():
  x = jnp.zeros((2, 352, 144, 3))
  model = _small_model(include_top=False, zero_init_residual=True)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert 'fc' not in variables['params']
  assert set(variables['params']) == {'conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4'}
  block = resnet.Bottleneck(8, 2, functools.partial(nn.Conv, use_bias=False),
                            functools.partial(resnet.batch_norm(), use_running_average=True),
                            zero_init_residual=True)
  block_params = jax.jit(block.init)(jax.random.key(0), jnp.ones((1, 8, 8, 16)))['params']
  assert not np.any(block_params['bn3']['scale']) and np.all(block_params['bn2']['scale'] == 1)
  logits, feats = jax.eval_shape(model.apply, variables, x)
  assert logits is None
  assert feats['layer4'].shape == (2, 11, 5, 256)  # torchvision rounds odd sizes up.
  assert feats['features'].shape == (2, 256)


def test_bfloat16_compute_keeps_float32_params(shared_dir, activations):
  variables = pretrained.load_torchvision(shared_dir / FIXTURE / 'resnet50_w8_torchvision.pth')
  model = resnet.ResNet50(width=8, dtype=jnp.bfloat16)
  x = activations['shoeprint352x144/input_nhwc']
  init_dtypes = jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), x))
  assert {leaf.dtype for leaf in init_dtypes} == {jnp.dtype(jnp.float32)}
  logits, feats = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert feats['layer4'].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32
  # bfloat16 has an 8-bit mantissa: agreement to a few percent through 50 layers.
  assert _max_relative_error(logits, activations['shoeprint352x144/logits']) < 0.1
