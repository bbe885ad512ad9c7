"""fwjax.metrics against scikit-learn, hand-computed examples and properties that must hold."""

import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sk_curve

from fwjax import descriptors, metrics
from fwjax.metrics import classification


def _sklearn_per_label(y, s):
  out = []
  for j in range(y.shape[1]):
    if y[:, j].any():
      out.append(average_precision_score(y[:, j], s[:, j]))
    else:
      out.append(np.nan)
  return np.array(out)


@pytest.mark.parametrize('n', [1, 2, 7, 100, 5000])
@pytest.mark.parametrize('decimals', [0, 1, 2, None])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_matches_sklearn_with_many_ties(n, decimals, dtype):
  rng = np.random.default_rng(n * 10 + (decimals or 7))
  y = rng.random((n, 6)) < 0.3
  y[:, 0] = True          # all positive
  y[:, 1] = False         # all negative
  s = rng.normal(size=(n, 6))
  if decimals is not None:
    s = np.round(s, decimals)
  s = s.astype(dtype)
  got = metrics.average_precision(y, s, average=None)
  np.testing.assert_allclose(got, _sklearn_per_label(y, s), rtol=0, atol=1e-12)
  assert got[0] == 1.0 and np.isnan(got[1])


@pytest.mark.parametrize('n', [1, 2, 7, 100, 5000])
@pytest.mark.parametrize('decimals', [0, 2, None])
def test_host_and_device_scans_agree_with_sklearn(n, decimals):
  """The CPU backend scans sorted keys with numpy, accelerators on the device: both exact."""
  rng = np.random.default_rng(n + 3 * (decimals or 5))
  y = rng.random((n, 5)) < 0.3
  y[:, 0] = False
  s = rng.normal(size=(n, 5))
  s = (s if decimals is None else np.round(s, decimals)).astype(np.float32)
  host, host_pos = classification._ap_sums(y, s, host_scan=True)
  device, device_pos = classification._ap_sums(y, s, host_scan=False)
  np.testing.assert_array_equal(host_pos, y.sum(axis=0))
  np.testing.assert_array_equal(device_pos, y.sum(axis=0))
  expected = np.nan_to_num(_sklearn_per_label(y, s)[1:]) * y.sum(axis=0)[1:]  # no positive: 0
  np.testing.assert_allclose(host[1:], expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(device[1:], expected, rtol=1e-12, atol=1e-12)
  assert host[0] == device[0] == 0


def test_macro_leaves_out_labels_without_positives_and_says_so():
  rng = np.random.default_rng(0)
  y = rng.random((200, 5)) < 0.4
  y[:, 3] = False
  s = rng.random((200, 5))
  with pytest.warns(UserWarning, match=r'1 of 5 label\(s\) \[3\] have no positive'):
    macro = metrics.average_precision(y, s)
  assert macro == pytest.approx(np.nanmean(_sklearn_per_label(y, s)), abs=1e-12)


def test_zero_option_reproduces_sklearn_macro():
  rng = np.random.default_rng(1)
  y = rng.random((300, 4)) < 0.5
  y[:, 2] = False
  s = rng.random((300, 4))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    expected = average_precision_score(y, s, average='macro')
  with pytest.warns(UserWarning, match='set to 0'):
    got = metrics.average_precision(y, s, no_positive='zero')
  assert got == pytest.approx(expected, abs=1e-12)


def test_one_dimensional_input_and_docstring_example():
  assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(
      (1 + 2 / 3) / 2)


def test_negative_zero_ties_with_zero():
  y = np.array([1, 0, 1])
  s = np.array([0.0, -0.0, 0.5], np.float32)
  assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s))


@pytest.mark.parametrize('bad, message', [
    (dict(y_true=np.ones((3, 2)), y_score=np.ones((3, 3))), 'shape'),
    (dict(y_true=np.full((3, 2), 2), y_score=np.ones((3, 2))), 'binary'),
    (dict(y_true=np.ones((3, 2)), y_score=np.array([[0, 1], [np.nan, 0], [1, 1]])),
     'sample 1, label 0'),
    (dict(y_true=np.ones((0, 2)), y_score=np.ones((0, 2))), 'at least one sample'),
])
def test_bad_input_is_named(bad, message):
  with pytest.raises(ValueError, match=message):
    metrics.average_precision(**bad)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 9, 40]), st.integers(0, 2**31 - 1))  # few shapes: few compiles
