"""Classification metrics: exact and binned average precision, the paper's confusion matrix, PR.

Average precision (:func:`average_precision`) follows scikit-learn's definition exactly:
``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, without interpolation;
tied scores form one threshold. It is computed for all labels at once with one sort per label
column (64-bit keys: score bits and label bit, packed by a jitted kernel) and one scan over the
sorted keys, accumulated in float64 so that it agrees with scikit-learn to ~1e-12 even on
millions of samples. Accelerators sort and scan on the device (jitted); on the CPU backend the
keys are sorted and scanned with numpy, which beats XLA:CPU's comparison sort and cumulative
scans (``kernels/bench_average_precision.py``).

:func:`average_precision_histograms` and :func:`average_precision_from_histograms` are the
streaming variant: per-label histograms of positive and negative scores over fixed bins, which
add up across batches and devices (``jax.lax.psum`` inside ``shard_map``, or ``+`` on the host).
Binned AP is exactly the AP of the scores quantised to their bins;
:func:`binned_error_bound` bounds its distance to the exact AP from the histograms alone.

:func:`multilabel_confusion` is the confusion rule of Budka et al. (2021), Table 9.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# Average precision, exact.


def _as_2d(y_true, y_score):
  y_true = np.asarray(y_true)
  y_score = np.asarray(y_score)
  if y_true.shape != y_score.shape:
    raise ValueError(f'y_true has shape {y_true.shape} but y_score has shape {y_score.shape}; '
                     'they must match, (num_samples,) or (num_samples, num_labels)')
  if y_true.ndim not in (1, 2):
    raise ValueError(f'expected 1-D or 2-D arrays, got {y_true.ndim}-D of shape {y_true.shape}')
  if y_true.shape[0] == 0:
    raise ValueError('average precision needs at least one sample; got 0 rows')
  squeeze = y_true.ndim == 1
  if squeeze:
    y_true, y_score = y_true[:, None], y_score[:, None]
  if y_true.dtype != bool:
    values = np.unique(y_true)
    if not np.isin(values, (0, 1)).all():
      raise ValueError(f'y_true must be binary (0/1 or bool); found values {values[:10].tolist()}')
    y_true = y_true.astype(bool)
  if not np.issubdtype(y_score.dtype, np.floating):
    y_score = y_score.astype(np.float64)
  bad = ~np.isfinite(y_score)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f'y_score has {int(bad.sum())} non-finite value(s), first at sample {row}, '
                     f'label {col} ({y_score[row, col]}); scores must be finite')
  return y_true, y_score, squeeze


def _descending_key(y_score: jax.Array) -> jax.Array:
  """uint32 keys whose ascending order is the descending order of float32 scores."""
  y_score = jnp.where(y_score == 0, 0.0, y_score)  # -0.0 and 0.0 are one tie group
  bits = jax.lax.bitcast_convert_type(y_score, jnp.uint32)
  ascending = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))
  return ~ascending


@jax.jit
def _packed_keys(y_true: jax.Array, y_score: jax.Array) -> jax.Array:
  """(N, L) inputs -> (L, N) uint64 keys: descending-score bits, then the label bit (x64)."""
  keys = (_descending_key(y_score).astype(jnp.uint64) << 1) | y_true.astype(jnp.uint64)
  return keys.T


@jax.jit
def _ap_from_sorted_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-label (sum_i y_i tp[e(i)] / (e(i) + 1), P) from row-sorted packed keys; under x64."""
  return _ap_from_sorted(keys >> 1, (keys & 1).astype(jnp.int32))


