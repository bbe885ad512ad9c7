"""The paper's optimiser: AdamW per parameter group, discriminative learning rates, one-cycle.

Parameters fall into three groups by their path (``fwjax.models.classifier.param_group``):
0 = body stem, layer1, layer2; 1 = body layer3, layer4; 2 = preprocessing and head. Each
parameter gets a *label*, a pure function of its path::

  'group<g>'             convolution and dense kernels: AdamW with decoupled weight decay
  'group<g>_no_decay'    biases: AdamW without weight decay
  'group<g>_bn'          BatchNorm scale and bias: AdamW without weight decay

and ``optax.partition`` gives each label its own AdamW whose learning rate is an argument of
``update`` (``tx.update(grads, state, params, learning_rates={label: lr})``). A phase is a
:class:`PhasePlan`: a peak rate per label (0 for a frozen label) and a schedule. fastai's
``freeze(); fit_one_cycle(10, 1e-3); unfreeze(); fit_one_cycle(40, slice(1e-6, 1e-4))``:

- phase 1: groups 0 and 1 frozen (rate 0) except their BatchNorm parameters (fastai's
  ``train_bn``); every trained label peaks at 1e-3 (a float lr applies to every group in fastai).
- phase 2: every label trained, peaks spread geometrically over the groups from 1e-6 to 1e-4
  (fastai's ``even_mults``: 1e-6, 1e-5, 1e-4).

Both phases share one optimiser structure, so one compiled train step serves the whole run; a
frozen parameter gets the update ``-0 * (adam + wd * p)`` and does not move. Each phase starts
with fresh optimiser state (fastai's ``freeze_to`` clears it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fwjax.models import classifier

NUM_GROUPS = classifier.NUM_PARAM_GROUPS
KINDS = ('', '_no_decay', '_bn')
LABELS = tuple(f'group{g}{kind}' for g in range(NUM_GROUPS) for kind in KINDS)
# fastai's defaults for its Adam (mom, sqr_mom, eps) and fit_one_cycle (pct_start, div, div_final).
B1, B2, EPS = 0.9, 0.99, 1e-5
WEIGHT_DECAY = 0.1
PCT_START, DIV, FINAL_DIV = 0.25, 25.0, 1e5


PHASE1_LR = 1e-3
"""The paper's phase 1 peak learning rate (fastai ``fit_one_cycle(10, 1e-3)``): the one default."""
PHASE2_LRS = (1e-6, 1e-4)
"""The paper's phase 2 peak learning rates of the first and last group (``slice(1e-6, 1e-4)``)."""


def one_cycle(total_steps: int, peak: float, *, pct_start: float = PCT_START, div: float = DIV,
              final_div: float = FINAL_DIV) -> Callable[[int], float]:
  """fastai's one-cycle learning rate: cosine warm-up then cosine annealing.

  fastai's ``combined_cos(pct_start, peak / div, peak, peak / final_div)``: for update ``t``
  (0-based) at position ``p = t / total_steps``, the rate rises from ``peak / div`` to ``peak``
  over ``p < pct_start`` and falls to ``peak / final_div`` over the rest, each half a cosine
  ``start + (1 + cos(pi (1 - q))) (end - start) / 2``. ``optax.cosine_onecycle_schedule`` differs:
  it ends at ``peak / div / final_div`` and switches at an integer step.

  The schedule runs on the host in float64 (the train step receives the rates as arguments).

  Args:
    total_steps: updates in the phase (> 0).
    peak: the maximum learning rate.
    pct_start: share of the steps spent warming up, in (0, 1).
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

  def cos_between(a: float, b: float, q: float) -> float:
    # a + (1 + cos(pi (1 - q))) (b - a) / 2 as a weighted sum, which keeps the tiny final rate
    # (peak / 1e5) exact instead of losing it to cancellation.
    return a * math.cos(math.pi * q / 2)**2 + b * math.sin(math.pi * q / 2)**2

  def schedule(step: int) -> float:
    pos = min(max(float(step) / total_steps, 0.0), 1.0)
    if pos < pct_start:
      return cos_between(start, peak, pos / pct_start)
    return cos_between(peak, end, (pos - pct_start) / (1 - pct_start))

  return schedule


def discriminative_lrs(low: float, high: float, n: int = NUM_GROUPS) -> tuple[float, ...]:
  """``n`` learning rates spread geometrically from ``low`` to ``high`` (fastai's even_mults)."""
  if n == 1:
    return (high,)
  step = (high / low) ** (1 / (n - 1))
  return tuple(float(low * step**i) for i in range(n))


def param_label(path: Sequence[Any]) -> str:
  """The optimiser label of one parameter (see the module docstring).

  Args:
    path: keys from the root of ``params`` (strings or jax key-path entries).

  Returns:
    'group<g>', 'group<g>_no_decay' or 'group<g>_bn'.
  """
  group = classifier.param_group(path)
  if classifier.is_batch_norm(path):
    return f'group{group}_bn'
  return f'group{group}' + ('_no_decay' if classifier.key_name(path[-1]) == 'bias' else '')


def param_labels(params: Any) -> Any:
  """A tree like ``params`` holding each parameter's :func:`param_label`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: param_label(path), params)


def scale_by_label_rate(label: str) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by ``-learning_rates[label]`` (given to ``update`` as an extra argument)."""

  def init_fn(params: Any) -> optax.EmptyState:
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, learning_rates: Mapping[str, Any], **extra):
    del params, extra
    rate = jnp.asarray(learning_rates[label], jnp.float32)
    return jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.lru_cache(maxsize=16)
