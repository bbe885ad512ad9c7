"""Losses against hand-computed values, sklearn's log_loss and the additive-statistics property."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import log_loss

from fwjax.training import losses


def test_label_weights_hand_computed():
  labels = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
  # shares 1, 1/4, 1/4 -> 1/share 1, 4, 4 -> mean 3 -> weights 1/3, 4/3, 4/3.
  np.testing.assert_allclose(losses.label_weights(labels), [1 / 3, 4 / 3, 4 / 3], rtol=1e-6)
  assert losses.label_weights(labels).dtype == np.float32


def test_label_weights_missing_labels():
  labels = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0]])  # label 1 never occurs
  with pytest.raises(ValueError, match=r"label\(s\) \[1\].*missing='max'"):
    losses.label_weights(labels)
  # present: 1/share = 4/3 and 2; 'max' gives the absent label 2; 'zero' gives it 0.
  np.testing.assert_allclose(losses.label_weights(labels, missing='max'),
                             np.array([4 / 3, 2, 2]) / np.mean([4 / 3, 2, 2]), rtol=1e-6)
  np.testing.assert_allclose(losses.label_weights(labels, missing='zero'),
                             np.array([4 / 3, 0, 2]) / np.mean([4 / 3, 0, 2]), rtol=1e-6)
  seventeen = np.zeros((2, 17), np.uint8)
  seventeen[:, 0] = 1
  with pytest.raises(ValueError, match='D01-01, D01-02, D02'):
    losses.label_weights(seventeen)
  for bad in (np.zeros((0, 3)), np.full((2, 3), 2), np.zeros((2, 3))):
    with pytest.raises(ValueError):
      losses.label_weights(bad)


def test_bce_hand_computed():
  logits = jnp.array([[0.0, 2.0], [-1.0, 0.5]])
  labels = jnp.array([[1, 0], [0, 1]])
  weights = jnp.array([0.5, 1.5])
  s = lambda x: 1 / (1 + np.exp(-x))
  terms = np.array([[-np.log(0.5), -np.log(1 - s(2.0))],
                    [-np.log(1 - s(-1.0)), -np.log(s(0.5))]])
  np.testing.assert_allclose(losses.weighted_bce(logits, labels), terms.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.weighted_bce(logits, labels, weights),
                             (terms * [0.5, 1.5]).mean(), rtol=1e-6)
  # The padding example is left out entirely.
  np.testing.assert_allclose(losses.weighted_bce(logits, labels, weights, jnp.array([True, False])),
                             (terms[0] * [0.5, 1.5]).mean(), rtol=1e-6)


def test_bce_matches_sklearn_log_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3, size=(64, 17)).astype(np.float32)
  labels = (rng.random((64, 17)) < 0.3).astype(np.float32)
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  # sklearn's binary log loss per label column, averaged over labels, optionally weighted.
  per_label = np.array([log_loss(labels[:, c], probs[:, c], labels=[0, 1]) for c in range(17)])
  np.testing.assert_allclose(losses.weighted_bce(logits, labels), per_label.mean(), rtol=1e-5)
  weights = losses.label_weights(labels)
  np.testing.assert_allclose(losses.weighted_bce(logits, labels, weights),
                             (per_label * weights).mean(), rtol=1e-5)
  # Stable at extreme logits (a naive log(sigmoid) gives inf).
  assert np.isfinite(losses.weighted_bce(jnp.array([[100.0, -100.0]]), jnp.array([[0, 1]])))


def test_soft_f1_hand_computed():
  logits = jnp.array([[0.0, np.log(3.0)], [np.log(3.0), 0.0], [0.0, -np.log(3.0)]])
  labels = jnp.array([[1, 1], [0, 1], [1, 0]])
  # probabilities [[.5,.75],[.75,.5],[.5,.25]]
  # label 0: TP .5+.5=1, FP .75, FN .5+.5=1 -> F1 2/(2+.75+1) = 2/3.75
  # label 1: TP .75+.5=1.25, FP .25, FN .25+.5=.75 -> F1 2.5/(2.5+.25+.75) = 2.5/3.5
  expected = 1 - (2 / 3.75 + 2.5 / 3.5) / 2
  np.testing.assert_allclose(losses.soft_f1(logits, labels), expected, rtol=1e-6)
  # Confident and correct -> loss near 0; confident and wrong -> near 1.
  y = jnp.array([[1, 0], [0, 1]])
  assert losses.soft_f1(40.0 * (2 * y - 1), y) < 1e-6
  assert losses.soft_f1(-40.0 * (2 * y - 1), y) > 1 - 1e-6
  # Padding rows change nothing.
  padded = losses.soft_f1(jnp.concatenate([logits, jnp.ones((2, 2))]),
                          jnp.concatenate([labels, jnp.ones((2, 2), labels.dtype)]),
                          jnp.array([True] * 3 + [False] * 2))
  np.testing.assert_allclose(padded, expected, rtol=1e-6)


@pytest.mark.parametrize('name', losses.LOSSES)
def test_statistics_add_up_over_shards(name):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(12, 17)), jnp.float32)
  labels = jnp.asarray(rng.random((12, 17)) < 0.3, jnp.float32)
  weights = losses.label_weights(np.asarray(labels), missing='max') if name == 'bce' else None
  loss = losses.make_loss(name, weights)
  whole = loss(logits, labels)
  shards = [loss.statistics(logits[i:i + 3], labels[i:i + 3], None) for i in range(0, 12, 3)]
  summed = jax.tree.map(lambda *xs: sum(xs), *shards)
  np.testing.assert_allclose(loss.finish(summed), whole, rtol=1e-6)


def test_make_loss_errors():
  with pytest.raises(ValueError, match='unknown loss'):
    losses.make_loss('focal')
  with pytest.raises(ValueError, match='no label weights'):
    losses.make_loss('soft_f1', np.ones(17))
