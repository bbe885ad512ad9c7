"""Saves and loads fwjax's own model variables with Orbax.

A variables tree (``{'params': ..., 'batch_stats': ...}`` of jax or numpy arrays) is written as an
Orbax checkpoint directory (``StandardCheckpointer``: tensorstore/OCDBT, sharding-aware, the
format ``orbax.checkpoint.CheckpointManager`` uses for training runs), so weights converted from
torchvision once (``pretrained.load_torchvision`` then :func:`save_variables`) reload without the
original file, and fine-tuned models can be shared as directories.

Training-loop checkpoints (optimizer state, step, several kept versions) belong to
``fwjax.training.train``; these two functions are for a model's variables alone.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(path: str | os.PathLike, variables: Any, *, overwrite: bool = False) -> str:
  """Writes a variables tree to an Orbax checkpoint directory.

  Args:
    path: the directory to create (made absolute; Orbax requires it).
    variables: a pytree of arrays (nested dicts, as Flax variables are).
    overwrite: replace an existing checkpoint at ``path``.

  Returns:
    The absolute path written.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it')
  # numpy leaves (e.g. from pretrained.load_torchvision) become jax arrays so that every leaf is
  # saved with the same array handler.
  tree = jax.tree.map(lambda x: jax.numpy.asarray(x) if isinstance(x, np.ndarray) else x,
                      variables)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree, force=overwrite)
    checkpointer.wait_until_finished()
  return path


def load_variables(path: str | os.PathLike, target: Any | None = None) -> Any:
  """Reads a variables tree written by :func:`save_variables`.

  Args:
    path: the checkpoint directory.
    target: optional tree of arrays or ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of
      ``model.init``) giving the expected structure, shapes, dtypes and shardings; the checkpoint
      must match it. Without it the saved tree is returned as saved.

  Returns:
    The variables tree (jax arrays).

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: the checkpoint does not match ``target`` (Orbax's message names the leaves).
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no checkpoint directory (written by save_variables)')
  with ocp.StandardCheckpointer() as checkpointer:
    if target is None:
      return checkpointer.restore(path)
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
        else jax.ShapeDtypeStruct(np.shape(x), x.dtype), target)
    return checkpointer.restore(path, abstract)
