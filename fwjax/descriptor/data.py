"""Data of a descriptor run: source -> split -> resized cache -> batches for ``train.fit``.

The originals are decoded and resized once per (resolution, policy) into a cache of uint8 planes
(``fwjax.data.cache``); a channel composition (``B-H-N`` ...) is a stack of cached planes, so
every composition of the paper's grid reads the same cache. Batches are gathered from the
memory-mapped planes per step, in an order drawn from ``(split_seed, seed, epoch)``: a resumed
run sees exactly the batches an uninterrupted one would. With several processes each takes its
rows of every global batch; process 0 builds the cache while the others wait.

Two steps, so that a job can refuse a run before it writes anything: :func:`plan` reads and
checks the data (the manifest's rows, the split, the batch count) and :func:`load` resizes it
into the cache and makes the batches.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from fwjax import runs
from fwjax.data import cache as cache_lib
from fwjax.data import manifest as manifest_lib
from fwjax.data import synthetic
from fwjax.descriptor.config import DescriptorConfig
from fwjax.training import train


@dataclasses.dataclass
class DescriptorData:
  """Training and validation data of one run.

  Attributes:
    fit_data: batches for ``fwjax.training.train.fit``.
    train_labels: (N_train, 17) uint8.
    valid_paths: validation image paths (predictions.csv rows, in order).
    num_train, num_valid: split sizes.
    valid_images: ``indices -> (n, H, W, 3) uint8`` validation images as the model sees them.
    train_paths: the originals of the training images (for the data figures), in split order.
  """
  fit_data: train.FitData
  train_labels: np.ndarray
  valid_paths: list[str]
  num_train: int
  num_valid: int
  valid_images: Any
  train_paths: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DataPlan:
  """A run's data, read and checked but not yet resized into the cache (:func:`plan`).

  Attributes:
    examples: every usable image, in cache order.
    train, valid: the split.
    skipped: manifest rows left out (unusable images), with their reasons.
    steps_per_epoch: full training batches per epoch.
  """
  examples: list[manifest_lib.Example]
  train: list[manifest_lib.Example]
  valid: list[manifest_lib.Example]
  skipped: list[manifest_lib.SkippedRow]
  steps_per_epoch: int


def _scan(config: DescriptorConfig, out: pathlib.Path) -> manifest_lib.ManifestScan:
  if config.synthetic > 0:
    height, width = config.synthetic_size
    if not height or not width:  # originals larger than the network input, so resizing matters
      height, width = 2 * config.height, 2 * config.width
    root = (_cache_root(config, out)
            / f'synthetic_{config.synthetic}_{height}x{width}_s{config.split_seed}')
    csv_path = root / 'manifest.csv'
    # The generated set is cache, like the resized planes: with several processes the first
    # writes it and the others wait, then read it.
    if runs.primary_process() and not csv_path.exists():
      csv_path = pathlib.Path(synthetic.make_descriptor_set(
          root, config.synthetic, seed=config.split_seed, height=height, width=width))
    _wait_for_primary('synthetic set')
    if not csv_path.exists():  # a host that does not share the primary's file system
      csv_path = pathlib.Path(synthetic.make_descriptor_set(
          root, config.synthetic, seed=config.split_seed, height=height, width=width))
    return manifest_lib.scan_manifest(csv_path)
  try:
    return manifest_lib.scan_manifest(
        config.manifest, root=config.data_root, on_bad_image='skip',
        max_pixels=config.max_pixels, allow_empty_labels=config.allow_empty_labels)
  except manifest_lib.EmptyLabelsError as error:
    raise manifest_lib.EmptyLabelsError(
        f'{error}, or pass --allow_empty_labels if an empty field means no descriptor',
        rows=error.rows) from None


def _cache_root(config: DescriptorConfig, out: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.cache_dir) if config.cache_dir else out / 'cache'


def _wait_for_primary(what: str) -> None:
  """With several processes: returns once process 0 has written ``what`` (a barrier)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'fwjax.descriptor.data: {what}')


