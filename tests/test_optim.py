"""The paper's optimiser: labels, frozen groups, per-group learning rates, AdamW by hand, one-cycle."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fwjax import optim
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
  labels = optim.param_labels(_params(), frozen_groups=(0, 1))
  assert labels['body']['conv1']['kernel'] == 'frozen'
  assert labels['body']['bn1']['scale'] == 'group0_no_decay'  # train_bn
  assert labels['body']['layer2']['block0']['downsample_bn']['bias'] == 'group0_no_decay'
  assert labels['body']['layer4']['block0']['conv2']['kernel'] == 'frozen'
  assert labels['body']['layer4']['block0']['bn2']['scale'] == 'group1_no_decay'
  assert labels['head']['fc1'] == {'kernel': 'group2', 'bias': 'group2_no_decay'}
  assert labels['preprocess']['branch1x1'] == {'kernel': 'group2', 'bias': 'group2_no_decay'}
  no_bn = optim.param_labels(_params(), frozen_groups=(0, 1), train_bn=False)
  assert no_bn['body']['bn1']['scale'] == 'frozen'
  unfrozen = optim.param_labels(_params())
  assert unfrozen['body']['layer4']['block0']['conv2']['kernel'] == 'group1'
  # On the real classifier tree: every body conv kernel is frozen in phase 1, nothing else is.
  model = classifier.DescriptorClassifier(preprocess='cbn_3', width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  labels = optim.param_labels(shapes['params'], frozen_groups=(0, 1))
  for path, label in jax.tree_util.tree_leaves_with_path(labels):
    keys = jax.tree_util.keystr(path)
    assert (label == 'frozen') == (keys.startswith("['body']") and "['kernel']" in keys), keys
  counts = optim.count_by_label(shapes['params'], labels)
  assert set(counts) == {'frozen', 'group0_no_decay', 'group1_no_decay', 'group2',
                         'group2_no_decay'}


def _first_step(tx, params, grads):
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  return optax.apply_updates(params, updates)


def _adamw_first_step(p, g, lr, wd):
  # First Adam step with bias correction: m_hat = g, v_hat = g^2.
  return p - lr * (g / (np.abs(g) + optim.EPS) + wd * p)


@pytest.mark.parametrize('phase', [1, 2])
def test_first_step_matches_hand_computed_adamw(phase):
  params = _params()
  grads = jax.tree.map(lambda p: 0.01 * jnp.sin(7 * p) + 1e-3, params)
  tx, _ = optim.phase_optimizer(phase, 10, schedule='constant')
  new = _first_step(tx, params, grads)
  lrs = (1e-3,) * 3 if phase == 1 else (1e-6, 1e-5, 1e-4)
  labels = optim.param_labels(params, frozen_groups=(0, 1) if phase == 1 else ())
  flat = lambda tree: jax.tree_util.tree_leaves_with_path(tree)
  for (path, p), g, n, label in zip(flat(params), jax.tree.leaves(grads), jax.tree.leaves(new),
                                    jax.tree.leaves(labels)):
    p, g, n = np.asarray(p), np.asarray(g), np.asarray(n)
    if label == 'frozen':
      np.testing.assert_array_equal(n, p, err_msg=jax.tree_util.keystr(path))
      continue
    group = int(label[5])
    wd = 0.0 if label.endswith('no_decay') else optim.WEIGHT_DECAY
    np.testing.assert_allclose(n, _adamw_first_step(p, g, lrs[group], wd), rtol=1e-5,
                               atol=1e-9, err_msg=jax.tree_util.keystr(path))
    assert not np.array_equal(n, p)
  if phase == 1:  # the body's BatchNorm moves while its convs stay
    assert not np.array_equal(new['body']['bn1']['scale'], params['body']['bn1']['scale'])


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
  schedule = jax.jit(optim.one_cycle(total, peak))
  for step in range(total + 2):
    expected = _fastai_combined_cos(0.25, peak / 25, peak, peak / 1e5, step / total)
    np.testing.assert_allclose(schedule(step), expected, rtol=2e-5, err_msg=f'step {step}')
  assert float(schedule(0)) == pytest.approx(peak / 25)
  # The warm-up agrees with optax's own one-cycle, which ends lower (peak / div / final_div).
  ref = optax.cosine_onecycle_schedule(400, peak, pct_start=0.25, div_factor=25,
                                       final_div_factor=1e5)
  ours = optim.one_cycle(400, peak)
  np.testing.assert_allclose([ours(s) for s in range(0, 101, 10)],
                             [ref(s) for s in range(0, 101, 10)], rtol=1e-5)
  assert float(ours(400)) == pytest.approx(peak / 1e5) and float(ref(400)) < peak / 1e5 / 10
  assert optim.discriminative_lrs(1e-6, 1e-4) == pytest.approx((1e-6, 1e-5, 1e-4))


def test_each_group_follows_its_own_schedule():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  total = 8
  tx, schedules = optim.phase_optimizer(2, total)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(total):
    updates, state = update(grads, state, params)
    # Constant gradients: m_hat = g and v_hat = g^2 every step, so a no-decay parameter moves by
    # exactly -lr_t g / (|g| + eps): the group's schedule at this step.
    for group, path in ((0, ('body', 'bn1', 'bias')), (1, ('body', 'layer4', 'block0', 'bn2',
                                                          'scale')), (2, ('head', 'fc1', 'bias'))):
      u = updates
      for key in path:
        u = u[key]
      expected = -float(schedules[group](step)) * 0.5 / (0.5 + optim.EPS)
      np.testing.assert_allclose(u, expected, rtol=1e-5, err_msg=f'group {group} step {step}')


def test_bad_arguments():
  with pytest.raises(ValueError, match='phase'):
    optim.phase_optimizer(3, 10)
  with pytest.raises(ValueError, match='total_steps'):
    optim.one_cycle(0, 1e-3)
  with pytest.raises(ValueError, match='3 learning rates'):
    optim.adamw_partition([1e-3])
