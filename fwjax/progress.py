"""One progress display for all long work: training epochs, feature extraction, resizing.

On a terminal the line is redrawn in place a few times a second. In a log file (not a terminal)
a full line is written every ``log_seconds``, or sooner when another tenth of the work is done
(but at most one a second), and once at the end: a log shows that a long run is alive without
filling up with redraws.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
  """Progress of ``total`` units of work.

  Args:
    total: units in the whole piece of work (steps, images).
    label: shown first, e.g. ``'phase 1 epoch 3/10'`` or ``'extracting features'``.
    unit: the unit of the rate, e.g. ``'img'``.
    stream: where to write (stderr by default).
    enabled: False shows nothing (the counts are still kept).
    interval: seconds between redraws on a terminal.
    log_seconds: at most this many seconds between lines in a log file.
    details: returns extra text for the line (e.g. the running loss); called when drawing.
  """

  def __init__(self, total: int, label: str, *, unit: str = 'img', stream: TextIO | None = None,
               enabled: bool = True, interval: float = 0.25, log_seconds: float = 5.0,
               details: Callable[[], str] | None = None):
    self.total, self.label, self.unit = total, label, unit
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled and total > 0
    self.tty = self.enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.interval, self.log_seconds, self.details = interval, log_seconds, details
    self.done = 0
    self.start = time.perf_counter()
    self._last_line = self.start
    self._next_tenth = 1
    self._closed = False

  @property
  def rate(self) -> float:
    """Units per second since the start."""
    return self.done / max(time.perf_counter() - self.start, 1e-9)

  def line(self) -> str:
    width = 20
    filled = int(width * min(self.done, self.total) / max(self.total, 1))
    extra = self.details() if self.details else f'{self.rate:.1f} {self.unit}/s'
    return (f'{self.label} [{"#" * filled}{"." * (width - filled)}] {self.done}/{self.total} '
            f'{extra}')

  def update(self, n: int = 1) -> None:
    """Records ``n`` more finished units and draws or logs the line when it is due."""
    self.done += n
    if not self.enabled:
      return
    now = time.perf_counter()
    if self.tty:
      if now - self._last_line >= self.interval:
        self._last_line = now
        self.stream.write('\r' + self.line() + ' ' * 4)
        self.stream.flush()
      return
    tenth = self.done * 10 // max(self.total, 1)
    since = now - self._last_line
    # A new tenth is worth a line only if the last one is a second old: short work stays quiet.
    if self.done < self.total and ((tenth >= self._next_tenth and since >= 1.0)
                                   or since >= self.log_seconds):
      self._next_tenth = tenth + 1
      self._last_line = now
      self.stream.write(self.line() + '\n')
      self.stream.flush()

  def close(self, suffix: str = '') -> None:
    """Writes the final line (with ``suffix``, e.g. validation metrics); idempotent."""
    if not self.enabled or self._closed:
      return
    self._closed = True
    self.stream.write(('\r' if self.tty else '') + self.line() + suffix + '\n')
    self.stream.flush()


class ProgressBar(Progress):
  """Progress of one training epoch: running loss, throughput and the time spent waiting for data.

  Args:
    total: steps in the epoch.
    description: shown first, e.g. 'phase 1 epoch 3/10'.
    batch_size: examples per step (for images/s).
    **kwargs: as for :class:`Progress`.
  """

  def __init__(self, total: int, description: str, batch_size: int, **kwargs):
    super().__init__(total, description, details=self._details, **kwargs)
    self.batch_size = batch_size
    self.loss_sum = 0.0
    self.data_wait = 0.0
    self.first_step_end: float | None = None

  def update(self, loss: float, data_wait: float) -> None:  # pylint: disable=arguments-renamed
    """Records one finished step with its loss and the seconds it waited for its batch."""
    self.loss_sum += loss
    self.data_wait += data_wait
    if self.first_step_end is None:
      self.first_step_end = time.perf_counter()
    super().update(1)

  @property
  def count(self) -> int:
    return self.done

  @property
  def mean_loss(self) -> float:
    return self.loss_sum / max(self.done, 1)

  @property
  def images_per_second(self) -> float:
    """Throughput after the first step (which may include compilation)."""
    if self.first_step_end is None or self.done < 2:
      return float('nan')
    return (self.done - 1) * self.batch_size / (time.perf_counter() - self.first_step_end)

  @property
  def data_wait_per_step(self) -> float:
    return self.data_wait / max(self.done, 1)

  def _details(self) -> str:
    return (f'loss {self.mean_loss:.4f} | {self.images_per_second:.1f} img/s | '
            f'data wait {1e3 * self.data_wait_per_step:.1f} ms/step')
