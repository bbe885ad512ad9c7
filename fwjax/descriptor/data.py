"""Data of a descriptor run: source -> split -> resized cache -> batches for ``train.fit``.

The originals are decoded and resized once per (resolution, policy) into a cache of uint8 planes
(``fwjax.data.cache``); a channel composition (``B-H-N`` ...) is a stack of cached planes, so
every composition of the paper's grid reads the same cache. Batches are gathered from the
memory-mapped planes per step, in an order drawn from ``(split_seed, seed, epoch)``: a resumed
run sees exactly the batches an uninterrupted one would. With several processes each takes its
rows of every global batch.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

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


def _examples(config: DescriptorConfig, out: pathlib.Path) -> list[Any]:
  if config.synthetic > 0:
    height, width = config.synthetic_size
    if not height or not width:  # originals larger than the network input, so resizing matters
      height, width = 2 * config.height, 2 * config.width
    root = (_cache_root(config, out)
            / f'synthetic_{config.synthetic}_{height}x{width}_s{config.split_seed}')
    csv_path = root / 'manifest.csv'
    if not csv_path.exists():
      csv_path = pathlib.Path(synthetic.make_descriptor_set(
          root, config.synthetic, seed=config.split_seed, height=height, width=width))
    return manifest_lib.read_manifest(csv_path)
  return manifest_lib.read_manifest(config.manifest, root=config.data_root, on_bad_image='skip',
                                    report_path=out / 'skipped_images.csv')


def _cache_root(config: DescriptorConfig, out: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.cache_dir) if config.cache_dir else out / 'cache'


def load(config: DescriptorConfig, out: pathlib.Path) -> DescriptorData:
  """Builds (or reuses) the cache and the batches of a :class:`DescriptorConfig`.

  Raises:
    ValueError: too few images for one training batch, an empty validation split, or a
      ``valid_count`` that leaves no training images.
  """
  examples = _examples(config, out)
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
  cache_dir = (_cache_root(config, out) /
               f'{_source_tag(config)}_{config.height}x{config.width}_{config.policy}')
  kwargs = {'policy': config.policy}
  if config.workers:
    kwargs['workers'] = config.workers
  cache = cache_lib.build_cache(examples, cache_dir, config.height, config.width, **kwargs)
  index = {str(p): i for i, p in enumerate(cache.paths)}
  train_idx = np.asarray([index[str(e.path)] for e in train_examples], np.int64)
  valid_idx = np.asarray([index[str(e.path)] for e in valid_examples], np.int64)
  labels = np.asarray(cache.labels)
  batch = config.batch_size
  steps_per_epoch = len(train_idx) // batch
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train_idx)} training images do not fill one batch of {batch}; lower '
                     '--batch_size or add images')
  processes, process = jax.process_count(), jax.process_index()
  if batch % processes:
    raise ValueError(f'--batch_size={batch} does not split over {processes} processes')
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
