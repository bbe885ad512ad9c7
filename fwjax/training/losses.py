"""Multilabel losses: class-weighted binary cross-entropy and Soft-F1 (the paper's two losses).

Both are written as *additive statistics* plus a *finishing function*: the statistics of a batch
are sums over its examples (so per-device statistics add up across devices with ``lax.psum``), and
the loss is a function of the summed statistics. A data-parallel step therefore computes exactly
the loss of the global batch, also for Soft-F1, whose counts do not split into per-example terms::

  stats = jax.lax.psum(loss.statistics(logits, labels, mask), 'data')
  value = loss.finish(stats)

Example:
  >>> weights = label_weights(train_labels)         # (17,), mean 1
  >>> loss = make_loss('bce', weights)
  >>> value = loss(logits, labels)                  # same as loss.finish(loss.statistics(...))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fwjax import descriptors

LOSSES = ('bce', 'soft_f1')
MISSING_LABEL_POLICIES = ('error', 'max', 'zero')
SOFT_F1_EPS = 1e-7


def label_weights(labels: np.ndarray, *, missing: str = 'error') -> np.ndarray:
  """Per-label BCE weights from training label frequencies (DESIGN.md section 5).

  ``w_c`` is proportional to ``1 / share_c`` where ``share_c`` is the fraction of training images
  with label ``c``; the weights are normalised to mean 1, so the weighted loss has the scale of
  the unweighted one.

  Args:
    labels: (N, L) 0/1 training labels.
    missing: what to do with a label that no training image has (``1 / 0``):
      ``'error'`` raises; ``'max'`` gives it the largest weight among the present labels (its
      scores are pushed down hard, as every training image is a negative for it); ``'zero'``
      leaves it out of the loss (weight 0). Weights are normalised to mean 1 after this.

  Returns:
    (L,) float32 weights.

  Raises:
    ValueError: labels are not a non-empty (N, L) 0/1 array; a label has no positive and
      ``missing='error'``; no label has a positive.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] == 0:
    raise ValueError(f'labels must be a non-empty (N, L) array, got shape {labels.shape}')
  if not np.isin(labels, (0, 1)).all():
    raise ValueError('labels must be 0/1')
  if missing not in MISSING_LABEL_POLICIES:
    raise ValueError(f'missing must be one of {MISSING_LABEL_POLICIES}, got {missing!r}')
  counts = labels.sum(axis=0).astype(np.float64)
  absent = counts == 0
  if absent.all():
    raise ValueError('no training image has any label; cannot weight the loss')
  if absent.any() and missing == 'error':
    names = (', '.join(descriptors.CODES[i] for i in np.flatnonzero(absent))
             if labels.shape[1] == descriptors.NUM_LABELS else str(np.flatnonzero(absent)))
    raise ValueError(f'no training image has label(s) {names}: their '
                     "weight 1/share is infinite. Add examples, or choose missing='max' (push "
                     "their scores down) or missing='zero' (leave them out of the loss)")
  share = counts / labels.shape[0]
  weights = np.zeros_like(share)
  weights[~absent] = 1.0 / share[~absent]
  if missing == 'max':
    weights[absent] = weights[~absent].max()
  return (weights / weights.mean()).astype(np.float32)


def _mask(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.ones(labels.shape[:1], jnp.float32)
  return mask.astype(jnp.float32)


def bce_statistics(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                   weights: jax.Array | None = None) -> dict[str, jax.Array]:
  """Additive statistics of the weighted BCE: weighted loss sum and number of examples."""
  labels = labels.astype(jnp.float32)
  per_label = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)
  if weights is not None:
    per_label = per_label * weights
  m = _mask(labels, mask)
  return {'sum': jnp.sum(per_label.mean(axis=-1) * m), 'count': jnp.sum(m)}


def bce_finish(stats: dict[str, jax.Array]) -> jax.Array:
  """Mean over examples (and labels) of the weighted BCE."""
  return stats['sum'] / jnp.maximum(stats['count'], 1.0)


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
  """Class-weighted binary cross-entropy, averaged over examples and labels.

  ``mean_{n, c} w_c [-y log s(x) - (1 - y) log(1 - s(x))]`` over the examples with ``mask``
  True, computed from logits in a numerically stable form (``optax.sigmoid_binary_cross_entropy``).

  Args:
    logits: (B, L) logits.
    labels: (B, L) 0/1 targets.
    weights: (L,) per-label weights (:func:`label_weights`), None for unweighted.
    mask: (B,) bool, False for padding examples.

  Returns:
    A float32 scalar.
  """
  return bce_finish(bce_statistics(logits, labels, mask, weights))


