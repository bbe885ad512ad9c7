"""The data side of training: the batches of a fit and their background prefetch to devices."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from fwjax.training import steps


@dataclasses.dataclass
class FitData:
  """The data ``fit`` consumes (host numpy batches; see :func:`array_data` for an example).

  Attributes:
    steps_per_epoch: full training batches per epoch.
    batch_size: global batch size.
    train_batches: ``epoch -> iterable`` of dicts 'image' (b, H, W, 3) uint8, 'label' (b, L),
      'mask' (b,) bool, b = this process's share of the batch. The order must be a function of
      the epoch alone (so a resumed run sees the same batches); no padding (BatchNorm would see
      it).
    valid_batches: ``() -> iterable`` of the same dicts covering the validation set in order,
      the last batch padded with mask False.
    valid_labels: (N, L) labels of the validation set in the order of ``valid_batches``.
  """
  steps_per_epoch: int
  batch_size: int
  train_batches: Callable[[int], Iterable[Mapping[str, np.ndarray]]]
  valid_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
  valid_labels: np.ndarray


def array_data(train_images: np.ndarray, train_labels: np.ndarray, valid_images: np.ndarray,
               valid_labels: np.ndarray, batch_size: int, seed: int = 0) -> FitData:
  """:class:`FitData` over in-memory arrays (single process): shuffled by ``(seed, epoch)``.

  Raises:
    ValueError: fewer training images than one batch, or mismatched lengths.
  """
  if len(train_images) != len(train_labels) or len(valid_images) != len(valid_labels):
    raise ValueError('images and labels differ in length')
  steps_per_epoch = len(train_images) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train_images)} training images do not fill one batch of '
                     f'{batch_size}; lower the batch size')

  def train(epoch: int) -> Iterator[dict[str, np.ndarray]]:
    order = np.random.default_rng((seed, epoch)).permutation(len(train_images))
    for i in range(steps_per_epoch):
      idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
      yield {'image': train_images[idx], 'label': train_labels[idx],
             'mask': np.ones(batch_size, bool)}

  def valid() -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(valid_images), batch_size):
      stop = start + batch_size
      images, labels = valid_images[start:stop], valid_labels[start:stop]
      pad = batch_size - len(images)
      yield {'image': np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]),
             'label': np.concatenate([labels, np.zeros((pad,) + labels.shape[1:], labels.dtype)]),
             'mask': np.arange(batch_size) < len(images)}

  return FitData(steps_per_epoch, batch_size, train, valid, np.asarray(valid_labels))


def prefetch(batches: Iterable[Mapping[str, np.ndarray]], mesh: jax.sharding.Mesh,
              size: int = 2) -> Iterator[tuple[dict[str, jax.Array], float]]:
  """Loads and shards batches in a background thread; yields (batch, seconds waited for it)."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce() -> None:
    try:
      for batch in batches:
        if stop.is_set():
          return
        q.put(steps.shard_batch(batch, mesh))
      q.put(done)
    except BaseException as error:  # re-raised in the consumer, with its traceback
      q.put(error)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      start = time.perf_counter()
      item = q.get()
      waited = time.perf_counter() - start
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item, waited
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(0.05)