def adamw_groups(*, weight_decay: float = WEIGHT_DECAY, b1: float = B1, b2: float = B2,
                 eps: float = EPS) -> optax.GradientTransformationExtraArgs:
  """AdamW per label, combined by ``optax.partition``; rates come with each update.

  ``tx.update(grads, state, params, learning_rates=plan.learning_rates(step))``. Weight decay is
  decoupled (``p -= lr * wd * p``, as fastai and optax.adamw) and not applied to BatchNorm
  parameters and biases.

  Args:
    weight_decay: decoupled weight decay of the 'group<g>' labels.
    b1, b2, eps: Adam's moment decays and epsilon (fastai: 0.9, 0.99, 1e-5).

  Returns:
    The transformation; its labels come from the params passed to ``init``. Equal arguments
    give the same object, so compiled steps cached by optimiser are reused.
  """
  transforms = {}
  for label in LABELS:
    parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    if not label.endswith(('_no_decay', '_bn')):
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(scale_by_label_rate(label))
    transforms[label] = optax.chain(*parts)
  return optax.partition(transforms, param_labels)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
  """The learning rates of one training phase.

  Attributes:
    phase: 1 or 2.
    total_steps: updates in the phase.
    peaks: peak learning rate per label (0 for frozen labels).
    schedule: 'one_cycle' (fastai's) or 'constant' (the peak throughout).
    pct_start, div, final_div: the one-cycle shape (:func:`one_cycle`).
  """
  phase: int
  total_steps: int
  peaks: Mapping[str, float]
  schedule: str = 'one_cycle'
  pct_start: float = PCT_START
  div: float = DIV
  final_div: float = FINAL_DIV

  def learning_rates(self, step: int) -> dict[str, np.float32]:
    """Each label's learning rate at update ``step`` (0-based) of the phase."""
    if self.schedule == 'constant':
      shape = 1.0
    else:
      shape = one_cycle(self.total_steps, 1.0, pct_start=self.pct_start, div=self.div,
                        final_div=self.final_div)(step)
    return {label: np.float32(peak * shape) for label, peak in self.peaks.items()}

  @property
  def frozen(self) -> tuple[str, ...]:
    return tuple(label for label, peak in self.peaks.items() if peak == 0)


def phase_plan(phase: int, total_steps: int, *, phase1_lr: float = PHASE1_LR,
               phase2_lrs: tuple[float, float] = PHASE2_LRS, schedule: str = 'one_cycle',
               pct_start: float = PCT_START, div: float = DIV,
               final_div: float = FINAL_DIV) -> PhasePlan:
  """The paper's learning rates for phase 1 or 2 (see the module docstring).

  Args:
    phase: 1 (groups 0-1 frozen except BatchNorm, every trained label at ``phase1_lr``) or 2
      (all labels; group peaks geometric from ``phase2_lrs[0]`` to ``phase2_lrs[1]``).
    total_steps: updates in the phase.
    phase1_lr: phase 1 peak learning rate.
    phase2_lrs: lowest (group 0) and highest (group 2) phase 2 peak learning rates.
    schedule: 'one_cycle' or 'constant'.
    pct_start, div, final_div: the one-cycle shape.

  Returns:
    A :class:`PhasePlan`.
  """
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive, got {total_steps}')
  if schedule not in ('one_cycle', 'constant'):
    raise ValueError(f"schedule must be 'one_cycle' or 'constant', got {schedule!r}")
  if phase == 1:
    peaks = {label: (phase1_lr if label.startswith('group2') or label.endswith('_bn') else 0.0)
             for label in LABELS}
  elif phase == 2:
    group_lrs = discriminative_lrs(*phase2_lrs)
    peaks = {label: group_lrs[int(label[5])] for label in LABELS}
  else:
    raise ValueError(f'phase must be 1 or 2, got {phase}')
  return PhasePlan(phase, total_steps, peaks, schedule, pct_start, div, final_div)


def count_by_label(params: Any) -> dict[str, int]:
  """Number of scalars per label (for the log: how much of the model each label holds)."""
  counts: dict[str, int] = {}
  for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(param_labels(params))):
    counts[label] = counts.get(label, 0) + int(math.prod(np.shape(leaf)))
  return counts