def soft_f1_statistics(logits: jax.Array, labels: jax.Array,
                       mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Probabilistic (L,) true-positive, false-positive and false-negative counts."""
  labels = labels.astype(jnp.float32)
  p = jax.nn.sigmoid(logits.astype(jnp.float32)) * _mask(labels, mask)[:, None]
  y = labels * _mask(labels, mask)[:, None]
  return {'tp': jnp.sum(p * y, axis=0), 'fp': jnp.sum(p * (1 - y), axis=0),
          'fn': jnp.sum((1 - p) * y, axis=0)}


def soft_f1_finish(stats: dict[str, jax.Array]) -> jax.Array:
  """``1 - mean_c 2TP / (2TP + FP + FN)``; a label with no positives and no scores adds F1 0."""
  tp, fp, fn = stats['tp'], stats['fp'], stats['fn']
  f1 = 2 * tp / (2 * tp + fp + fn + SOFT_F1_EPS)
  return 1.0 - jnp.mean(f1)


def soft_f1(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Soft-F1 loss ``1 - mean_c 2TP/(2TP+FP+FN)`` with probabilistic counts.

  ``TP_c = sum_n s_nc y_nc``, ``FP_c = sum_n s_nc (1 - y_nc)``, ``FN_c = sum_n (1 - s_nc) y_nc``
  with ``s = sigmoid(logits)``, over the examples with ``mask`` True. The counts are over the
  whole batch, so the loss is not a mean of per-example terms. A label without positives in the
  batch has ``TP = FN = 0``, F1 0 and no gradient (an epsilon keeps ``0/0`` finite).

  Args:
    logits: (B, L) logits.
    labels: (B, L) 0/1 targets.
    mask: (B,) bool, False for padding examples.

  Returns:
    A float32 scalar in [0, 1].
  """
  return soft_f1_finish(soft_f1_statistics(logits, labels, mask))


@dataclasses.dataclass(frozen=True)
class AdditiveLoss:
  """A loss as additive batch statistics and a function of their sum (see the module docstring).

  Attributes:
    name: 'bce' or 'soft_f1'.
    statistics: ``(logits, labels, mask) -> pytree`` of sums over the batch's examples.
    finish: ``pytree -> scalar`` loss of the summed statistics.
  """
  name: str
  statistics: Callable[[jax.Array, jax.Array, jax.Array | None], Any]
  finish: Callable[[Any], jax.Array]

  def __call__(self, logits: jax.Array, labels: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    return self.finish(self.statistics(logits, labels, mask))


def make_loss(name: str, weights: np.ndarray | None = None) -> AdditiveLoss:
  """The loss called ``name``.

  Args:
    name: 'bce' (class-weighted with ``weights``) or 'soft_f1' (``weights`` must be None).
    weights: (L,) BCE label weights, e.g. :func:`label_weights` of the training labels.

  Returns:
    An :class:`AdditiveLoss`.

  Raises:
    ValueError: an unknown name, or weights given to Soft-F1.
  """
  if name not in LOSSES:
    raise ValueError(f'unknown loss {name!r}; expected one of {LOSSES}')
  if name == 'soft_f1' and weights is not None:
    raise ValueError('soft_f1 takes no label weights (it averages F1 over labels already)')
  key = None if weights is None else tuple(float(w) for w in np.asarray(weights).ravel())
  return _make_loss(name, key)


@functools.lru_cache(maxsize=64)
def _make_loss(name: str, weights: tuple[float, ...] | None) -> AdditiveLoss:
  # One object per (name, weights): compiled train steps are cached by the loss they use, so a
  # second fit with the same loss (a resume, a grid run) reuses the compiled step.
  if name == 'soft_f1':
    return AdditiveLoss('soft_f1', soft_f1_statistics, soft_f1_finish)
  w = None if weights is None else np.asarray(weights, np.float32)
  return AdditiveLoss('bce', lambda lo, la, m: bce_statistics(lo, la, m, w), bce_finish)
