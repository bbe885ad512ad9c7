"""The paper's optimiser: AdamW per parameter group, discriminative learning rates, one-cycle.

Parameters fall into three groups by their path (``fwjax.models.classifier.param_group``):
0 = body stem, layer1, layer2; 1 = body layer3, layer4; 2 = preprocessing and head. Each
parameter gets a *label*, a pure function of its path::

  'frozen'               a frozen group's parameter (updates are zero; no optimiser state)
  'group<g>'             trained with AdamW and decoupled weight decay
  'group<g>_no_decay'    trained with AdamW without weight decay (BatchNorm scale/bias, biases)

and ``optax.partition`` gives each label its own AdamW with its own schedule. The two phases of
fastai's ``freeze(); fit_one_cycle(10, 1e-3); unfreeze(); fit_one_cycle(40, slice(1e-6, 1e-4))``:

- phase 1: groups 0 and 1 frozen except their BatchNorm parameters (fastai's ``train_bn``); every
  trained parameter peaks at 1e-3 (a float lr applies to every group in fastai).
- phase 2: every group trained, peaks spread geometrically from 1e-6 to 1e-4 (fastai's
  ``even_mults``: 1e-6, 1e-5, 1e-4).

Each phase starts with fresh optimiser state (fastai's ``freeze_to`` clears it), so a phase's
state holds the schedule position (optax counts updates) and resumes exactly from a checkpoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fwjax.models import classifier

NUM_GROUPS = classifier.NUM_PARAM_GROUPS
FROZEN = 'frozen'
# fastai's defaults for its Adam (mom, sqr_mom, eps) and fit_one_cycle (pct_start, div, div_final).
B1, B2, EPS = 0.9, 0.99, 1e-5
WEIGHT_DECAY = 0.1
PCT_START, DIV, FINAL_DIV = 0.25, 25.0, 1e5


def one_cycle(total_steps: int, peak: float, *, pct_start: float = PCT_START, div: float = DIV,
              final_div: float = FINAL_DIV) -> optax.Schedule:
  """fastai's one-cycle learning rate: cosine warm-up then cosine annealing.

  fastai's ``combined_cos(pct_start, peak / div, peak, peak / final_div)``: for update ``t``
  (0-based) at position ``p = t / total_steps``, the rate rises from ``peak / div`` to ``peak``
  over ``p < pct_start`` and falls to ``peak / final_div`` over the rest, each half a cosine
  ``start + (1 + cos(pi (1 - q))) (end - start) / 2``. ``optax.cosine_onecycle_schedule`` differs:
  it ends at ``peak / div / final_div`` and switches at an integer step.

  Args:
    total_steps: updates in the phase (> 0).
    peak: the maximum learning rate.
    pct_start: share of the steps spent warming up.
    div: the initial rate is ``peak / div``.
    final_div: the final rate is ``peak / final_div``.

  Returns:
    A schedule ``step -> learning rate`` (steps past the end keep the final rate).
  """
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive, got {total_steps}')
  if not 0 < pct_start < 1:
    raise ValueError(f'pct_start must be in (0, 1), got {pct_start}')
  start, end = peak / div, peak / final_div

  def cos_between(a: float, b: float, q: jax.Array) -> jax.Array:
    # a + (1 + cos(pi (1 - q))) (b - a) / 2, written as a weighted sum because in float32 the
    # difference form loses the tiny final rate (peak / 1e5) to cancellation.
    return a * jnp.cos(jnp.pi * q / 2)**2 + b * jnp.sin(jnp.pi * q / 2)**2

  def schedule(step: jax.Array) -> jax.Array:
    pos = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    warm = cos_between(start, peak, pos / pct_start)
    anneal = cos_between(peak, end, (pos - pct_start) / (1 - pct_start))
    return jnp.where(pos < pct_start, warm, anneal)

  return schedule


def discriminative_lrs(low: float, high: float, n: int = NUM_GROUPS) -> tuple[float, ...]:
  """``n`` learning rates spread geometrically from ``low`` to ``high`` (fastai's even_mults)."""
  if n == 1:
    return (high,)
  step = (high / low) ** (1 / (n - 1))
  return tuple(float(low * step**i) for i in range(n))


def _name(entry: Any) -> str:
  for attr in ('key', 'name'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def param_label(path: Sequence[Any], *, frozen_groups: Sequence[int] = (),
                train_bn: bool = True) -> str:
  """The optimiser label of one parameter (see the module docstring).

  Args:
    path: keys from the root of ``params`` (strings or jax key-path entries).
    frozen_groups: groups whose parameters do not move.
    train_bn: BatchNorm parameters of frozen groups stay trainable (fastai's ``train_bn``).

  Returns:
    'frozen', 'group<g>' or 'group<g>_no_decay'.
  """
  group = classifier.param_group(path)
  batch_norm = classifier.is_batch_norm(path)
  if group in frozen_groups and not (train_bn and batch_norm):
    return FROZEN
  no_decay = batch_norm or _name(path[-1]) == 'bias'
  return f'group{group}' + ('_no_decay' if no_decay else '')


def param_labels(params: Any, *, frozen_groups: Sequence[int] = (), train_bn: bool = True) -> Any:
  """A tree like ``params`` holding each parameter's :func:`param_label`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_label(path, frozen_groups=frozen_groups, train_bn=train_bn), params)


def adamw_partition(lrs: Sequence[float | optax.Schedule], *, frozen_groups: Sequence[int] = (),
                    train_bn: bool = True, weight_decay: float = WEIGHT_DECAY, b1: float = B1,
                    b2: float = B2, eps: float = EPS) -> optax.GradientTransformation:
  """AdamW with one learning rate (or schedule) per parameter group, combined by optax.partition.

  Args:
    lrs: learning rate or schedule of groups 0, 1, 2.
    frozen_groups: groups that do not move (except BatchNorm with ``train_bn``).
    train_bn: keep BatchNorm parameters of frozen groups trainable.
    weight_decay: decoupled weight decay (``p -= lr * wd * p``), not applied to BatchNorm
      parameters and biases.
    b1, b2, eps: Adam's moment decays and epsilon.

  Returns:
    An ``optax.GradientTransformation`` whose labels come from the params passed to ``init``.
  """
  if len(lrs) != NUM_GROUPS:
    raise ValueError(f'need {NUM_GROUPS} learning rates (one per group), got {len(lrs)}')
  transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
  for g, lr in enumerate(lrs):
    adamw = functools.partial(optax.adamw, learning_rate=lr, b1=b1, b2=b2, eps=eps)
    transforms[f'group{g}'] = adamw(weight_decay=weight_decay)
    transforms[f'group{g}_no_decay'] = adamw(weight_decay=0.0)
  labels = functools.partial(param_labels, frozen_groups=tuple(frozen_groups), train_bn=train_bn)
  return optax.partition(transforms, labels)


def phase_optimizer(phase: int, total_steps: int, *, phase1_lr: float = 1e-3,
                    phase2_lrs: tuple[float, float] = (1e-6, 1e-4), schedule: str = 'one_cycle',
                    weight_decay: float = WEIGHT_DECAY, pct_start: float = PCT_START,
                    div: float = DIV, final_div: float = FINAL_DIV
                    ) -> tuple[optax.GradientTransformation, tuple[optax.Schedule, ...]]:
  """The optimiser of one training phase (the paper's recipe by default).

  Args:
    phase: 1 (groups 0-1 frozen except BatchNorm, every trained group at ``phase1_lr``) or 2
      (all groups, peaks geometric from ``phase2_lrs[0]`` to ``phase2_lrs[1]``).
    total_steps: updates in this phase.
    phase1_lr: phase 1 peak learning rate.
    phase2_lrs: lowest (group 0) and highest (group 2) phase 2 peak learning rates.
    schedule: 'one_cycle' (fastai's) or 'constant' (peak rate throughout; for tests and probes).
    weight_decay, pct_start, div, final_div: see :func:`adamw_partition` and :func:`one_cycle`.

  Returns:
    ``(tx, schedules)``: the transformation and each group's schedule (for logging the rates).
  """
  if phase == 1:
    peaks, frozen = (phase1_lr,) * NUM_GROUPS, (0, 1)
  elif phase == 2:
    peaks, frozen = discriminative_lrs(*phase2_lrs), ()
  else:
    raise ValueError(f'phase must be 1 or 2, got {phase}')
  if schedule == 'one_cycle':
    schedules = tuple(one_cycle(total_steps, p, pct_start=pct_start, div=div,
                                final_div=final_div) for p in peaks)
  elif schedule == 'constant':
    schedules = tuple(optax.constant_schedule(p) for p in peaks)
  else:
    raise ValueError(f"schedule must be 'one_cycle' or 'constant', got {schedule!r}")
  tx = adamw_partition(schedules, frozen_groups=frozen, weight_decay=weight_decay)
  return tx, schedules


def count_by_label(params: Any, labels: Any) -> dict[str, int]:
  """Number of scalars per label (for the log: how much of the model each phase trains)."""
  counts: dict[str, int] = {}
  for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
    counts[label] = counts.get(label, 0) + int(math.prod(np.shape(leaf)))
  return counts