def test_invariant_to_sample_permutation_and_increasing_transforms(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.random((n, 3)) < 0.5
  s = np.round(rng.normal(size=(n, 3)), 1)
  base = metrics.average_precision(y, s, average=None)
  perm = rng.permutation(n)
  np.testing.assert_allclose(metrics.average_precision(y[perm], s[perm], average=None), base,
                             atol=1e-12)
  transformed = np.exp(2 * s) + 3      # strictly increasing
  np.testing.assert_allclose(metrics.average_precision(y, transformed, average=None), base,
                             atol=1e-12)


# ---------------------------------------------------------------------------- binned variant


def test_binned_is_exact_when_each_bin_holds_one_distinct_score():
  rng = np.random.default_rng(2)
  y = rng.random((500, 4)) < 0.3
  s = (rng.integers(0, 50, size=(500, 4)) + 0.5) / 50   # 50 distinct values, one per bin
  pos, neg = metrics.average_precision_histograms(y, s, num_bins=50)
  np.testing.assert_allclose(metrics.average_precision_from_histograms(pos, neg, average=None),
                             metrics.average_precision(y, s, average=None), atol=1e-12)


@pytest.mark.parametrize('num_bins', [10, 100, 1000])
def test_binned_error_within_its_stated_bound(num_bins):
  rng = np.random.default_rng(num_bins)
  y = rng.random((4000, 5)) < 0.2
  s = 1 / (1 + np.exp(-(rng.normal(size=(4000, 5)) + 1.5 * y)))
  pos, neg = metrics.average_precision_histograms(y, s.astype(np.float32), num_bins=num_bins)
  binned = metrics.average_precision_from_histograms(pos, neg, average=None)
  exact = metrics.average_precision(y, s, average=None)
  bound = metrics.binned_error_bound(pos, neg)
  assert np.all(np.abs(binned - exact) <= bound + 1e-12)
  assert np.all(bound < 0.5)


def test_histograms_add_up_across_devices_and_batches():
  rng = np.random.default_rng(3)
  y = rng.random((64, 3)) < 0.4
  s = rng.random((64, 3)).astype(np.float32)
  mask = np.ones(64, bool)
  mask[-5:] = False  # padding rows are not counted
  whole = metrics.average_precision_histograms(y[:-5], s[:-5], num_bins=20)

  mesh = jax.make_mesh((4,), ('data',))
  spec = jax.sharding.PartitionSpec('data')

  def per_device(y, s, mask):
    pos, neg = metrics.average_precision_histograms(y, s, mask, num_bins=20)
    return jax.lax.psum(pos, 'data'), jax.lax.psum(neg, 'data')

  sharding = jax.sharding.NamedSharding(mesh, spec)
  args = [jax.device_put(a, sharding) for a in (y, s, mask)]
  summed = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, spec),
                                 out_specs=jax.sharding.PartitionSpec()))(*args)
  for a, b in zip(summed, whole):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  halves = [metrics.average_precision_histograms(y[i:i + 32], s[i:i + 32], mask[i:i + 32],
                                                 num_bins=20) for i in (0, 32)]
  np.testing.assert_array_equal(np.asarray(halves[0][0] + halves[1][0]), np.asarray(whole[0]))


# ---------------------------------------------------------------------------- confusion rule


def _confusion_reference(y, s):
  """The paper's rule, written out image by image."""
  num = y.shape[1]
  m = np.zeros((num, num))
  for labels, scores in zip(y, s):
    true = np.flatnonzero(labels)
    absent = np.flatnonzero(~labels)
    outrank = {t: [f for f in absent if scores[f] > scores[t]] for t in true}
    confused = [t for t in true if outrank[t]]
    for t in true:
      if not outrank[t]:
        m[t, t] += 1
      else:
        for f in outrank[t]:
          m[t, f] += 1 / len(confused) / len(outrank[t])
  return m


def test_confusion_paper_example():
  codes = descriptors.INDEX
  y = descriptors.encode(('D02', 'D05', 'D06'))[None].astype(bool)
  s = np.zeros((1, 17))
  for code, score in {'D02': .9, 'D04': .8, 'D05': .6, 'D06': .6}.items():
    s[0, codes[code]] = score
  m = metrics.multilabel_confusion(y, s)
  expected = np.zeros((17, 17))
  expected[codes['D02'], codes['D02']] = 1
  expected[codes['D05'], codes['D04']] = 0.5
  expected[codes['D06'], codes['D04']] = 0.5
  np.testing.assert_array_equal(m, expected)


def test_confusion_matches_the_rule_written_out():
  rng = np.random.default_rng(4)
  y = rng.random((300, 8)) < 0.3
  s = np.round(rng.random((300, 8)), 1)
  m = metrics.multilabel_confusion(y, s)
  np.testing.assert_allclose(m, _confusion_reference(y, s), atol=1e-12)
  # Each image adds one unit per unconfused true descriptor plus one unit for its confused set.
  outranked = [(s_i[~y_i][None, :] > s_i[y_i][:, None]).any(axis=1) for y_i, s_i in zip(y, s)]
  units = sum((~o).sum() + (1 if o.any() else 0) for o in outranked)
  assert m.sum() == pytest.approx(units)


