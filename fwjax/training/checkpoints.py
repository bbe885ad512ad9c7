"""The checkpoints of a training run: the last train state and the best variables (Orbax).

  <dir>/last/<epoch>/   train state (params, batch_stats, optimiser state with the schedule
                        position, step, RNG) + progress metadata (JSON)
  <dir>/best/<epoch>/   variables (params, batch_stats) of the best validation score so far
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from fwjax.training import steps


class RunCheckpoints:
  """The 'last' (train state + progress) and 'best' (variables) Orbax checkpoint managers."""

  def __init__(self, directory: str):
    self.root = os.path.abspath(directory)
    options = lambda: ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                   enable_async_checkpointing=False)
    self.last = ocp.CheckpointManager(os.path.join(self.root, 'last'), options=options(),
                                      item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(os.path.join(self.root, 'best'), options=options(),
                                      item_names=('variables', 'meta'))

  def path(self, manager: ocp.CheckpointManager, step: int | None) -> str:
    return '' if step is None else str(manager.directory / str(step))

  def save_last(self, epoch: int, state: steps.TrainState, meta: dict[str, Any]) -> str:
    self.last.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
    self.last.wait_until_finished()
    return self.path(self.last, epoch)

  def save_best(self, epoch: int, variables: dict[str, Any], meta: dict[str, Any]) -> str:
    self.best.save(epoch, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
    self.best.wait_until_finished()
    return self.path(self.best, epoch)

  def latest_meta(self) -> tuple[int, dict[str, Any]] | None:
    epoch = self.last.latest_step()
    if epoch is None:
      return None
    restored = self.last.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return epoch, restored['meta']

  def restore_state(self, epoch: int, target: steps.TrainState) -> steps.TrainState:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            target)
    restored = self.last.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored['state']

  def close(self) -> None:
    self.last.close()
    self.best.close()


def read_latest_meta(directory: str) -> tuple[int, dict[str, Any]] | None:
  """The epoch and progress metadata of the last checkpoint under ``directory``, reading only.

  Unlike :class:`RunCheckpoints` this creates nothing, so a job can check a run folder before it
  decides to write there. None when there is no complete checkpoint.
  """
  last = os.path.join(os.path.abspath(directory), 'last')
  if not os.path.isdir(last):
    return None
  manager = ocp.CheckpointManager(
      last, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=('state', 'meta'))
  try:
    epoch = manager.latest_step()
    if epoch is None:
      return None
    restored = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return epoch, restored['meta']
  finally:
    manager.close()
