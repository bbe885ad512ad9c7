"""The progress display on a fake clock: when lines are written to a log, redraws on a terminal,
and ProgressBar's running numbers against hand computation."""

import io
import math

import numpy as np
import pytest

from fwjax import progress


class _Clock:
  """A stand-in for ``time.perf_counter`` that moves only when told."""

  def __init__(self, start: float = 100.0):
    self.now = start

  def __call__(self) -> float:
    return self.now

  def advance(self, seconds: float) -> None:
    self.now += seconds


class _Log(io.StringIO):
  """A log file (not a terminal) that notes the fake time of every write."""

  def __init__(self, clock: _Clock, tty: bool = False):
    super().__init__()
    self.clock, self.tty, self.times = clock, tty, []

  def write(self, text: str) -> int:
    self.times.append(self.clock.now)
    return super().write(text)

  def isatty(self) -> bool:
    return self.tty


@pytest.fixture
def clock(monkeypatch):
  fake = _Clock()
  monkeypatch.setattr(progress.time, 'perf_counter', fake)
  return fake


def _run(clock, bar, updates):
  """Feeds ``(seconds, units)`` updates to ``bar``; returns the times of its lines and updates."""
  update_times = []
  for seconds, units in updates:
    clock.advance(seconds)
    update_times.append(clock.now)
    bar.update(units)
  return list(bar.stream.times), np.array(update_times)


def test_log_lines_at_least_every_log_seconds_at_most_one_a_second(clock):
  rng = np.random.default_rng(0)
  stream = _Log(clock)
  total = 2000
  bar = progress.Progress(total, 'job', stream=stream, log_seconds=5.0)
  start = clock.now
  # Uneven work: bursts of fast updates, some slow ones, one pause longer than log_seconds.
  gaps = rng.exponential(0.1, total)
  gaps[700] = 12.0
  times, update_times = _run(clock, bar, [(g, 1) for g in gaps])
  end = clock.now
  lines = stream.getvalue().splitlines(keepends=True)
  assert len(lines) == len(times) >= 10 and all(line.endswith('\n') for line in lines)
  assert '\r' not in stream.getvalue()
  spans = np.diff([start] + times)
  assert spans.min() >= 1.0  # never more than one line a second
  # A line is due once log_seconds have passed: it comes with the first update after that.
  for previous, line_time in zip([start] + times, times + [end]):
    between = update_times[(update_times > previous) & (update_times <= line_time)]
    late = between[between - previous >= 5.0]
    if line_time != end:
      assert late.size == 0 or late[0] == line_time
  # No update after the last line came 5 s or more after it without writing a line.
  tail = update_times[(update_times > times[-1]) & (update_times < end)]
  assert not (tail - times[-1] >= 5.0).any()
  bar.close()
  final = stream.getvalue().splitlines()[-1]
  assert final.startswith('job [' + '#' * 20 + ']') and f'{total}/{total}' in final
  assert len(stream.getvalue().splitlines()) == len(lines) + 1


def test_log_lines_on_tenths_when_the_work_is_slow_enough(clock):
  stream = _Log(clock)
  bar = progress.Progress(100, 'tenths', stream=stream, log_seconds=60.0)
  _run(clock, bar, [(0.25, 1)] * 100)  # a tenth every 2.5 s, never 60 s without a line
  # Lines at 10, 20 ... 90 done; at 100 the work is done and only close writes.
  counts = [line.split('] ')[1].split()[0] for line in stream.getvalue().splitlines()]
  assert counts == [f'{n}/100' for n in range(10, 100, 10)]
  bar.close(' | valid 0.5')
  assert stream.getvalue().splitlines()[-1].endswith('100/100 4.0 img/s | valid 0.5')


def test_fast_work_logs_only_the_final_line(clock):
  stream = _Log(clock)
  bar = progress.Progress(100, 'quick', stream=stream)
  _run(clock, bar, [(0.005, 1)] * 100)  # every tenth crossed within half a second
  assert stream.getvalue() == ''
  bar.close()
  bar.close()  # idempotent
  assert stream.getvalue().count('\n') == 1 and '100/100' in stream.getvalue()