# ---------------------------------------------------------------------------- retrieval


def test_retrieval_scores_by_hand():
  # 10 items; relevant at ranks 2, 5 and 9 (1-based).
  rel = np.zeros((1, 10), bool)
  rel[0, [1, 4, 8]] = True
  assert metrics.precision_at_k(rel, 1)[0] == 0
  assert metrics.precision_at_k(rel, 5)[0] == pytest.approx(2 / 5)
  assert metrics.inverse_recall_at_q(rel, 0.0)[0] == 0
  assert metrics.inverse_recall_at_q(rel, 1 / 3)[0] == pytest.approx(2 / 10)
  assert metrics.inverse_recall_at_q(rel, 0.5)[0] == pytest.approx(5 / 10)   # ceil(1.5) = 2
  assert metrics.inverse_recall_at_q(rel, 1.0)[0] == pytest.approx(9 / 10)
  assert metrics.auirc(rel)[0] == pytest.approx((2 + 5 + 9) / 3 / 10)
  assert metrics.first_relevant_rank(rel)[0] == 2


def test_auirc_is_the_area_under_the_inverse_recall_step_curve():
  rng = np.random.default_rng(5)
  rel = rng.random((6, 40)) < 0.2
  rel[:, -1] = True
  q = (np.arange(200_000) + 0.5) / 200_000
  ir = np.stack([metrics.inverse_recall_at_q(rel, qq) for qq in q[::1000]], axis=1)
  riemann = ir.mean(axis=1)
  np.testing.assert_allclose(metrics.auirc(rel), riemann, atol=0.01)


def test_inverse_recall_does_not_trip_on_floating_point_dust():
  rel = np.zeros((1, 100), bool)
  rel[0, np.arange(10) * 10] = True        # 10 relevant items
  # 0.1 * 10 is 1.0000000000000002 in floating point; ceil must still give 1 item.
  assert metrics.inverse_recall_at_q(rel, 0.1)[0] == pytest.approx(1 / 100)


def test_cmc_thresholds_are_ceil_of_percent_of_n():
  rel = np.zeros((4, 1175), bool)
  for row, first in enumerate([1, 12, 13, 59]):
    rel[row, first - 1] = True
  # ceil(1% of 1175) = 12, ceil(5%) = 59.
  assert metrics.cmc(rel, (1, 5)) == {1: 0.5, 5: 1.0}
  assert metrics.ceil_share(1, 1175) == 12


def test_relevance_from_order_and_queries_without_relevant_items():
  order = np.array([[2, 0, 1], [1, 2, 0]])
  rel = metrics.relevance_from_order(order, np.array([7, 9]), np.array([7, 9, 7]))
  np.testing.assert_array_equal(rel, [[True, True, False], [True, False, False]])
  with pytest.raises(ValueError, match=r'query row\(s\) \[1\] have none'):
    metrics.cmc(np.array([[True, False], [False, False]]))
  with pytest.raises(ValueError, match='k must be in 1..2'):
    metrics.precision_at_k(rel[:, :2], 3)


def test_cmc_curve_counts_one_based_ranks_and_agrees_with_cmc():
  ranks = np.array([1, 4, 4, 10, 0])  # the last query has no match in the ranking
  percent, fraction = metrics.cmc_curve(ranks, num_items=10)
  np.testing.assert_allclose(percent, np.arange(1, 11) * 10.0)
  expected = [np.mean((ranks >= 1) & (ranks <= n)) for n in range(1, 11)]
  np.testing.assert_allclose(fraction, expected)
  at = metrics.cmc_from_first_ranks(ranks, 10, percents=(10, 40, 100))
  for p, value in at.items():
    assert fraction[metrics.ceil_share(p, 10) - 1] == value


def test_precision_recall_curve_matches_sklearn():
  rng = np.random.default_rng(0)
  y = rng.random(200) < 0.3
  scores = np.round(rng.random(200), 1)  # many ties
  precision, recall = metrics.precision_recall_curve(y, scores)
  sk_precision, sk_recall, _ = sk_curve(y, scores)
  # sklearn lists thresholds from low to high and ends with (precision 1, recall 0).
  np.testing.assert_allclose(precision, sk_precision[::-1])
  np.testing.assert_allclose(recall, sk_recall[::-1])
  # AP is the area under this step curve.
  np.testing.assert_allclose(np.sum(np.diff(recall) * precision[1:]),
                             average_precision_score(y, scores))
