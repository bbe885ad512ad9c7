"""Retrieval scores of ranked collections: precision@k, inverse recall, AUIRC, CMC.

Scores take ``relevance``, a (Q, N) boolean array in ranked order: ``relevance[q, r]`` says
whether the item at rank ``r`` (0-based) is relevant to query ``q``. Ranks reported to people
(:func:`first_relevant_rank`, the CMC) count from 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _relevance(relevance) -> np.ndarray:
  relevance = np.asarray(relevance)
  if relevance.ndim == 1:
    relevance = relevance[None]
  if relevance.ndim != 2 or relevance.shape[1] == 0:
    raise ValueError(f'relevance must be (num_queries, num_items) with items, got shape '
                     f'{relevance.shape}')
  return relevance.astype(bool)


def _require_relevant(relevance: np.ndarray, what: str) -> np.ndarray:
  counts = relevance.sum(axis=1)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f'{what} needs at least one relevant item per query; query row(s) '
                     f'{empty[:10].tolist()} have none (check the ground truth)')
  return counts


def _ceil(x) -> np.ndarray:
  # ceil that ignores floating-point dust: ceil(0.1 * 10) must be 1, not 2.
  return np.ceil(np.round(np.asarray(x, np.float64), 9)).astype(np.int64)


def precision_at_k(relevance, k: int) -> np.ndarray:
  """Share of relevant items among the first ``k`` of each ranking: (Q,) float64."""
  relevance = _relevance(relevance)
  if not 1 <= k <= relevance.shape[1]:
    raise ValueError(f'k must be in 1..{relevance.shape[1]} (the number of ranked items), got {k}')
  return relevance[:, :k].sum(axis=1) / k


def relevant_positions(relevance) -> list[np.ndarray]:
  """The 1-based ranks of the relevant items of each query."""
  relevance = _relevance(relevance)
  return [np.flatnonzero(row) + 1 for row in relevance]


def inverse_recall_at_q(relevance, q: float) -> np.ndarray:
  """Fraction of the collection to inspect to find a share ``q`` of the relevant items.

  ``(rank at which ceil(q R) relevant items have been seen) / N`` for each query with R
  relevant items among N; ``q = 0`` gives 0. Lower is better.

  Raises:
    ValueError: q outside [0, 1], or a query without relevant items.
  """
  relevance = _relevance(relevance)
  if not 0.0 <= q <= 1.0:
    raise ValueError(f'q must be in [0, 1], got {q}')
  counts = _require_relevant(relevance, 'inverse_recall_at_q')
  needed = _ceil(q * counts)
  found = np.cumsum(relevance, axis=1)
  # First rank r (1-based) with found >= needed; 0 when nothing is needed.
  ranks = np.where(needed > 0, np.argmax(found >= needed[:, None], axis=1) + 1, 0)
  return ranks / relevance.shape[1]


def auirc(relevance) -> np.ndarray:
  """Area under the inverse-recall curve, exactly, for each query: (Q,) float64.

  The curve is ``q -> inverse_recall_at_q(relevance, q)`` for q in [0, 1], with the share of the
  collection inspected (in [0, 1]) on the y axis. It is a step function: with ``r_j`` the 1-based
  rank of the j-th relevant item of R, it equals ``r_j / N`` on ``((j-1)/R, j/R]``. Each step is
  closed at its right end (``ceil(q R) = j`` at ``q = j/R``), so the curve is left-continuous and
  jumps just after each recall level j/R; single points carry no area, so the exact area is the
  sum of the R steps, ``sum_j (1/R) r_j / N = mean_j(r_j) / N``, the mean rank of the relevant
  items over N. No sampling or interpolation is involved.

  Range: lower is better; a perfect ranking (relevant items at ranks 1..R) scores
  ``(R + 1) / (2 N)``, a random one ``(N + 1) / (2 N)`` in expectation (about 1/2), the worst
  (relevant items last) ``1 - (R - 1) / (2 N)``.

  Other scales: where the curve is drawn with the share of the collection in percent (as the
  thesis plots inverse recall), the area is 100 times this value. The similarity job's
  ``inverse_recall.png`` plots the mean curve sampled at q = 0.01, 0.02, ..., 1.00; the mean of
  those 100 samples is a right Riemann sum of a non-decreasing curve, so it lies between this
  exact area and the area plus ``0.01 x (curve(1) - curve(0))``, at most 0.01 above it.
  """
  relevance = _relevance(relevance)
  counts = _require_relevant(relevance, 'auirc')
  ranks = np.arange(1, relevance.shape[1] + 1)
  return (relevance * ranks).sum(axis=1) / counts / relevance.shape[1]


def first_relevant_rank(relevance) -> np.ndarray:
  """The 1-based rank of the first relevant item of each query: (Q,) int64."""
  relevance = _relevance(relevance)
  _require_relevant(relevance, 'first_relevant_rank')
  return np.argmax(relevance, axis=1) + 1


def cmc(relevance, percents: Sequence[float] = (1, 5, 10, 15, 20)) -> dict[float, float]:
  """Cumulative match characteristic at top p% of the collection.

  The share of queries whose first relevant item lies within the top ``ceil(p/100 * N)``.

  Returns:
    ``{p: fraction of queries}`` for each p in ``percents``.
  """
  relevance = _relevance(relevance)
  first = first_relevant_rank(relevance)
  return cmc_from_first_ranks(first, relevance.shape[1], percents)


def cmc_from_first_ranks(first_ranks, num_items: int,
                         percents: Sequence[float] = (1, 5, 10, 15, 20)) -> dict[float, float]:
  """:func:`cmc` from the 1-based ranks of each query's first relevant item (memory-light).

  A rank of 0 (or anything outside 1..N) means the query has no relevant item in the ranking: it
  counts as a query that is never matched, as in :func:`cmc_curve`.
  """
  first_ranks = np.asarray(first_ranks)
  if first_ranks.size == 0:
    raise ValueError('cmc needs at least one query')
  result = {}
  for p in percents:
    if not 0 < p <= 100:
      raise ValueError(f'percent must be in (0, 100], got {p}')
    threshold = int(_ceil(p / 100 * num_items))
    result[p] = float(np.mean((first_ranks >= 1) & (first_ranks <= threshold)))
  return result


def cmc_curve(first_ranks, num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """The whole CMC curve: (percent of the collection, share of queries matched).

  Args:
    first_ranks: (Q,) 1-based rank of each query's first relevant item, as
      :func:`first_relevant_rank` returns it; 0 (or anything outside 1..N) for a query with no
      relevant item in the ranking, which then never counts as matched.
    num_items: N, the collection size.

  Returns:
    ``(percent, fraction)`` with percent ``100 * n / N`` for n = 1..N and fraction the share of
    queries whose first relevant item is within the top n (so ``fraction`` at
    ``ceil_share(p, N)`` equals :func:`cmc_from_first_ranks` at p).
  """
  ranks = np.asarray(first_ranks)
  found = ranks[(ranks >= 1) & (ranks <= num_items)] - 1
  counts = np.bincount(found, minlength=num_items)[:num_items]
  fraction = np.cumsum(counts) / max(len(ranks), 1)
  percent = 100.0 * np.arange(1, num_items + 1) / num_items
  return percent, fraction


def relevance_from_order(order, query_labels, item_labels) -> np.ndarray:
  """(Q, N) relevance in ranked order: ``item_labels[order[q, r]] == query_labels[q]``."""
  order = np.asarray(order)
  item_labels = np.asarray(item_labels)
  query_labels = np.asarray(query_labels)
  if order.ndim != 2 or order.shape[0] != query_labels.shape[0]:
    raise ValueError(f'order must be (Q, N) with Q = len(query_labels) = {query_labels.shape[0]}, '
                     f'got {order.shape}')
  return item_labels[order] == query_labels[:, None]


def ceil_share(p: float, n: int) -> int:
  """``ceil(p/100 * n)`` without floating-point dust (the CMC threshold)."""
  return int(_ceil(p / 100 * n)) if n else 0


def retrieval_scores(relevance, precision_at: Sequence[int] = (1, 5, 10),
                     recall_levels: Sequence[float] = (0.5, 1.0),
                     percents: Sequence[float] = (1, 5, 10, 15, 20)
                     ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Every retrieval score of rankings with known ground truth (what the similarity job stores).

  Args:
    relevance: (Q, N) bool, ``relevance[q, r]`` = the item at rank r is relevant to query q;
      every query has at least one relevant item.
    precision_at: k values for precision@k (those above N are left out; the similarity job
      says which, on the console and in summary.json's ``left_out``).
    recall_levels: q values for inverse recall@q.
    percents: CMC thresholds in percent of N (ceil(p% of N) items).

  Returns:
    ``(per_query, aggregated)``: per_query maps a score name to a (Q,) array; aggregated maps
    score names to the mean over queries, and ``cmc@p`` to the CMC fractions.
  """
  num_items = relevance.shape[1]
  per_query = {}
  for k in precision_at:
    if k <= num_items:
      per_query[f'precision@{k}'] = np.asarray(precision_at_k(relevance, k))
  for q in recall_levels:
    per_query[f'inverse_recall@{q:g}'] = np.asarray(inverse_recall_at_q(relevance, q))
  per_query['auirc'] = np.asarray(auirc(relevance))
  per_query['first_match_rank'] = first_relevant_rank(relevance).astype(np.float64)
  aggregated = {name: float(np.mean(values)) for name, values in per_query.items()}
  for percent, fraction in cmc(relevance, percents=tuple(percents)).items():
    aggregated[f'cmc@{percent:g}'] = float(fraction)
  return per_query, aggregated