def test_tenths_within_a_second_wait_for_the_second(clock):
  stream = _Log(clock)
  bar = progress.Progress(10, 'burst', stream=stream, log_seconds=100.0)
  times, _ = _run(clock, bar, [(0.375, 1)] * 10)  # a new tenth every update
  start = 100.0
  # Due at 1.125 s (done 3), 2.25 s (done 6), 3.375 s (done 9): one a second, each on a tenth.
  assert [t - start for t in times] == [1.125, 2.25, 3.375]
  counts = [line.split('] ')[1].split()[0] for line in stream.getvalue().splitlines()]
  assert counts == ['3/10', '6/10', '9/10']


def test_disabled_or_empty_work_writes_nothing(clock):
  for bar in (progress.Progress(50, 'off', stream=_Log(clock), enabled=False),
              progress.Progress(0, 'empty', stream=_Log(clock)),
              progress.Progress(50, 'off on a terminal', stream=_Log(clock, tty=True),
                                enabled=False)):
    _run(clock, bar, [(2.0, 5)] * 10)
    bar.close('suffix')
    assert bar.stream.getvalue() == ''
    assert bar.done == 50  # the count is still kept


def test_terminal_redraws_in_place(clock):
  stream = _Log(clock, tty=True)
  bar = progress.Progress(40, 'tty', stream=stream, interval=0.25, unit='step')
  _run(clock, bar, [(0.125, 1)] * 40)  # a redraw every second update
  text = stream.getvalue()
  assert '\n' not in text  # the line is only redrawn until the end
  draws = text.split('\r')[1:]
  assert len(draws) == 20 == len(stream.times)
  assert all(draw.endswith(' ' * 4) for draw in draws)  # clears what a longer line left
  assert draws[0].startswith('tty [#.......') and ' 2/40 ' in draws[0]
  assert ' 40/40 8.0 step/s' in draws[-1]
  bar.close()
  assert stream.getvalue()[len(text):] == '\rtty [' + '#' * 20 + '] 40/40 8.0 step/s\n'


def test_line_shows_the_share_done_and_the_rate(clock):
  bar = progress.Progress(8, 'x', stream=_Log(clock), unit='img')
  clock.advance(4.0)
  bar.update(3)
  # 3/8 of 20 columns is 7.5: 7 filled; 3 images in 4 s.
  assert bar.line() == 'x [' + '#' * 7 + '.' * 13 + '] 3/8 0.8 img/s'
  assert bar.rate == pytest.approx(0.75)
  bar.update(7)  # more than the total: the bar stays full
  assert bar.line().startswith('x [' + '#' * 20 + '] 10/8')


def test_progress_bar_mean_loss_throughput_and_data_wait(clock):
  stream = _Log(clock)
  bar = progress.ProgressBar(6, 'epoch 1/2', batch_size=32, stream=stream)
  losses = [2.0, 1.5, 1.25, 1.0, 0.5, 0.25]
  waits = [3.0, 0.01, 0.02, 0.0, 0.05, 0.01]
  step_seconds = [10.0, 0.5, 0.5, 1.0, 0.5, 0.5]  # the first step compiles
  assert math.isnan(bar.images_per_second)
  for i, (loss, wait, seconds) in enumerate(zip(losses, waits, step_seconds)):
    clock.advance(seconds)
    bar.update(loss, wait)
    done = i + 1
    assert bar.count == done
    assert bar.mean_loss == pytest.approx(sum(losses[:done]) / done)
    assert bar.data_wait_per_step == pytest.approx(sum(waits[:done]) / done)
    if done < 2:
      assert math.isnan(bar.images_per_second)
    else:
      # After the first step: (done - 1) batches of 32 over the time since it ended.
      expected = (done - 1) * 32 / sum(step_seconds[1:done])
      assert bar.images_per_second == pytest.approx(expected)
  bar.close()
  # 5 batches of 32 in 3 s; data wait (3.09 s) / 6 steps.
  assert stream.getvalue().splitlines()[-1] == (
      'epoch 1/2 [' + '#' * 20 + '] 6/6 loss 1.0833 | 53.3 img/s | data wait 515.0 ms/step')
