"""The data-parallel steps against direct computation: normalize, mesh helpers, train, eval.

tests/training/test_train.py compares 4 devices with 1 on a full batch; here each step is compared
with a reference computed without a mesh (``jax.grad`` of the loss of the whole batch, the model
applied directly), with padding rows masked out unevenly across the devices.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fwjax.training import losses, optim, steps

H, W, L = 8, 8, 17
LR = 0.1


class _Body(nn.Module):
  bn_axis_name: str | None
  dtype: Any

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype, name='conv1')(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                axis_name=self.bn_axis_name, dtype=self.dtype, name='bn1')(x))


class _Tiny(nn.Module):
  """The classifier's parameter groups (preprocess, body conv1/bn1, head) in a few hundred
  parameters, so each compiled step takes well under a second."""
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(3, (1, 1), dtype=self.dtype, name='preprocess')(x)
    x = _Body(self.bn_axis_name, self.dtype, name='body')(x, train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(L, dtype=self.dtype, name='head')(x).astype(jnp.float32)


@functools.cache
def _variables():
  return jax.jit(_Tiny().init)(jax.random.key(0), jnp.zeros((1, H, W, 3)))


def _batch(n, seed=0, mask=None):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
          'label': (rng.random((n, L)) < 0.3).astype(np.float32),
          'mask': np.ones(n, bool) if mask is None else np.asarray(mask, bool)}


def _bce_plus_soft_f1(weights):
  """Weighted BCE + Soft-F1 (whose counts do not split into per-example terms)."""
  bce, f1 = losses.make_loss('bce', weights), losses.make_loss('soft_f1')
  return losses.AdditiveLoss(
      'both', lambda lo, la, m: (bce.statistics(lo, la, m), f1.statistics(lo, la, m)),
      lambda stats: bce.finish(stats[0]) + f1.finish(stats[1]))


# Two rows per device on 4 devices: device 1 has one padding row, device 2 has only padding.
_MASK = (True, True, True, False, False, False, True, True)
_WEIGHTS = np.linspace(0.5, 1.5, L).astype(np.float32)


def test_normalize_is_the_imagenet_formula():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  expected = (pixels.astype(np.float64) / 255.0 - mean) / std
  np.testing.assert_allclose(steps.normalize(pixels), expected, rtol=1e-5, atol=1e-6)
  # Float pixels in 0..255 give the same; the output dtype is the one asked for.
  np.testing.assert_allclose(steps.normalize(pixels.astype(np.float32)), expected, rtol=1e-5,
                             atol=1e-6)
  half = steps.normalize(pixels, jnp.bfloat16)
  assert half.dtype == jnp.bfloat16 and half.shape == pixels.shape
  np.testing.assert_allclose(np.asarray(half, np.float32), expected, rtol=1e-2, atol=1e-2)


def test_mesh_spans_the_devices_in_order():
  mesh = steps.make_mesh()
  assert mesh.axis_names == (steps.AXIS,) and list(mesh.devices) == jax.devices()
  two = steps.make_mesh(jax.devices()[2:])
  assert two.size == 2 and list(two.devices) == jax.devices()[2:]


def test_replicate_copies_to_every_device():
  mesh = steps.make_mesh()
  tree = {'a': np.arange(6.0).reshape(2, 3), 'b': jnp.ones(4, jnp.int32)}
  copy = steps.replicate(tree, mesh)
  for name, leaf in copy.items():
    assert leaf.sharding.is_fully_replicated
    assert {s.device for s in leaf.addressable_shards} == set(jax.devices())
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(shard.data, tree[name])
  # A copy, not an alias of the caller's buffer (which a donating step would free).
  (home,) = tree['b'].devices()
  (shard,) = [s for s in copy['b'].addressable_shards if s.device == home]
  assert shard.data.unsafe_buffer_pointer() != tree['b'].unsafe_buffer_pointer()


def test_local_batch_size_and_uneven_batches():
  four, one = steps.make_mesh(), steps.make_mesh(jax.devices()[:1])
  assert steps.local_batch_size(8, four) == 8  # one process feeds the whole global batch
  assert steps.local_batch_size(6, one) == 6
  with pytest.raises(ValueError, match='batch size 6 does not split over 4 devices'):
    steps.local_batch_size(6, four)
  # A batch that reaches shard_batch unchecked is refused too, naming both sizes.
  with pytest.raises(ValueError, match=r'(?s)partitioned 4 times.*size is 6'):
    steps.shard_batch(_batch(6), four)


def test_shard_batch_puts_slice_i_on_device_i():
  mesh = steps.make_mesh()
  batch = _batch(8, 1)
  sharded = steps.shard_batch(batch, mesh)
  assert set(sharded) == {'image', 'label', 'mask'}
  for name, array in sharded.items():
    assert array.shape == batch[name].shape and array.dtype == batch[name].dtype
    by_device = {s.device: np.asarray(s.data) for s in array.addressable_shards}
    for i, device in enumerate(jax.devices()):
      np.testing.assert_array_equal(by_device[device], batch[name][2 * i:2 * i + 2])
  np.testing.assert_array_equal(steps.gather(sharded['image']), batch['image'])


def test_create_state_takes_typed_or_raw_keys():
  tx = optax.sgd(LR)
  typed = steps.create_state(_variables(), tx, jax.random.key(5), step=3)
  raw = steps.create_state(_variables(), tx, jax.random.key_data(jax.random.key(5)))
  assert typed.rng.dtype == jnp.uint32 and int(typed.step) == 3 and int(raw.step) == 0
  np.testing.assert_array_equal(typed.rng, raw.rng)
  assert typed.params is _variables()['params']
  assert jax.tree.structure(typed.opt_state) == jax.tree.structure(tx.init(typed.params))


def _reference_step(variables, batch, loss):
  """One SGD step computed directly on the whole batch, without a mesh."""
  model = _Tiny()  # batch statistics over the whole batch, as the synchronised BatchNorm does
  images = steps.normalize(batch['image'])

  def objective(params):
    logits, updated = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                  images, train=True, mutable=['batch_stats'])
    return loss(logits, batch['label'], batch['mask']), updated['batch_stats']

  (value, batch_stats), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
      variables['params'])
  params = jax.tree.map(lambda p, g: p - LR * g, variables['params'], grads)
  return value, params, batch_stats


def test_train_step_is_sgd_on_the_whole_masked_batch():
  variables, batch = _variables(), _batch(8, 2, _MASK)
  before = jax.tree.map(np.array, variables)
  loss = _bce_plus_soft_f1(_WEIGHTS)
  mesh = steps.make_mesh()
  tx = optax.sgd(LR)
  state = steps.replicate(steps.create_state(variables, tx, jax.random.key(1)), mesh)
  step = steps.make_train_step(_Tiny(bn_axis_name=steps.AXIS), tx, loss, mesh)  # donates
  state, metrics = step(state, steps.shard_batch(batch, mesh))
  # The step donated its replicated copy; the caller's variables are readable and unchanged.
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  value, params, batch_stats = _reference_step(variables, batch, loss)
  assert float(metrics['count']) == sum(_MASK) and int(state.step) == 1
  np.testing.assert_allclose(float(metrics['loss']), float(value), rtol=1e-5)
  for name, got, want in (('params', state.params, params),
                          ('batch_stats', state.batch_stats, batch_stats)):
    start = jax.tree.leaves(variables[name])
    for (path, a), b, s in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                               start):
      change = np.abs(np.asarray(b) - s).max()
      assert change > 0, f'{name}{jax.tree_util.keystr(path)} did not move in the reference'
      np.testing.assert_allclose(np.asarray(a) - s, np.asarray(b) - s, atol=1e-4 * change,
                                 err_msg=f'{name}{jax.tree_util.keystr(path)}')


def test_train_step_takes_per_label_rates_and_is_reproducible():
  variables, batch = _variables(), _batch(8, 3)
  mesh = steps.make_mesh()
  tx = optim.adamw_groups()
  model = _Tiny(bn_axis_name=steps.AXIS, dropout=0.5)
  step = steps.make_train_step(model, tx, losses.make_loss('soft_f1'), mesh, donate=False)
  state = steps.replicate(steps.create_state(variables, tx, jax.random.key(2)), mesh)
  sharded = steps.shard_batch(batch, mesh)
  # Only the preprocess layer and the head (group 2) learn; the body keeps its parameters.
  rates = {label: np.float32(1e-2 if label.startswith('group2') else 0.0)
           for label in optim.LABELS}
  new, metrics = step(state, sharded, rates)
  params, start = jax.device_get(new.params), variables['params']
  for part in ('preprocess', 'head'):
    for leaf, first in zip(jax.tree.leaves(params[part]), jax.tree.leaves(start[part])):
      assert np.abs(leaf - first).max() > 1e-4, part
  for leaf, first in zip(jax.tree.leaves(params['body']), jax.tree.leaves(start['body'])):
    np.testing.assert_array_equal(leaf, first)
  # BatchNorm's running statistics follow the batch whatever the rates.
  assert not np.allclose(new.batch_stats['body']['bn1']['mean'],
                         variables['batch_stats']['body']['bn1']['mean'])
  # Without donation the input state stays usable; the same state and batch give the same step
  # (dropout included), and another key gives another dropout draw.
  again, metrics_again = step(state, sharded, rates)
  assert float(metrics_again['loss']) == float(metrics['loss'])
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)
  other = steps.replicate(steps.create_state(variables, tx, jax.random.key(9)), mesh)
  assert float(step(other, sharded, rates)[1]['loss']) != float(metrics['loss'])


def test_eval_loss_equals_the_loss_of_the_model_applied_directly():
  variables = _variables()
  batch = _batch(8, 5, _MASK)
  mesh = steps.make_mesh()
  logits = steps.gather(steps.make_eval_step(_Tiny(bn_axis_name=steps.AXIS), mesh)(
      steps.replicate(variables, mesh), steps.shard_batch(batch, mesh)))
  assert logits.shape == (8, L) and logits.dtype == np.float32
  keep = np.asarray(_MASK)
  direct = jax.jit(_Tiny().apply)(variables, steps.normalize(batch['image'][keep]))
  np.testing.assert_allclose(logits[keep], direct, rtol=1e-4, atol=1e-5)
  for loss in (losses.make_loss('bce', _WEIGHTS), losses.make_loss('soft_f1')):
    # Scoring the padded batch and masking equals scoring only the real rows.
    masked = loss(jnp.asarray(logits), batch['label'], batch['mask'])
    np.testing.assert_allclose(masked, loss(direct, batch['label'][keep]), rtol=1e-5)


def test_gather_returns_the_whole_array():
  mesh = steps.make_mesh()
  x = np.arange(24, dtype=np.float32).reshape(8, 3)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  out = steps.gather(sharded)
  assert isinstance(out, np.ndarray)
  np.testing.assert_array_equal(out, x)


def test_initialize_distributed_passes_its_arguments_on(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  steps.initialize_distributed('10.0.0.1:1234', 2, 1)
  steps.initialize_distributed()
  assert calls == [
      {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1},
      {'coordinator_address': None, 'num_processes': None, 'process_id': None}]
