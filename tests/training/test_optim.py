"""The paper's optimiser: labels, frozen groups, per-label rates, AdamW by hand, one-cycle."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fwjax.training import optim
from fwjax.models import classifier


def _params():
  """A tree with the classifier's paths: every group, convs, BatchNorm, Dense biases."""
  rng = np.random.default_rng(0)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  bn = lambda n: {'scale': leaf(n), 'bias': leaf(n)}
  return {
      'preprocess': {'branch1x1': {'kernel': leaf(1, 1, 3, 4), 'bias': leaf(4)}, 'bn': bn(3)},
      'body': {'conv1': {'kernel': leaf(3, 3, 3, 4)}, 'bn1': bn(4),
               'layer2': {'block0': {'conv1': {'kernel': leaf(1, 1, 4, 4)}, 'bn1': bn(4),
                                     'downsample_bn': bn(4)}},
               'layer4': {'block0': {'conv2': {'kernel': leaf(3, 3, 4, 4)}, 'bn2': bn(4)}}},
      'head': {'bn1': bn(8), 'fc1': {'kernel': leaf(8, 5), 'bias': leaf(5)}},
  }


def test_labels_are_a_function_of_paths():
  labels = optim.param_labels(_params())
  assert labels['body']['conv1']['kernel'] == 'group0'
  assert labels['body']['bn1'] == {'scale': 'group0_bn', 'bias': 'group0_bn'}
  assert labels['body']['layer2']['block0']['downsample_bn']['bias'] == 'group0_bn'
  assert labels['body']['layer4']['block0']['conv2']['kernel'] == 'group1'
  assert labels['body']['layer4']['block0']['bn2']['scale'] == 'group1_bn'
  assert labels['head']['fc1'] == {'kernel': 'group2', 'bias': 'group2_no_decay'}
  assert labels['head']['bn1']['scale'] == 'group2_bn'
  assert labels['preprocess']['branch1x1'] == {'kernel': 'group2', 'bias': 'group2_no_decay'}
  # On the real classifier tree: phase 1 freezes exactly the body's kernels.
  model = classifier.DescriptorClassifier(preprocess='cbn_3', width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  frozen = optim.phase_plan(1, 10).frozen
  assert set(frozen) == {'group0', 'group0_no_decay', 'group1', 'group1_no_decay'}
  for path, label in jax.tree_util.tree_leaves_with_path(optim.param_labels(shapes['params'])):
    keys = jax.tree_util.keystr(path)
    assert (label in frozen) == (keys.startswith("['body']") and "['kernel']" in keys), keys
  assert set(optim.count_by_label(shapes['params'])) == {
      'group0', 'group0_bn', 'group1', 'group1_bn', 'group2', 'group2_no_decay', 'group2_bn'}


def _adamw_first_step(p, g, lr, wd):
  # First Adam step with bias correction: m_hat = g, v_hat = g^2.
  return p - lr * (g / (np.abs(g) + optim.EPS) + wd * p)


@pytest.mark.parametrize('phase', [1, 2])
def test_first_step_matches_hand_computed_adamw(phase):
  params = _params()
  grads = jax.tree.map(lambda p: 0.01 * jnp.sin(7 * p) + 1e-3, params)
  tx = optim.adamw_groups()
  plan = optim.phase_plan(phase, 10, schedule='constant')
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params,
                                  learning_rates=plan.learning_rates(0))
  new = optax.apply_updates(params, updates)
  lrs = (1e-3,) * 3 if phase == 1 else (1e-6, 1e-5, 1e-4)
  flat = jax.tree_util.tree_leaves_with_path
  for (path, p), g, n, label in zip(flat(params), jax.tree.leaves(grads), jax.tree.leaves(new),
                                    jax.tree.leaves(optim.param_labels(params))):
    p, g, n, where = np.asarray(p), np.asarray(g), np.asarray(n), jax.tree_util.keystr(path)
    if phase == 1 and label in ('group0', 'group1'):  # frozen: bit-for-bit unchanged
      np.testing.assert_array_equal(n, p, err_msg=where)
      continue
    wd = 0.0 if label.endswith(('_no_decay', '_bn')) else optim.WEIGHT_DECAY
    np.testing.assert_allclose(n, _adamw_first_step(p, g, lrs[int(label[5])], wd), rtol=1e-5,
                               atol=1e-9, err_msg=where)
    assert not np.array_equal(n, p)
  # Decay really is applied to kernels only: a zero gradient still shrinks a kernel...
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params, learning_rates=plan.learning_rates(0))
  head = optax.apply_updates(params, updates)['head']
  np.testing.assert_allclose(head['fc1']['kernel'],
                             params['head']['fc1']['kernel'] * (1 - lrs[2] * 0.1), rtol=1e-6)
  # ...and leaves biases and BatchNorm where they are.
  np.testing.assert_array_equal(head['fc1']['bias'], params['head']['fc1']['bias'])
  np.testing.assert_array_equal(head['bn1']['scale'], params['head']['bn1']['scale'])


