"""Data-parallel steps and the two-phase fit: 4 devices = 1 device, exact resume, NaN guard."""

import functools
from typing import Any

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fwjax import augment as augment_lib
from fwjax.training import losses
from fwjax.training import steps
from fwjax.training import train
from fwjax import descriptors

H, W = 16, 16


class _ConvBN(nn.Module):
  bn_axis_name: str | None
  dtype: Any
  features: int = 8

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype, name='conv')(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.bn_axis_name,
                        dtype=self.dtype, name='bn')(x)


class _Body(nn.Module):
  bn_axis_name: str | None
  dtype: Any

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             axis_name=self.bn_axis_name, dtype=self.dtype, name='bn1')(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(_ConvBN(self.bn_axis_name, self.dtype, name='layer1')(x, train))
    return nn.relu(_ConvBN(self.bn_axis_name, self.dtype, name='layer3')(x, train))


class TinyClassifier(nn.Module):
  """The classifier's parameter layout (preprocess; body conv1/bn1, layer1, layer3 with
  BatchNorm; head with dropout and a biased Dense) at a size that compiles in about a second.
  The steps and fit do not depend on depth; the real classifier runs in test_descriptor_job."""
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train=False):
    x = _ConvBN(self.bn_axis_name, self.dtype, 3, name='preprocess')(x, train)
    x = _Body(self.bn_axis_name, self.dtype, name='body')(x, train)
    x = jnp.concatenate([x.max(axis=(1, 2)), x.mean(axis=(1, 2))], axis=-1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(17, dtype=self.dtype, name='head')(x).astype(jnp.float32)


def _model(**kwargs):
  return TinyClassifier(**kwargs)


@functools.lru_cache(maxsize=None)
def _variables(model, seed=0):
  # jitted (eager init compiles every primitive one by one) and cached: compiling dominates here.
  return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, H, W, 3)))


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, 17)) < 0.3).astype(np.float32)
  images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
  return {'image': images, 'label': labels, 'mask': np.ones(n, bool)}


def _run_steps(model, variables, tx, loss, devices, batches, augment=None):
  mesh = steps.make_mesh(devices)
  state = steps.replicate(steps.create_state(variables, tx, jax.random.key(3)), mesh)
  step = steps.make_train_step(model, tx, loss, mesh, augment=augment)
  values, states = [], []
  for batch in batches:
    state, metrics = step(state, steps.shard_batch(batch, mesh))
    values.append(float(metrics['loss']))
    states.append(jax.device_get(state))
  return states, values


def _both_losses(weights):
  """BCE + Soft-F1 in one loss, so one compiled step checks both across devices."""
  bce, f1 = losses.make_loss('bce', weights), losses.make_loss('soft_f1')
  return losses.AdditiveLoss(
      'both', lambda lo, la, m: (bce.statistics(lo, la, m), f1.statistics(lo, la, m)),
      lambda stats: bce.finish(stats[0]) + f1.finish(stats[1]))


@pytest.fixture(scope='module')
def sgd_runs():
  # Dropout draws per device, so it is off here; everything else is the real step.
  model = _model(bn_axis_name='data', dropout=0.0)
  variables = _variables(_model())
  # One step: from a random initialisation, tiny BatchNorm batches amplify float noise chaotically
  # over several steps, so the equality that matters (same state in, same state out) is per step.
  batches = [_batch(8, 1)]
  weights = losses.label_weights(np.concatenate([b['label'] for b in batches]), missing='max')
  loss = _both_losses(weights)
  # Plain SGD moves parameters by the gradient itself, so equal parameters mean equal gradients
  # (Adam's g / (|g| + eps) would magnify float noise in near-zero gradients).
  tx = optax.sgd(0.1)
  runs = {n: _run_steps(model, variables, tx, loss, jax.devices()[:n], batches) for n in (1, 4)}
  return dict(model=model, variables=variables, batches=batches, loss=loss, tx=tx, runs=runs)


