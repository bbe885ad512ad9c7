"""Two-phase fine-tuning with evaluation, checkpoints, exact resume and a non-finite guard.

``fit`` runs fastai's recipe as the paper used it: phase 1 trains the preprocessing layer and the
head (body frozen except BatchNorm) for ``epochs_phase1`` epochs, phase 2 trains everything with
discriminative learning rates for ``epochs_phase2`` epochs, each phase one one-cycle schedule
(``fwjax.training.optim``). After every epoch it scores the validation set with exact average precision
(macro PRAUC and per label) and writes an Orbax checkpoint:

  checkpoint_dir/last/<epoch>/   train state (params, batch_stats, optimiser state with the
                                 schedule position, step, RNG) + progress metadata (JSON)
  checkpoint_dir/best/<epoch>/   variables (params, batch_stats) of the best macro PRAUC so far

Interrupt it at any point and call ``fit`` again with the same arguments: it resumes from the
last checkpoint and ends with the same parameters as an uninterrupted run, because everything a
step depends on is a function of the checkpointed state and the epoch number (the data order is
drawn from ``(seed, epoch)``, dropout from ``fold_in(key, step)``).

A non-finite loss stops training with :class:`NonFiniteLossError` naming the step and the last good
checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fwjax import augment as augment_lib
from fwjax import descriptors
from fwjax import metrics as metrics_lib
from fwjax import progress as progress_lib
from fwjax.training import losses as losses_lib
from fwjax.training import checkpoints as checkpoints_lib
from fwjax.training import feed
from fwjax.training.feed import FitData, array_data  # noqa: F401 (public here too)
from fwjax.training import optim, steps


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """How to train (the model, data and loss are arguments of :func:`fit`).

  Attributes:
    epochs_phase1: epochs with the body frozen except BatchNorm (paper: 10).
    epochs_phase2: epochs training everything (paper: 40).
    phase1_lr: phase 1 peak learning rate.
    phase2_lrs: phase 2 peak learning rates of group 0 and group 2 (group 1 in between).
    schedule: 'one_cycle' or 'constant'.
    weight_decay: decoupled AdamW weight decay (not on BatchNorm and biases).
    seed: dropout RNG seed (the data order is seeded by the data).
    checkpoint_dir: where checkpoints go; None for none (and no resume).
    resume: continue from the last checkpoint in ``checkpoint_dir`` if there is one.
    fingerprint: identifies everything else a run depends on (model, data, loss); a resume
      refuses a checkpoint written with a different fingerprint.
    progress: show a progress bar on stderr.
    stop_after_epochs: end after this many epochs in total, as if interrupted (for tests and
      for splitting a long run over several jobs); None to run to the end.
    augment: on-device training augmentation (``fwjax.augment``); None for none.
  """
  epochs_phase1: int = 10
  epochs_phase2: int = 40
  phase1_lr: float = optim.PHASE1_LR
  phase2_lrs: tuple[float, float] = optim.PHASE2_LRS
  schedule: str = 'one_cycle'
  weight_decay: float = optim.WEIGHT_DECAY
  seed: int = 0
  checkpoint_dir: str | None = None
  resume: bool = True
  fingerprint: str = ''
  progress: bool = True
  stop_after_epochs: int | None = None
  augment: augment_lib.Augment | None = None

  def phase_of(self, epoch: int) -> int:
    """The phase (1 or 2) of a 0-based epoch index."""
    return 1 if epoch < self.epochs_phase1 else 2

  def epochs_in(self, phase: int) -> int:
    return self.epochs_phase1 if phase == 1 else self.epochs_phase2


@dataclasses.dataclass
class FitResult:
  """What ``fit`` returns.

  Attributes:
    variables: final {'params', 'batch_stats'} (host numpy).
    history: one record per epoch (see :func:`fit`), resumed epochs included.
    best_epoch: 1-based epoch of the best validation macro PRAUC (0 if none).
    valid_scores: (N, L) validation sigmoid scores of the final model.
    valid_logits: (N, L) validation logits of the final model.
    last_checkpoint: directory of the last checkpoint ('' without checkpoint_dir).
    best_checkpoint: directory of the best checkpoint ('' without checkpoint_dir).
    complete: False when ``stop_after_epochs`` ended the run early.
  """
  variables: dict[str, Any]
  history: list[dict[str, Any]]
  best_epoch: int
  valid_scores: np.ndarray
  valid_logits: np.ndarray
  last_checkpoint: str
  best_checkpoint: str
  complete: bool


def evaluate(eval_step: Callable, variables: Mapping[str, Any], data: FitData,
             mesh: jax.sharding.Mesh) -> np.ndarray:
  """Validation logits (N, L) in order, padding removed."""
  outputs = []
  for batch, _ in feed.prefetch(data.valid_batches(), mesh):
    logits = steps.gather(eval_step(variables, batch))
    outputs.append(logits[steps.gather(batch['mask'])])
  logits = np.concatenate(outputs) if outputs else np.zeros((0, data.valid_labels.shape[1]))
  if len(logits) != len(data.valid_labels):
    raise ValueError(f'valid_batches gave {len(logits)} unpadded examples, valid_labels has '
                     f'{len(data.valid_labels)}')
  return logits


def validation_metrics(labels: np.ndarray, logits: np.ndarray,
                       loss: losses_lib.AdditiveLoss) -> dict[str, Any]:
  """Loss, exact macro PRAUC and per-label AP of validation logits.

  A label without positives in the validation set has no AP (NaN) and is left out of the macro
  mean; ``num_labels_without_positives`` says how many were left out.
  """
  scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
  per_label = np.asarray(metrics_lib.average_precision(labels, scores, average=None), np.float64)
  defined = ~np.isnan(per_label)
  codes = (descriptors.CODES if labels.shape[1] == descriptors.NUM_LABELS
           else tuple(str(i) for i in range(labels.shape[1])))
  return {
      'valid_loss': float(loss(jnp.asarray(logits), jnp.asarray(labels))),
      'macro_prauc': metrics_lib.macro_average(per_label),
      'per_label_ap': dict(zip(codes, map(float, per_label))),
      'num_labels_without_positives': int((~defined).sum()),
  }


def _fingerprint(config: FitConfig, steps_per_epoch: int, batch_size: int,
                 model: nn.Module) -> str:
  """What a checkpoint must have been written with to be resumed by this fit."""
  if hasattr(model, 'bn_axis_name'):
    model = model.clone(bn_axis_name=steps.AXIS)  # as fit runs it
  fields = dataclasses.asdict(config)
  for unkeyed in ('checkpoint_dir', 'resume', 'progress', 'stop_after_epochs'):
    fields.pop(unkeyed)
  # The model's simple attributes (not its initialisers, whose repr holds memory addresses).
  described = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
               if f.name not in ('parent', 'name')}
  described = {k: (v if isinstance(v, (bool, int, float, str, tuple, list, type(None)))
                   else getattr(v, '__name__', type(v).__name__)) for k, v in described.items()}
  fields.update(steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                model=type(model).__name__, model_fields=described)
  return config.fingerprint + ':' + hashlib.sha256(
      json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class ResumeMismatchError(ValueError):
  """The checkpoint to resume was written by a different configuration."""


def _mismatch(root: str) -> ResumeMismatchError:
  return ResumeMismatchError(
      f'{root} holds a checkpoint of a different configuration, which this run cannot resume; '
      'write to another checkpoint directory, or start afresh there (FitConfig.resume=False; '
      'the descriptor job: another --out_dir, or --noresume)')


def check_resume(model: nn.Module, config: FitConfig, *, steps_per_epoch: int,
                 batch_size: int) -> tuple[int, dict[str, Any]] | None:
  """What :func:`fit` would resume from, checked without writing anything.

  A job calls this before it writes its run records, so that a run refused for its checkpoint
  leaves the folder as it was.

  Args:
    model: the model :func:`fit` will train.
    config: the fit's configuration (``checkpoint_dir``, ``resume``, ``fingerprint`` ...).
    steps_per_epoch: of the data :func:`fit` will get.
    batch_size: of the data :func:`fit` will get.

  Returns:
    ``(epochs done, progress metadata with its 'history')`` of the checkpoint to resume, or
    None when the fit starts from the beginning.

  Raises:
    ResumeMismatchError: the checkpoint was written by a different configuration.
  """
  if not config.checkpoint_dir or not config.resume:
    return None
  found = checkpoints_lib.read_latest_meta(config.checkpoint_dir)
  if found is None:
    return None
  if found[1].get('fingerprint') != _fingerprint(config, steps_per_epoch, batch_size, model):
    raise _mismatch(os.path.abspath(config.checkpoint_dir))
  return found


def _variables(state: steps.TrainState) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}


@dataclasses.dataclass
class _Progress:
  """Where a fit stands: its train state, the epochs done and the checkpoints written."""
  state: steps.TrainState | None = None
  start_epoch: int = 0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  best: dict[str, Any] = dataclasses.field(
      default_factory=lambda: {'epoch': 0, 'macro_prauc': -math.inf})
  last_path: str = ''
  best_path: str = ''


class _Trainer:
  """The compiled steps, the optimiser and the phase plans of one fit."""

  def __init__(self, model: nn.Module, data: FitData, loss: losses_lib.AdditiveLoss,
               config: FitConfig, mesh: jax.sharding.Mesh):
    self.data, self.loss, self.config, self.mesh = data, loss, config, mesh
    self.base_key = jax.random.key(config.seed)
    self.tx = optim.adamw_groups(weight_decay=config.weight_decay)
    self.train_step = steps.make_train_step(model, self.tx, loss, mesh, augment=config.augment)
    self.eval_step = steps.make_eval_step(model, mesh)

  def plan(self, phase: int) -> optim.PhasePlan:
    return optim.phase_plan(phase, self.data.steps_per_epoch * self.config.epochs_in(phase),
                            phase1_lr=self.config.phase1_lr, phase2_lrs=self.config.phase2_lrs,
                            schedule=self.config.schedule)

  def new_state(self, phase: int, variables: Mapping[str, Any]) -> steps.TrainState:
    # Fresh optimiser state per phase (fastai clears it when it unfreezes), own dropout key.
    return steps.replicate(
        steps.create_state(variables, self.tx, jax.random.fold_in(self.base_key, phase)),
        self.mesh)

  def evaluate(self, state: steps.TrainState) -> np.ndarray:
    return evaluate(self.eval_step, _variables(state), self.data, self.mesh)


def fit(model: nn.Module, variables: Mapping[str, Any], data: FitData,
        loss: losses_lib.AdditiveLoss, config: FitConfig, *,
        mesh: jax.sharding.Mesh | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
  """Trains in two phases, evaluating and checkpointing after every epoch.

  Args:
    model: the classifier (its BatchNorm is synchronised over the mesh here:
      ``bn_axis_name='data'``); its dtype sets the compute precision.
    variables: initial {'params', 'batch_stats'} (e.g. with a pretrained body inserted).
    data: batches and validation labels.
    loss: the training loss.
    config: epochs, learning rates, checkpoints.
    mesh: the device mesh (default: every device, :func:`fwjax.training.steps.make_mesh`).
    on_epoch: called with the record of each epoch this call runs (epochs done before a resume
      are in ``FitResult.history`` only).

  Returns:
    A :class:`FitResult`. Epoch records hold 'epoch' (1-based), 'phase', 'train_loss',
    'valid_loss', 'macro_prauc', 'per_label_ap', 'num_labels_without_positives', 'lrs' (each
    group's learning rate at the epoch's last step), 'images_per_second', 'data_wait_per_step',
    'seconds'.

  Raises:
    NonFiniteLossError: a training loss was NaN/Inf (message names the step and checkpoint).
    ResumeMismatchError: a checkpoint in ``checkpoint_dir`` from a different configuration
      (:func:`check_resume` tells before anything is written).
  """
  mesh = steps.make_mesh() if mesh is None else mesh
  steps.local_batch_size(data.batch_size, mesh)  # fails early if the batch does not split
  if hasattr(model, 'bn_axis_name'):
    model = model.clone(bn_axis_name=steps.AXIS)
  total_epochs = config.epochs_phase1 + config.epochs_phase2
  fingerprint = _fingerprint(config, data.steps_per_epoch, data.batch_size, model)
  trainer = _Trainer(model, data, loss, config, mesh)
  checkpoints = (checkpoints_lib.RunCheckpoints(config.checkpoint_dir)
                 if config.checkpoint_dir else None)
  progress = _Progress()
  if checkpoints is not None and config.resume:
    progress = _resume(trainer, checkpoints, fingerprint, variables, total_epochs)

  end_epoch = total_epochs if config.stop_after_epochs is None else min(
      total_epochs, config.stop_after_epochs)
  logits = None
  for epoch in range(progress.start_epoch, end_epoch):
    phase = config.phase_of(epoch)
    if progress.state is None:
      progress.state = trainer.new_state(phase, variables)
    elif epoch == config.epochs_phase1 and epoch != progress.start_epoch:
      progress.state = trainer.new_state(phase, _variables(progress.state))
    record, logits = _run_epoch(trainer, progress, epoch)
    if checkpoints is not None:
      _save(checkpoints, progress, epoch, fingerprint, improved=record['best'])
    record.pop('best')
    if on_epoch is not None:
      on_epoch(record)

  if checkpoints is not None:
    checkpoints.close()
  if progress.state is None:  # no epoch to run and no checkpoint: the initial variables are final
    progress.state = trainer.new_state(1, variables)
  final = jax.device_get(_variables(progress.state))
  if logits is None:  # no epoch ran in this call (e.g. resumed a finished run)
    logits = trainer.evaluate(progress.state)
  return FitResult(variables=final, history=progress.history,
                   best_epoch=progress.best['epoch'],
                   valid_scores=1 / (1 + np.exp(-logits.astype(np.float64))),
                   valid_logits=logits, last_checkpoint=progress.last_path,
                   best_checkpoint=progress.best_path, complete=end_epoch == total_epochs)


def _resume(trainer: _Trainer, checkpoints: checkpoints_lib.RunCheckpoints, fingerprint: str,
            variables: Mapping[str, Any], total_epochs: int) -> _Progress:
  """The progress of the last checkpoint (nothing done when there is none)."""
  found = checkpoints.latest_meta()
  if found is None:
    return _Progress()
  start_epoch, meta = found
  if meta['fingerprint'] != fingerprint:
    raise _mismatch(checkpoints.root)
  state = checkpoints.restore_state(start_epoch, trainer.new_state(meta['phase'], variables))
  progress = _Progress(
      state=state, start_epoch=start_epoch, history=meta['history'], best=meta['best'],
      last_path=checkpoints.path(checkpoints.last, start_epoch),
      best_path=checkpoints.path(checkpoints.best, checkpoints.best.latest_step()))
  print(f'resuming from {progress.last_path}: {start_epoch} of {total_epochs} epochs done',
        flush=True)
  config = trainer.config
  if start_epoch < total_epochs and config.phase_of(start_epoch) != meta['phase']:
    progress.state = trainer.new_state(config.phase_of(start_epoch), _variables(state))
  return progress


def _run_epoch(trainer: _Trainer, progress: _Progress, epoch: int
               ) -> tuple[dict[str, Any], np.ndarray]:
  """Trains one epoch, evaluates it and updates ``progress``; returns its record and logits."""
  config, data = trainer.config, trainer.data
  phase = config.phase_of(epoch)
  phase_plan = trainer.plan(phase)
  phase_epoch = epoch + 1 - (0 if phase == 1 else config.epochs_phase1)
  first_step = (phase_epoch - 1) * data.steps_per_epoch  # schedule position in the phase
  bar = progress_lib.ProgressBar(
      data.steps_per_epoch, f'phase {phase} epoch {phase_epoch}/{config.epochs_in(phase)}',
      data.batch_size, enabled=config.progress)
  started = time.perf_counter()
  pending = None  # the previous step's loss, checked one step late to keep the device busy

  def check(pending_loss, step_number) -> float:
    value = float(pending_loss)
    if not math.isfinite(value):
      raise NonFiniteLossError(
          f'training loss is {value} at step {step_number} (epoch {epoch + 1}, phase {phase}); '
          f'last good checkpoint: {progress.last_path or "none (no checkpoint written yet)"}')
    return value

  state = progress.state
  for i, (batch, waited) in enumerate(feed.prefetch(data.train_batches(epoch), trainer.mesh)):
    if i == data.steps_per_epoch:
      raise ValueError(f'train_batches({epoch}) gave more than steps_per_epoch='
                       f'{data.steps_per_epoch} batches')
    step_number = epoch * data.steps_per_epoch + i + 1
    rates = phase_plan.learning_rates(first_step + i)
    state, metrics = trainer.train_step(state, batch, rates)
    if pending is not None:
      bar.update(check(*pending[:2]), pending[2])
    pending = (metrics['loss'], step_number, waited)
  if pending is None:
    raise ValueError(f'train_batches({epoch}) gave no batch; expected {data.steps_per_epoch}')
  bar.update(check(*pending[:2]), pending[2])
  progress.state = state

  logits = trainer.evaluate(state)
  record = {'epoch': epoch + 1, 'phase': phase, 'train_loss': bar.mean_loss,
            **validation_metrics(data.valid_labels, logits, trainer.loss),
            'lrs': [float(rates[f'group{g}']) for g in range(optim.NUM_GROUPS)],
            'images_per_second': bar.images_per_second,
            'data_wait_per_step': bar.data_wait_per_step,
            'seconds': time.perf_counter() - started}
  progress.history.append(record)
  improved = record['macro_prauc'] > progress.best['macro_prauc']
  if improved:
    progress.best = {'epoch': epoch + 1, 'macro_prauc': record['macro_prauc']}
  bar.close(f' | valid loss {record["valid_loss"]:.4f} PRAUC {record["macro_prauc"]:.4f}'
            + (' *' if improved else ''))
  return dict(record, best=improved), logits


def _save(checkpoints: checkpoints_lib.RunCheckpoints, progress: _Progress, epoch: int,
          fingerprint: str, *, improved: bool) -> None:
  """Writes the epoch's checkpoints (the best variables too when the epoch improved)."""
  meta = {'fingerprint': fingerprint, 'phase': progress.history[-1]['phase'],
          'history': progress.history, 'best': progress.best}
  if improved:
    progress.best_path = checkpoints.save_best(
        epoch + 1, jax.device_get(_variables(progress.state)), meta)
  progress.last_path = checkpoints.save_last(epoch + 1, progress.state, meta)