def _fastai_combined_cos(pct, start, middle, end, pos):
  """fastai.callback.schedule: combine_scheds([pct, 1-pct], [SchedCos(start, middle),
  SchedCos(middle, end)]) with SchedCos(a, b)(p) = a + (1 + cos(pi (1 - p))) (b - a) / 2."""
  sched_cos = lambda a, b, p: a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2
  if pos >= 1:
    return sched_cos(middle, end, 1.0)
  if pos < pct:
    return sched_cos(start, middle, pos / pct)
  return sched_cos(middle, end, (pos - pct) / (1 - pct))


def test_one_cycle_matches_fastai():
  total, peak = 37, 1e-3
  schedule = optim.one_cycle(total, peak)
  for step in range(total + 2):
    expected = _fastai_combined_cos(0.25, peak / 25, peak, peak / 1e5, step / total)
    assert schedule(step) == pytest.approx(expected, rel=1e-9), step
  assert schedule(0) == pytest.approx(peak / 25)
  # The warm-up agrees with optax's own one-cycle, which ends lower (peak / div / final_div).
  ref = optax.cosine_onecycle_schedule(400, peak, pct_start=0.25, div_factor=25,
                                       final_div_factor=1e5)
  ours = optim.one_cycle(400, peak)
  np.testing.assert_allclose([ours(s) for s in range(0, 101, 10)],
                             [ref(s) for s in range(0, 101, 10)], rtol=1e-5)
  assert ours(400) == pytest.approx(peak / 1e5) and float(ref(400)) < peak / 1e5 / 10
  assert optim.discriminative_lrs(1e-6, 1e-4) == pytest.approx((1e-6, 1e-5, 1e-4))


def test_each_group_follows_its_own_schedule():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  total = 8
  tx = optim.adamw_groups()
  plan = optim.phase_plan(2, total)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(total):
    rates = plan.learning_rates(step)
    updates, state = update(grads, state, params, learning_rates=rates)
    # Constant gradients: m_hat = g and v_hat = g^2 every step, so a BatchNorm parameter moves by
    # exactly -lr_t g / (|g| + eps): its group's one-cycle rate at this step.
    for group, leaf in ((0, updates['body']['bn1']['bias']),
                        (1, updates['body']['layer4']['block0']['bn2']['scale']),
                        (2, updates['head']['fc1']['bias'])):
      peak = (1e-6, 1e-5, 1e-4)[group]
      expected = -optim.one_cycle(total, peak)(step) * 0.5 / (0.5 + optim.EPS)
      np.testing.assert_allclose(leaf, expected, rtol=1e-5, err_msg=f'group {group} step {step}')


def test_bad_arguments():
  with pytest.raises(ValueError, match='phase'):
    optim.phase_plan(3, 10)
  with pytest.raises(ValueError, match='total_steps'):
    optim.one_cycle(0, 1e-3)
  with pytest.raises(ValueError, match='schedule'):
    optim.phase_plan(1, 10, schedule='linear')