def test_four_devices_match_one_device(sgd_runs):
  assert len(jax.devices()) == 4, 'tests/conftest.py fakes 4 CPU devices'
  (one, one_loss), (four, four_loss) = sgd_runs['runs'][1], sgd_runs['runs'][4]
  one, four = one[-1], four[-1]
  variables, batch = sgd_runs['variables'], sgd_runs['batches'][0]
  np.testing.assert_allclose(four_loss, one_loss, rtol=1e-5)
  for tree in ('params', 'batch_stats'):
    for (path, a), b, start in zip(jax.tree_util.tree_leaves_with_path(getattr(one, tree)),
                                   jax.tree.leaves(getattr(four, tree)),
                                   jax.tree.leaves(variables[tree])):
      # Every leaf moved, and moved the same way on 4 devices to 1e-3 of its largest change.
      change = np.abs(a - start).max()
      assert change > 0, jax.tree_util.keystr(path)
      np.testing.assert_allclose(b - start, a - start, atol=1e-3 * change,
                                 err_msg=jax.tree_util.keystr(path))
  # The single-device loss is the loss computed directly on the whole global batch.
  logits, _ = jax.jit(functools.partial(_model(dropout=0.0).apply, train=True,
                                        mutable=['batch_stats']))(
      variables, steps.normalize(batch['image']))
  np.testing.assert_allclose(one_loss[0], sgd_runs['loss'](logits, batch['label']), rtol=1e-5)


def test_augmentation_is_the_same_on_four_devices_and_one(sgd_runs):
  """Each image's transform is keyed by its global index, so the device count does not matter."""
  spec = augment_lib.Augment(flip=True, max_rotation=10.0, max_shift=0.1)
  args = (sgd_runs['model'], sgd_runs['variables'], sgd_runs['tx'], sgd_runs['loss'])
  (one,), (one_loss,) = _run_steps(*args, jax.devices()[:1], sgd_runs['batches'], spec)
  (four,), (four_loss,) = _run_steps(*args, jax.devices(), sgd_runs['batches'], spec)
  np.testing.assert_allclose(four_loss, one_loss, rtol=1e-5)
  plain_loss = sgd_runs['runs'][1][1][0]
  assert abs(one_loss - plain_loss) > 1e-4  # the augmentation did change the batch
  start = sgd_runs['variables']['params']['head']['kernel']
  d_one = np.asarray(one.params['head']['kernel'] - start)
  d_four = np.asarray(four.params['head']['kernel'] - start)
  np.testing.assert_allclose(d_four, d_one, atol=1e-3 * np.abs(d_one).max())


def test_bfloat16_compute_keeps_float32_params(sgd_runs):
  model = sgd_runs['model'].clone(dtype=jnp.bfloat16)
  variables = sgd_runs['variables']
  half, half_loss = _run_steps(model, variables, sgd_runs['tx'], sgd_runs['loss'],
                               jax.devices(), sgd_runs['batches'][:1])
  full, full_loss = sgd_runs['runs'][4]
  half, full = half[0], full[0]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(half.params))
  np.testing.assert_allclose(half_loss[0], full_loss[0], rtol=2e-2)  # 8 mantissa bits
  # The update agrees with float32 to bfloat16 precision.
  start = variables['params']['head']['kernel']
  d_half = np.asarray(half.params['head']['kernel'] - start)
  d_full = np.asarray(full.params['head']['kernel'] - start)
  np.testing.assert_allclose(d_half, d_full, atol=0.05 * np.abs(d_full).max())