def plan(config: DescriptorConfig, out: pathlib.Path) -> DataPlan:
  """Reads and checks a :class:`DescriptorConfig`'s data and splits it; writes no run record.

  Only a synthetic set is generated (into the cache) if it is not there yet. A run that is
  refused for its data is refused here, before the job writes anything.

  Raises:
    fwjax.data.manifest.ManifestError: a manifest that cannot be used (rows named).
    ValueError: too few images for one training batch, an empty validation split, or a
      ``valid_count`` that leaves no training images.
  """
  scan = _scan(config, out)
  examples = scan.examples
  train_examples, valid_examples = manifest_lib.split_examples(
      examples, config.valid_fraction, config.split_seed, valid_count=config.valid_count)
  if not valid_examples:
    fixed = sum(e.split is not None for e in examples)
    if fixed == len(examples):
      raise ValueError(f'no validation images: the manifest\'s split column sets all '
                       f'{len(examples)} rows to train; mark some rows valid (or leave their split '
                       'empty for --valid_fraction or --valid_count to draw from)')
    raise ValueError(f'no validation images: raise --valid_fraction ({config.valid_fraction}) or '
                     f'add images ({len(examples) - fixed} without a fixed split, '
                     f'{len(examples)} in all)')
  steps_per_epoch = len(train_examples) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train_examples)} training images do not fill one batch of '
                     f'{config.batch_size}; lower --batch_size or add images')
  if config.batch_size % jax.process_count():
    raise ValueError(f'--batch_size={config.batch_size} does not split over '
                     f'{jax.process_count()} processes')
  return DataPlan(examples, train_examples, valid_examples, scan.skipped, steps_per_epoch)


def load(config: DescriptorConfig, out: pathlib.Path, data_plan: DataPlan) -> DescriptorData:
  """Builds (or reuses) the cache of a :func:`plan` and the batches for ``train.fit``."""
  examples, train_examples = data_plan.examples, data_plan.train
  valid_examples = data_plan.valid
  cache_dir = (_cache_root(config, out) /
               f'{_source_tag(config)}_{config.height}x{config.width}_{config.policy}')
  kwargs = {'policy': config.policy, 'max_pixels': config.max_pixels}
  if config.workers:
    kwargs['workers'] = config.workers
  if runs.primary_process():  # the others wait, then open it (or build their own, unshared)
    cache_lib.build_cache(examples, cache_dir, config.height, config.width, **kwargs)
  _wait_for_primary('resized cache')
  cache = cache_lib.build_cache(examples, cache_dir, config.height, config.width, **kwargs)
  index = {str(p): i for i, p in enumerate(cache.paths)}
  train_idx = np.asarray([index[str(e.path)] for e in train_examples], np.int64)
  valid_idx = np.asarray([index[str(e.path)] for e in valid_examples], np.int64)
  labels = np.asarray(cache.labels)
  batch = config.batch_size
  steps_per_epoch = data_plan.steps_per_epoch
  processes, process = jax.process_count(), jax.process_index()
  local = batch // processes
  composition = config.composition

  def gather(indices: np.ndarray) -> dict[str, np.ndarray]:
    # Sorted reads from the memory-mapped planes are sequential-ish; order within the batch
    # does not matter to the step.
    indices = np.sort(indices)
    return {'image': np.asarray(cache.images(composition, indices)),
            'label': labels[indices].astype(np.float32)}

  def train_batches(epoch: int) -> Iterator[dict[str, np.ndarray]]:
    order = np.random.default_rng((config.split_seed, config.seed, epoch)).permutation(
        len(train_idx))
    for s in range(steps_per_epoch):
      rows = order[s * batch:(s + 1) * batch][process * local:(process + 1) * local]
      yield dict(gather(train_idx[rows]), mask=np.ones(local, bool))

  def valid_batches() -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(valid_idx), batch):
      rows = np.arange(start, start + batch)[process * local:(process + 1) * local]
      real = rows < len(valid_idx)
      idx = valid_idx[np.where(real, rows, 0)]
      images = np.asarray(cache.images(composition, idx))
      yield {'image': images, 'label': labels[idx].astype(np.float32), 'mask': real}

  fit_data = train.FitData(steps_per_epoch, batch, train_batches, valid_batches,
                           labels[valid_idx])
  return DescriptorData(
      fit_data=fit_data, train_labels=labels[train_idx], num_train=len(train_idx),
      num_valid=len(valid_idx), valid_paths=[str(cache.paths[i]) for i in valid_idx],
      valid_images=lambda rows: np.asarray(cache.images(composition, valid_idx[np.asarray(rows)])),
      train_paths=[str(cache.paths[i]) for i in train_idx])


def _source_tag(config: DescriptorConfig) -> str:
  if config.synthetic > 0:
    return f'synthetic{config.synthetic}'
  return pathlib.Path(config.manifest).stem
