"""Data-parallel train and eval steps: one code path from 1 CPU to N GPUs on several hosts.

Every device of every process forms a 1-D mesh with axis ``'data'``. The train state is
replicated; a global batch is split on its leading axis, one slice per device (each process
supplies the slices of its own devices). The step runs under ``jax.shard_map``, the maintained
successor of ``jax.pmap``:

- each device computes the loss statistics of its slice; ``lax.psum`` adds them, so the loss is
  exactly that of the global batch (also for Soft-F1, see ``fwjax.training.losses``);
- each device differentiates through its own slice; ``lax.psum`` of the gradients gives the
  gradient of the global-batch loss. For a mean loss over equal slices this is the familiar
  ``lax.pmean`` of per-device mean gradients; the sum form stays exact with uneven masks and for
  losses that are not per-example means;
- BatchNorm averages its batch statistics over ``'data'`` (the model is built with
  ``bn_axis_name='data'``), so the running statistics are those of the global batch;
- dropout draws per device from ``fold_in(key, device index)``;
- optional augmentation (``fwjax.augment``) runs on the device, each image keyed by its index in
  the global batch, so it does not depend on the number of devices.

A 1-device mesh runs the same code (the collectives are identities), and tests check that 4
fake CPU devices give the same parameters as 1 device on the same global batch.

Several hosts: call :func:`initialize_distributed` (``jax.distributed.initialize``) in every
process before anything else touches JAX; the mesh then spans every host's devices and each
process feeds ``global_batch / process_count`` examples per step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fwjax import augment as augment_lib
from fwjax.models import imagenet
from fwjax.training import losses as losses_lib

AXIS = 'data'
normalize = imagenet.torch
"""(B, H, W, 3) pixels in 0..255 (uint8 or float) -> ImageNet-normalised floats, on device: the
training path uses torchvision's normalisation, defined once in :mod:`fwjax.models.imagenet`."""


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes (and a checkpoint must hold to resume exactly).

  Attributes:
    params: model parameters (float32, also under mixed precision).
    batch_stats: BatchNorm running statistics.
    opt_state: the optimiser state of the current phase (holds the schedule position).
    step: updates done in the current phase (int32 scalar).
    rng: raw key data (uint32) of the training key; step ``s`` uses ``fold_in(key, s)``.
  """
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-host run (``jax.distributed.initialize``); call before any other JAX call.

  On Cloud TPU, SLURM and Open MPI the arguments are detected and may be left None; elsewhere
  give all three (every process the same coordinator ``host:port``), as arguments or as the
  environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` (JAX itself reads only the first).
  """
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process) with axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """A copy of a pytree on every device of ``mesh`` (replicated).

  Always a copy, so a train step that donates the result never frees the caller's arrays.
  """
  # device_put may reuse an input buffer for one device's shard (even with may_alias=False when
  # the mesh has several devices), so copy first: the copy is ours to donate.
  tree = jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def local_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """Examples this process feeds per step; the global batch must split evenly over devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f'batch size {global_batch_size} does not split over {mesh.size} devices; '
                     f'use a multiple of {mesh.size}')
  return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Puts this process's part of a global batch on its devices, split on the leading axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def create_state(variables: Mapping[str, Any], tx: optax.GradientTransformation,
                 rng: jax.Array, step: int = 0) -> TrainState:
  """A fresh train state (new optimiser state) from model variables."""
  params = variables['params']
  return TrainState(params=params, batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), step=jnp.asarray(step, jnp.int32),
                    rng=jnp.asarray(jax.random.key_data(rng) if jnp.issubdtype(
                        rng.dtype, jax.dtypes.prng_key) else rng, jnp.uint32))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    loss: losses_lib.AdditiveLoss, mesh: jax.sharding.Mesh, *,
                    donate: bool = True, augment: augment_lib.Augment | None = None
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """A jitted data-parallel train step ``(state, batch, learning_rates) -> (state, metrics)``.

  Args:
    model: the classifier, built with ``bn_axis_name='data'`` for synchronised BatchNorm; its
      ``dtype`` sets the compute precision (bfloat16 for mixed precision; params stay float32).
    tx: the optimiser (``fwjax.training.optim.adamw_groups``: the rates are arguments of the step, so
      one compiled step serves both phases; any optax transformation that takes no extra
      arguments works too and ignores them).
    loss: the loss (its statistics are summed over devices).
    mesh: the 1-D 'data' mesh (:func:`make_mesh`).
    donate: reuse the input state's buffers (the caller must not use the old state again).
    augment: training augmentation (mirror, rotation, shift), drawn per image from the state's
      key and the step; None for none.

  Returns:
    The step. ``batch`` holds 'image' (B, H, W, 3) uint8, 'label' (B, L), 'mask' (B,) bool,
    sharded with :func:`shard_batch`; ``learning_rates`` maps each optimiser label to its rate
    for this update (``PhasePlan.learning_rates(state.step)``). ``metrics`` has the global-batch 'loss' and the number of
    examples 'count' (replicated scalars).
  """
  return _train_step(model, tx, loss, mesh, donate, augment or augment_lib.Augment())


# Folded into the step key for the augmentation stream (dropout folds in device indices, which
# are small, so a large constant keeps the two streams apart).
_AUGMENT_STREAM = 0x61756700


# Compiled steps are kept per (model, optimiser, loss, mesh): a resumed fit or a second run with
# the same configuration in one process reuses the executable instead of compiling again.
@functools.lru_cache(maxsize=8)
def _train_step(model: nn.Module, tx: optax.GradientTransformation,
                loss: losses_lib.AdditiveLoss, mesh: jax.sharding.Mesh, donate: bool,
                augment: augment_lib.Augment):
  compute_dtype = getattr(model, 'dtype', jnp.float32)

  def local_step(state: TrainState, batch: dict[str, jax.Array], learning_rates: Any):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    device = jax.lax.axis_index(AXIS)
    dropout_key = jax.random.fold_in(key, device)
    # augment_batch returns the batch untouched when ``augment`` asks for nothing.
    images = augment_lib.augment_batch(
        batch['image'].astype(jnp.float32), jax.random.fold_in(key, _AUGMENT_STREAM), augment,
        offset=device * batch['image'].shape[0])
    images = normalize(images, compute_dtype)

    def objective(params):
      logits, updated = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
          rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      stats = jax.lax.psum(loss.statistics(logits, batch['label'], batch['mask']), AXIS)
      return loss.finish(stats), updated['batch_stats']

    # Differentiate w.r.t. this device's copy of the parameters: its gradient covers its own
    # slice only, and the psum below adds the slices up.
    local_params = jax.lax.pcast(state.params, AXIS, to='varying')
    (value, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(local_params)
    grads = jax.lax.psum(grads, AXIS)
    extra = {} if learning_rates is None else {'learning_rates': learning_rates}
    updates, opt_state = optax.with_extra_args_support(tx).update(
        grads, state.opt_state, state.params, **extra)
    new_state = state.replace(params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state,
                              step=state.step + 1)
    count = jax.lax.psum(jnp.sum(batch['mask'].astype(jnp.float32)), AXIS)
    return new_state, {'loss': value, 'count': count}

  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                          out_specs=(P(), P()))
  jitted = jax.jit(sharded, donate_argnums=(0,) if donate else ())

  def step(state: TrainState, batch: dict[str, jax.Array],
           learning_rates: Mapping[str, Any] | None = None):
    return jitted(state, batch, None if learning_rates is None else dict(learning_rates))

  return step


def make_eval_step(model: nn.Module, mesh: jax.sharding.Mesh
                   ) -> Callable[[Mapping[str, Any], dict[str, jax.Array]], jax.Array]:
  """A jitted data-parallel eval step ``(variables, batch) -> logits``.

  Returns:
    The step; it gives (B, L) float32 logits sharded like the batch (padding rows are scored
    too: drop them with the batch's mask).
  """
  return _eval_step(model, mesh)


@functools.lru_cache(maxsize=8)
def _eval_step(model: nn.Module, mesh: jax.sharding.Mesh):
  compute_dtype = getattr(model, 'dtype', jnp.float32)

  def local_eval(variables, batch):
    logits = model.apply(variables, normalize(batch['image'], compute_dtype), train=False)
    return logits.astype(jnp.float32)

  sharded = jax.shard_map(local_eval, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
  return jax.jit(sharded)


def gather(x: jax.Array) -> np.ndarray:
  """A sharded array as one host numpy array (every process gets the whole array)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