@jax.jit
def _ap_kernel_general(y_true: jax.Array, y_score: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The same for (N, L) float64 scores that float32 cannot hold: a two-operand sort."""
  score_key, y_sorted = jax.lax.sort((-y_score.T, y_true.T.astype(jnp.int32)), dimension=1,
                                     num_keys=1)
  return _ap_from_sorted(score_key, y_sorted)


def _ap_from_sorted(score_key: jax.Array, y_sorted: jax.Array) -> tuple[jax.Array, jax.Array]:
  n = score_key.shape[1]
  tp = jnp.cumsum(y_sorted, axis=1)  # exact integers
  position = jnp.arange(1, n + 1, dtype=jnp.int32)[None, :]
  # Every positive of a tie group gets the precision at the group's end, so AP sums, over
  # group ends j, (positives in the group) * tp[j] / (j + 1). The positives in the group are
  # tp[j] minus tp at the previous group end (a running maximum, as tp never decreases).
  is_end = jnp.concatenate(
      [score_key[:, 1:] != score_key[:, :-1], jnp.ones((score_key.shape[0], 1), bool)], axis=1)
  tp_before = jnp.pad(jax.lax.cummax(jnp.where(is_end, tp, 0), axis=1)[:, :-1],
                      ((0, 0), (1, 0)))
  in_group = (tp - tp_before).astype(jnp.float64)
  contribution = in_group * tp.astype(jnp.float64) / position.astype(jnp.float64)
  return jnp.sum(jnp.where(is_end, contribution, 0.0), axis=1), tp[:, -1]


def _ap_from_sorted_keys_host(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """:func:`_ap_from_sorted_keys` in numpy, for keys already sorted on the host (CPU backend).

  The same sum, visited only at tie-group ends: for each end j of each row, (positives in the
  group) * tp[j] / (j + 1). All rows are handled at once on the flattened array, with every
  row's last position forced to be a group end.
  """
  num_labels, n = keys.shape
  tp = np.cumsum(keys & np.uint64(1), axis=1, dtype=np.int64)
  score = keys >> np.uint64(1)
  is_end = np.ones((num_labels, n), bool)
  np.not_equal(score[:, 1:], score[:, :-1], out=is_end[:, :-1])
  ends = np.flatnonzero(is_end)
  tp_end = tp.reshape(-1)[ends]
  row = ends // n
  tp_before = np.empty_like(tp_end)
  tp_before[0] = 0
  tp_before[1:] = tp_end[:-1]
  tp_before[1:][row[1:] != row[:-1]] = 0  # a row's first group starts from zero
  contribution = (tp_end - tp_before) * (tp_end / (ends % n + 1))
  return np.bincount(row, weights=contribution, minlength=num_labels), tp[:, -1]


def _ap_sums(y_true: np.ndarray, y_score: np.ndarray, host_scan: bool | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """(N, L) inputs -> per-label sums and positive counts, float64/int64 numpy.

  ``host_scan`` (default: on the CPU backend) sorts the keys and scans them with numpy on the
  host; otherwise the device sorts and scans (jitted). Both give the same sums; tests run both.
  """
  if host_scan is None:
    host_scan = jax.default_backend() == 'cpu'
  with jax.enable_x64(True):
    if y_score.dtype != np.float32:
      total, positives = _ap_kernel_general(jnp.asarray(y_true), jnp.asarray(y_score))
    else:
      keys = _packed_keys(jnp.asarray(y_true), jnp.asarray(y_score))
      if host_scan:
        # One sort of 64-bit integer keys per label. XLA:CPU's sort is a scalar comparison
        # sort and its cumulative scans are slow; numpy's sort is vectorised (faster on the same
        # keys: kernels/bench_average_precision.py), and scanning where the keys already are
        # saves a copy back.
        return _ap_from_sorted_keys_host(np.sort(np.asarray(keys), axis=1))
      total, positives = _ap_from_sorted_keys(jax.lax.sort(keys, dimension=1))
    return np.asarray(total), np.asarray(positives)


def average_precision(y_true, y_score, average: str | None = 'macro', *,
                      no_positive: str = 'nan'):
  """Average precision per label, scikit-learn's definition, for all labels at once.

  Args:
    y_true: (N,) or (N, L) binary labels (bool or 0/1).
    y_score: scores of the same shape; higher means more confident. Any finite floats
      (float64 scores keep their precision: ties are decided on the values given).
    average: ``'macro'`` for the mean over labels, ``None`` for the per-label values.
    no_positive: what a label without positive samples gets. ``'nan'`` (default): NaN, and
      it is left out of the macro mean with a warning that says how many were left out.
      ``'zero'``: 0.0 with a warning, included in the mean (scikit-learn's behaviour).

  Returns:
    A float for ``'macro'`` (or for 1-D input), else a (L,) float64 numpy array.

  Raises:
    ValueError: shapes differ, labels are not binary, a score is NaN/Inf, no samples,
      or an unknown ``average`` / ``no_positive``.

  Example:
    >>> average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    0.8333...
  """
  if average not in ('macro', None):
    raise ValueError(f"average must be 'macro' or None, got {average!r}")
  if no_positive not in ('nan', 'zero'):
    raise ValueError(f"no_positive must be 'nan' or 'zero', got {no_positive!r}")
  y_true, y_score, squeeze = _as_2d(y_true, y_score)
  if y_score.dtype != np.float32 and np.array_equal(y_score, y_score.astype(np.float32)):
    y_score = y_score.astype(np.float32)  # no information lost: take the fast path
  total, positives = _ap_sums(y_true, y_score)
  missing = positives == 0
  ap = np.where(missing, np.nan, total / np.maximum(positives, 1))
  if missing.any():
    labels = np.flatnonzero(missing).tolist()
    if no_positive == 'zero':
      ap[missing] = 0.0
      warnings.warn(f'{len(labels)} label(s) {labels} have no positive sample; their average '
                    'precision is set to 0 (no_positive="zero")', UserWarning, stacklevel=2)
    elif average == 'macro' and not squeeze:
      warnings.warn(f'{len(labels)} of {len(ap)} label(s) {labels} have no positive sample and '
                    'are left out of the macro mean', UserWarning, stacklevel=2)
  if squeeze:
    return float(ap[0])
  if average == 'macro':
    return macro_average(ap)
  return ap


def macro_average(per_label_ap) -> float:
  """The macro mean of per-label APs, leaving out labels without positives (NaN).

  The one rule for the macro PRAUC, used by ``average_precision(average='macro')``, by training's
  validation and by the reports; NaN when no label has a positive sample.
  """
  per_label_ap = np.asarray(per_label_ap, np.float64)
  kept = per_label_ap[~np.isnan(per_label_ap)]
  return float(kept.mean()) if kept.size else float('nan')


# --------------------------------------------------------------------------------------------
# Average precision, binned (streaming).


@functools.partial(jax.jit, static_argnames=('num_bins', 'score_range'))
def average_precision_histograms(y_true: jax.Array, y_score: jax.Array, mask: jax.Array | None = None,
                                 *, num_bins: int = 1000,
                                 score_range: tuple[float, float] = (0.0, 1.0)):
  """Per-label histograms of positive and negative scores, to add up across batches and devices.

  Bin ``b`` holds scores in ``[lo + b w, lo + (b+1) w)`` with ``w = (hi - lo) / num_bins``;
  scores outside the range go to the first or last bin. Jit-compiled and pure: inside
  ``shard_map`` sum the results with ``jax.lax.psum``; across batches, add them.

  Args:
    y_true: (B, L) binary labels.
    y_score: (B, L) scores (e.g. sigmoid outputs for the default range [0, 1]).
    mask: optional (B,) bool; False rows (batch padding) are not counted.
    num_bins: number of bins (thresholds).
    score_range: (lo, hi) of the bins.

  Returns:
    (positives, negatives): two (L, num_bins) int32 arrays of counts.
  """
  lo, hi = score_range
  y_true = y_true.astype(bool)
  bins = jnp.clip(jnp.floor((y_score - lo) * (num_bins / (hi - lo))), 0, num_bins - 1)
  bins = bins.astype(jnp.int32)
  weight = jnp.ones(y_true.shape[0], jnp.int32) if mask is None else mask.astype(jnp.int32)
  num_labels = y_true.shape[1]
  # One scatter-add into a flat (class, label, bin) table.
  flat = (y_true.astype(jnp.int32) * num_labels + jnp.arange(num_labels)) * num_bins + bins
  counts = jnp.zeros(2 * num_labels * num_bins, jnp.int32).at[flat.ravel()].add(
      jnp.broadcast_to(weight[:, None], flat.shape).ravel())
  counts = counts.reshape(2, num_labels, num_bins)
  positives, negatives = counts[1], counts[0]
  return positives, negatives


def _histogram_cumulants(positives, negatives):
  # Bins from the highest score down: counts before each bin (T, S) and inside it (p, n).
  pos = np.asarray(positives, np.float64)[:, ::-1]
  neg = np.asarray(negatives, np.float64)[:, ::-1]
  tp_end = np.cumsum(pos, axis=1)
  seen_end = tp_end + np.cumsum(neg, axis=1)
  return pos, neg, tp_end - pos, seen_end - pos - neg, tp_end, seen_end


def average_precision_from_histograms(positives, negatives, average: str | None = 'macro'):
  """Average precision from summed histograms: exact AP of the scores quantised to their bins.

  Each bin acts as one tie group. Labels without positives are NaN and left out of the
  macro mean (as in :func:`average_precision`). See :func:`binned_error_bound`.

  Returns:
    A float for ``'macro'``, else a (L,) float64 array.
  """
  pos, _, _, _, tp_end, seen_end = _histogram_cumulants(positives, negatives)
  total_pos = tp_end[:, -1]
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = np.where(seen_end > 0, tp_end / np.maximum(seen_end, 1), 0.0)
    ap = np.where(total_pos > 0, (pos * precision).sum(axis=1) / total_pos, np.nan)
  if average == 'macro':
    kept = ap[~np.isnan(ap)]
    return float(kept.mean()) if kept.size else float('nan')
  if average is not None:
    raise ValueError(f"average must be 'macro' or None, got {average!r}")
  return ap


def binned_error_bound(positives, negatives) -> np.ndarray:
  """An upper bound on |binned AP - exact AP| per label, from the histograms alone.

  Within a bin with ``T`` positives and ``S`` samples ranked above it, and ``p`` positives and
  ``n`` negatives inside it, the exact precision at any of its positives is some
  ``(T + t) / (S + u)`` with ``1 <= t <= p`` and ``t <= u <= t + n``, so it lies in
  ``[(T + 1) / (S + 1 + n), max((T + 1) / (S + 1), (T + p) / (S + p))]``; the binned precision
  ``(T + p) / (S + p + n)`` lies there too. Hence
  ``|AP_binned - AP| <= (1 / P) sum_bins p (hi - lo)``. The bound is 0 when every bin holds a
  single class and at most one positive, and it shrinks as bins get finer.

  Returns:
    (L,) float64; NaN for labels without positives.
  """
  pos, neg, before_tp, before_seen, tp_end, _ = _histogram_cumulants(positives, negatives)
  total_pos = tp_end[:, -1]
  hi = np.maximum((before_tp + 1) / (before_seen + 1),
                  (before_tp + pos) / np.maximum(before_seen + pos, 1))
  lo = (before_tp + 1) / (before_seen + 1 + neg)
  spread = np.where(pos > 0, pos * (hi - lo), 0.0)
  # A bin with one positive and no negatives has no spread: its one precision is exact.
  spread = np.where((pos <= 1) & (neg == 0), 0.0, spread)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(total_pos > 0, spread.sum(axis=1) / total_pos, np.nan)


# --------------------------------------------------------------------------------------------
# The paper's confusion matrix.


def multilabel_confusion(y_true, y_score) -> np.ndarray:
  """The confusion matrix of Budka et al. (2021), Table 9, summed over images.

  For one image with true set T and scores s, a true descriptor t is *confused* when some
  absent descriptor f has ``s_f > s_t``. Each unconfused t adds 1 to ``M[t, t]``. The confused
  set C shares one unit: each t in C adds ``1/|C|``, split equally over the absent descriptors
  that outrank it, to ``M[t, f]``. Images without any true descriptor add nothing.

  Example (the paper's): labels {D02, D05, D06}, scores D02 .9, D04 .8, D05 .6, D06 .6 give
  ``M[D02, D02] += 1``, ``M[D05, D04] += 1/2``, ``M[D06, D04] += 1/2``.

  Args:
    y_true: (N, L) binary labels.
    y_score: (N, L) finite scores.

  Returns:
    (L, L) float64 matrix, rows true descriptors, columns predicted ones.
  """
  y_true, y_score, squeeze = _as_2d(y_true, y_score)
  if squeeze:
    raise ValueError('multilabel_confusion needs (N, L) arrays with L labels, got 1-D input')
  present = y_true[:, :, None]                 # t
  absent = ~y_true[:, None, :]                 # f
  outranks = present & absent & (y_score[:, None, :] > y_score[:, :, None])  # (N, t, f)
  outrankers = outranks.sum(axis=2)            # (N, t)
  confused = outrankers > 0
  num_confused = confused.sum(axis=1, keepdims=True)  # (N, 1)
  matrix = np.zeros((y_true.shape[1],) * 2, np.float64)
  diagonal = (y_true & ~confused).sum(axis=0)
  matrix[np.diag_indices_from(matrix)] += diagonal
  with np.errstate(invalid='ignore', divide='ignore'):
    share = np.where(confused, 1.0 / (np.maximum(num_confused, 1) * np.maximum(outrankers, 1)), 0)
  matrix += np.einsum('ntf,nt->tf', outranks.astype(np.float64), share)
  return matrix


# --------------------------------------------------------------------------------------------
# Retrieval scores on ranked relevance.


def precision_recall_curve(y_true: np.ndarray, y_score: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall at every distinct score threshold (highest first), ties grouped.

  Args:
    y_true: (N,) 0/1 labels with at least one positive.
    y_score: (N,) scores.

  Returns:
    ``(precision, recall)``, each (T + 1,) with a leading point (precision 1, recall 0) so the
    step curve starts at the top left, like sklearn's curve read backwards.
  """
  y_true = np.asarray(y_true).astype(bool)
  y_score = np.asarray(y_score, np.float64)
  if not y_true.any():
    raise ValueError('a precision-recall curve needs at least one positive')
  order = np.argsort(-y_score, kind='stable')
  scores, hits = y_score[order], y_true[order]
  tp = np.cumsum(hits)
  # The last index of each group of tied scores: one threshold per distinct score.
  ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
  precision = tp[ends] / (ends + 1)
  recall = tp[ends] / tp[-1]
  return np.r_[1.0, precision], np.r_[0.0, recall]