def test_eval_step_scores_in_batch_order():
  model = _model(bn_axis_name='data')
  variables = _variables(_model())
  batch = _batch(8, 6)
  mesh = steps.make_mesh()
  logits = steps.gather(steps.make_eval_step(model, mesh)(steps.replicate(variables, mesh),
                                                         steps.shard_batch(batch, mesh)))
  expected = jax.jit(_model().apply)(variables, steps.normalize(batch['image']))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def _fit_data(labels_nan_from_epoch=None):
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (40, H, W, 3), dtype=np.uint8)
  labels = (rng.random((40, 17)) < 0.3).astype(np.float32)
  labels[:, 0] = images[..., 0].mean(axis=(1, 2)) > 127  # something learnable
  data = train.array_data(images[:24], labels[:24], images[24:], labels[24:], batch_size=8,
                          seed=1)
  if labels_nan_from_epoch is not None:
    clean = data.train_batches

    def poisoned(epoch):
      for batch in clean(epoch):
        if epoch >= labels_nan_from_epoch:
          batch = dict(batch, label=np.full_like(batch['label'], np.nan))
        yield batch

    data.train_batches = poisoned
  return data


def _fit(tmp_path, data, **kwargs):
  config = train.FitConfig(**{'epochs_phase1': 1, 'epochs_phase2': 2, 'phase2_lrs': (1e-4, 1e-2),
                              'phase1_lr': 1e-2, 'progress': False,
                              'checkpoint_dir': str(tmp_path), **kwargs})
  model = _model()
  return train.fit(model, _variables(model), data, losses.make_loss('bce'), config)


def test_resume_gives_the_uninterrupted_result(tmp_path):
  data = _fit_data()
  whole = _fit(tmp_path / 'whole', data)
  assert whole.complete and [r['epoch'] for r in whole.history] == [1, 2, 3]
  assert [r['phase'] for r in whole.history] == [1, 2, 2]
  # Interrupted after phase 1, then in the middle of phase 2, then run to the end.
  first = _fit(tmp_path / 'parts', data, stop_after_epochs=1)
  assert not first.complete and first.last_checkpoint.endswith('last/1')
  _fit(tmp_path / 'parts', data, stop_after_epochs=2)
  rest = _fit(tmp_path / 'parts', data)
  assert rest.complete and [r['epoch'] for r in rest.history] == [1, 2, 3]
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(whole.variables),
                          jax.tree.leaves(rest.variables)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  np.testing.assert_array_equal(whole.valid_logits, rest.valid_logits)
  for key in ('train_loss', 'valid_loss', 'macro_prauc', 'lrs'):
    assert [r[key] for r in whole.history] == [r[key] for r in rest.history], key
  # A finished run resumes to the same answer without training again.
  again = _fit(tmp_path / 'parts', data)
  assert again.history == rest.history
  np.testing.assert_array_equal(again.valid_logits, rest.valid_logits)
  # Phase 1 left the body's convolutions alone; phase 2 moved them.
  start = _variables(_model())['params']['body']['layer3']['conv']['kernel']
  assert not np.array_equal(whole.variables['params']['body']['layer3']['conv']['kernel'], start)
  # The per-epoch record is complete and the best checkpoint is where it says.
  record = whole.history[-1]
  assert set(record['per_label_ap']) == set(descriptors.CODES)
  assert record['lrs'][2] > 0 and whole.history[0]['lrs'][:2] == [0.0, 0.0]
  assert whole.best_checkpoint.endswith(f'best/{whole.best_epoch}')


def test_resume_refuses_another_configuration(tmp_path):
  data = _fit_data()
  _fit(tmp_path, data, stop_after_epochs=1)
  with pytest.raises(ValueError, match='different configuration'):
    _fit(tmp_path, data, phase1_lr=5e-3)


def test_non_finite_loss_names_step_and_checkpoint(tmp_path):
  data = _fit_data(labels_nan_from_epoch=1)
  with pytest.raises(train.NonFiniteLossError) as error:
    _fit(tmp_path, data)
  message = str(error.value)
  # Epoch 1 (3 steps) went well and was checkpointed; step 4 is the first of epoch 2.
  assert 'at step 4 (epoch 2, phase 2)' in message
  assert str(tmp_path / 'last' / '1') in message


def test_batch_must_split_over_devices():
  with pytest.raises(ValueError, match='multiple of 4'):
    steps.local_batch_size(6, steps.make_mesh())
