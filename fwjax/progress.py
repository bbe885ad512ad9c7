"""A one-line training progress bar: loss, throughput and the time spent waiting for data.

On a terminal the line is redrawn in place (at most a few times a second); in a log file (not a
terminal) only the end-of-epoch line is written, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
  """Progress of one epoch.

  Args:
    total: steps in the epoch.
    description: shown first, e.g. 'phase 1 epoch 3/10'.
    batch_size: examples per step (for images/s).
    stream: where to write (stderr by default).
    interval: seconds between redraws on a terminal.
  """

  def __init__(self, total: int, description: str, batch_size: int, *,
               stream: TextIO | None = None, interval: float = 0.25, enabled: bool = True):
    self.total, self.description, self.batch_size = total, description, batch_size
    self.stream = sys.stderr if stream is None else stream
    self.interval, self.enabled = interval, enabled
    self.tty = enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.count = 0
    self.loss_sum = 0.0
    self.data_wait = 0.0
    self.start = time.perf_counter()
    self.first_step_end: float | None = None
    self._last_draw = 0.0

  def update(self, loss: float, data_wait: float) -> None:
    """Records one finished step with its loss and the seconds it waited for its batch."""
    self.count += 1
    self.loss_sum += loss
    self.data_wait += data_wait
    now = time.perf_counter()
    if self.first_step_end is None:
      self.first_step_end = now
    if self.tty and (now - self._last_draw >= self.interval or self.count == self.total):
      self._last_draw = now
      self.stream.write('\r' + self.line() + ' ' * 4)
      self.stream.flush()

  @property
  def mean_loss(self) -> float:
    return self.loss_sum / max(self.count, 1)

  @property
  def images_per_second(self) -> float:
    """Throughput after the first step (which may include compilation)."""
    if self.first_step_end is None or self.count < 2:
      return float('nan')
    return (self.count - 1) * self.batch_size / (time.perf_counter() - self.first_step_end)

  @property
  def data_wait_per_step(self) -> float:
    return self.data_wait / max(self.count, 1)

  def line(self) -> str:
    width = 20
    filled = int(width * self.count / max(self.total, 1))
    return (f'{self.description} [{"#" * filled}{"." * (width - filled)}] '
            f'{self.count}/{self.total} loss {self.mean_loss:.4f} | '
            f'{self.images_per_second:.1f} img/s | data wait {1e3 * self.data_wait_per_step:.1f} '
            f'ms/step')

  def close(self, suffix: str = '') -> None:
    """Ends the line (adding e.g. the validation metrics)."""
    if not self.enabled:
      return
    self.stream.write(('\r' if self.tty else '') + self.line() + suffix + '\n')
    self.stream.flush()
