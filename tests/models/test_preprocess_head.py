"""Preprocessing layers and the multilabel head against plain numpy forward passes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwjax.models import head as head_lib
from fwjax.models import preprocess

RNG = np.random.default_rng(0)


def conv2d_reference(x, kernel, bias=None, pad=0):
  """Stride-1 cross-correlation (NHWC x HWIO) with zero padding, in float64 numpy."""
  k = kernel.shape[0]
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # B,H,W,C,kh,kw
  out = np.einsum('bhwcij,ijco->bhwo', windows, np.asarray(kernel, np.float64))
  return out if bias is None else out + bias


def max_pool3_reference(x):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2)).max(axis=(-2, -1))


def bn_reference(x, params, stats, eps=1e-5):
  return (x - stats['mean']) / np.sqrt(stats['var'] + eps) * params['scale'] + params['bias']


def _randomize(variables):
  """Random parameters and running statistics (positive variances), so nothing is trivial."""
  def draw(path, x):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return jnp.asarray(RNG.uniform(0.5, 2.0, x.shape), x.dtype)
    return jnp.asarray(RNG.normal(0, 0.5, x.shape), x.dtype)
  return jax.tree_util.tree_map_with_path(draw, variables)


def _apply(module, x, **kwargs):
  variables = _randomize(jax.jit(module.init)(jax.random.key(0), x))
  return variables, np.asarray(
      jax.jit(functools.partial(module.apply, **kwargs))(variables, x), np.float64)


@pytest.mark.parametrize('name', preprocess.PREPROCESSING)
def test_preprocessing_matches_numpy(name):
  x = RNG.normal(size=(2, 13, 10, 3)).astype(np.float32)
  module = preprocess.make_preprocess(name, precision='highest')
  variables, got = _apply(module, x)
  assert got.shape == x.shape
  if name == 'no_tfm':
    assert 'params' not in variables or not variables['params']
    np.testing.assert_array_equal(got, x)
    return
  p, s = variables['params'], variables['batch_stats']
  if name in ('cbn_1', 'cbn_3'):
    want = conv2d_reference(x, p['conv']['kernel'], pad=int(name[-1]) // 2)
  else:
    branch = lambda n, pad, inp=x: conv2d_reference(inp, p[n]['kernel'], p[n]['bias'], pad)
    y = np.concatenate([branch('branch1x1', 0), branch('branch3x3', 1), branch('branch5x5', 2),
                        branch('branch_pool', 0, max_pool3_reference(x))], axis=-1)
    y = np.maximum(y, 0)
    if name == 'inc_d':
      y = np.concatenate([x, y], axis=-1)
    want = conv2d_reference(y, p['project']['kernel'])
  want = bn_reference(want, p['bn'], s['bn'])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_preprocessing_sizes_and_errors():
  x = jnp.zeros((1, 352, 144, 3))
  count = lambda name, **kw: sum(np.prod(v.shape) for v in jax.tree.leaves(
      jax.eval_shape(preprocess.make_preprocess(name, **kw).init, jax.random.key(0), x)['params']))
  branches = (3 + 1) * 8 + (27 + 1) * 8 + (75 + 1) * 8 + (3 + 1) * 8
  assert count('cbn_1') == 9 + 6
  assert count('cbn_3') == 81 + 6
  assert count('inc') == branches + 32 * 3 + 6
  assert count('inc_d') == branches + 35 * 3 + 6
  assert count('inc_d', branch_features=4) == branches // 2 + 19 * 3 + 6
  with pytest.raises(ValueError, match="unknown preprocessing 'inc_x'"):
    preprocess.make_preprocess('inc_x')


def test_head_matches_numpy_in_eval_mode():
  x = RNG.normal(size=(3, 5, 4, 64)).astype(np.float32)
  module = head_lib.MultilabelHead(num_labels=17, hidden=(32,), precision='highest')
  variables, got = _apply(module, x)
  p, s = variables['params'], variables['batch_stats']
  pooled = np.concatenate([x.max(axis=(1, 2)), x.mean(axis=(1, 2))], axis=-1)  # max first
  h = bn_reference(pooled, p['bn1'], s['bn1']) @ p['fc1']['kernel'] + p['fc1']['bias']
  want = bn_reference(np.maximum(h, 0), p['bn2'], s['bn2']) @ p['fc2']['kernel'] + p['fc2']['bias']
  assert got.shape == (3, 17)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_head_init_sizes_and_dropout():
  x = jnp.asarray(RNG.normal(size=(64, 2, 2, 1024)), jnp.float32)
  module = head_lib.MultilabelHead()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  kernel = np.asarray(variables['params']['fc1']['kernel'])
  assert kernel.shape == (2048, 512)
  assert variables['params']['fc2']['kernel'].shape == (512, 17)
  assert not np.any(variables['params']['fc1']['bias'])
  limit = np.sqrt(6 / (2048 + 512))  # Glorot uniform: U(-limit, limit), variance limit^2 / 3.
  assert np.abs(kernel).max() <= limit
  assert abs(kernel.var() / (limit**2 / 3) - 1) < 0.02
  custom = head_lib.MultilabelHead(num_labels=4, hidden=(8, 6), dropout_rates=(0.1, 0.2, 0.3),
                                   kernel_init=nn.initializers.ones)
  params = jax.eval_shape(custom.init, jax.random.key(0), x)['params']
  assert [params[f'fc{i}']['kernel'].shape for i in (1, 2, 3)] == [(2048, 8), (8, 6), (6, 4)]
  with pytest.raises(ValueError, match='one rate per Dense layer'):
    head_lib.MultilabelHead(hidden=(8,), dropout_rates=(0.5,)).init(jax.random.key(0), x)
  # Dropout is active only in training, and follows the 'dropout' RNG stream.
  train = jax.jit(lambda v, key: module.apply(v, x, train=True, rngs={'dropout': key},
                                              mutable=['batch_stats'])[0])
  a, b, c = (train(variables, jax.random.key(k)) for k in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  evaluate = jax.jit(lambda v: module.apply(v, x))
  np.testing.assert_array_equal(evaluate(variables), evaluate(variables))
