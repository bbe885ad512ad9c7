"""Timing for the benchmarks: one call on a quiet machine, and contenders timed in turns."""

import statistics
import time

import jax

# A pause before every timed call. OpenBLAS (numpy's, and faiss's) and OpenMP keep their worker
# threads spinning for a while after a call returns; on a 2-core machine they take a core from
# whatever runs next: an XLA one-query product took 72-76 ms right after a faiss or numpy call,
# 54-58 ms after this pause or after another XLA call (so does any call after them).
SETTLE_S = 0.2


def seconds(fn) -> float:
  """Wall time of one call of ``fn``, until its result is ready, started on a quiet machine."""
  time.sleep(SETTLE_S)
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def timed(fn, repeats: int, budget_s: float = 60.0) -> tuple[float, float]:
  """(first call seconds, median of up to ``repeats`` further calls within ``budget_s``)."""
  first = seconds(fn)
  times = []
  for _ in range(repeats):
    times.append(seconds(fn))
    if sum(times) + first > budget_s:  # a slow peer: one or two runs say enough
      break
  return first, statistics.median(times)


def timed_together(fns: dict, repeats: int, budget_s: float = 120.0) -> dict:
  """name -> (first call seconds, median of up to ``repeats`` further calls), the calls taken in
  turns (one of each per round), so that drift on a shared machine (other tenants, a peer's
  threads still spinning) falls on every contender alike."""
  first = {name: seconds(fn) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  start = time.perf_counter()
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(seconds(fn))
    if time.perf_counter() - start > budget_s:
      break
  return {name: (first[name], statistics.median(times[name])) for name in fns}
