"""metrics.auirc: the exact area against an independent fine Riemann sum of inverse recall, its
steps closed on the right, its range, and the job's 100-sample curve against it."""

import itertools

import numpy as np
import pytest

from fwjax import metrics


def _random_rankings(seed, queries=8, items=60):
  rng = np.random.default_rng(seed)
  relevance = rng.random((queries, items)) < rng.uniform(0.03, 0.4, (queries, 1))
  relevance[np.arange(queries), rng.integers(0, items, queries)] = True  # >= 1 relevant each
  return relevance


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_exact_area_is_the_limit_of_a_fine_riemann_sum(seed):
  relevance = _random_rankings(seed)
  # Midpoints of 20,000 equal steps of q: a step function with R jumps of total height <= 1 is
  # off by at most half a step (2.5e-5) per unit of jump.
  steps = 20_000
  q = (np.arange(steps) + 0.5) / steps
  riemann = sum(metrics.inverse_recall_at_q(relevance, level) for level in q) / steps
  np.testing.assert_allclose(metrics.auirc(relevance), riemann, rtol=0, atol=1e-4)


def test_each_step_is_closed_on_the_right():
  relevance = np.zeros((1, 10), bool)
  relevance[0, [1, 4, 8]] = True  # ranks 2, 5, 9; R = 3
  for j, rank in enumerate((2, 5, 9), start=1):
    # On ((j-1)/R, j/R] the curve is r_j / N: the level j/R itself still needs only j items.
    assert metrics.inverse_recall_at_q(relevance, j / 3)[0] == pytest.approx(rank / 10)
    assert metrics.inverse_recall_at_q(relevance, (j - 0.5) / 3)[0] == pytest.approx(rank / 10)
  assert metrics.inverse_recall_at_q(relevance, 1 / 3 + 1e-6)[0] == pytest.approx(5 / 10)
  assert metrics.auirc(relevance)[0] == pytest.approx((2 + 5 + 9) / 3 / 10)


def test_range_perfect_worst_and_random():
  n, r = 7, 3
  placements = list(itertools.combinations(range(n), r))
  relevance = np.zeros((len(placements), n), bool)
  for row, ranks in enumerate(placements):
    relevance[row, list(ranks)] = True
  scores = metrics.auirc(relevance)
  assert scores.min() == pytest.approx((r + 1) / (2 * n))          # relevant first
  assert scores.max() == pytest.approx(1 - (r - 1) / (2 * n))      # relevant last
  # Every placement equally likely (a random ranking): the mean is exactly (N + 1) / (2N).
  assert scores.mean() == pytest.approx((n + 1) / (2 * n))
  # On a percent axis (the thesis's plots) the area is 100 times larger.
  assert 100 * scores.min() == pytest.approx(100 * 4 / 14)


def test_the_jobs_hundred_samples_bound_the_area_from_above():
  relevance = _random_rankings(7, queries=12, items=250)
  levels = np.linspace(0.01, 1.0, 100)  # what the job's inverse_recall.png plots
  samples = np.stack([metrics.inverse_recall_at_q(relevance, q) for q in levels], axis=1)
  exact = metrics.auirc(relevance)
  rise = metrics.inverse_recall_at_q(relevance, 1.0) - metrics.inverse_recall_at_q(relevance, 0.0)
  assert (samples.mean(axis=1) >= exact - 1e-12).all()
  assert (samples.mean(axis=1) <= exact + 0.01 * rise + 1e-12).all()
