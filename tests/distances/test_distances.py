"""fwjax.distances.pairwise against scipy's cdist (float64), the printed 3-D modified distance,
properties (symmetry, zero diagonal), and every documented bad-input outcome."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fwjax import distances

# Float32 expanded forms vs float64 direct forms, features in [0, 1), D <= 300.
TOLERANCES = {  # metric: (rtol, atol)
    'euclidean': (1e-5, 2e-4),
    'sqeuclidean': (1e-5, 1e-3),
    'manhattan': (1e-5, 1e-3),
    'cosine': (1e-4, 2e-6),
    'modified': (1e-4, 2e-6),
}
SCIPY = {'euclidean': 'euclidean', 'sqeuclidean': 'sqeuclidean', 'manhattan': 'cityblock',
         'cosine': 'cosine'}


def modified_reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
  """(t1, t2, t3) of DESIGN.md section 4, n-dimensional, float64, straight from the definition."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  ca, cb = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
  t1 = (np.square(a - b).sum(-1) / (a.sum(-1) * b.sum(-1)))**2
  cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  t2 = (cos - 1)**2
  t3 = (np.square(ca - cb).sum(-1) / (2 * (np.square(ca).sum(-1) + np.square(cb).sum(-1))))**2
  return t1, t2, t3


def reference(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
  if metric == 'modified':
    return sum(modified_reference(q, x))
  return cdist(q.astype(np.float64), x.astype(np.float64), SCIPY[metric])


def printed_modified_3d(a, b) -> tuple[float, float, float]:
  """de Bie 2020's printed formula for 3-vectors, component by component."""
  a1, a2, a3 = a
  b1, b2, b3 = b
  t1 = ((a1 - b1)**2 + (a2 - b2)**2 + (a3 - b3)**2)**2 / ((a1 + a2 + a3) * (b1 + b2 + b3))**2
  cos = (a1 * b1 + a2 * b2 + a3 * b3) / (np.sqrt(a1**2 + a2**2 + a3**2)
                                         * np.sqrt(b1**2 + b2**2 + b3**2))
  t2 = (cos - 1)**2
  # 3 (a_i - mean(a)) = 2 a_i - a_j - a_k: the printed numerator N = 9||ca - cb||^2 and
  # denominator D = 9(||ca||^2 + ||cb||^2), the term read as N^2 / (4 D^2).
  ca = (2 * a1 - a2 - a3, 2 * a2 - a1 - a3, 2 * a3 - a1 - a2)
  cb = (2 * b1 - b2 - b3, 2 * b2 - b1 - b3, 2 * b3 - b1 - b2)
  n = sum((x - y)**2 for x, y in zip(ca, cb))
  d = sum(x**2 for x in ca) + sum(y**2 for y in cb)
  t3 = n**2 / (4 * d**2)
  return t1, t2, t3


@pytest.mark.parametrize('metric', distances.METRICS)
@pytest.mark.parametrize('shape', [(1, 1, 3), (7, 33, 1), (5, 200, 65), (3, 50, 300)])
def test_pairwise_matches_float64_reference(metric, shape):
  num_queries, num_items, dim = shape
  if dim == 1 and metric == 'modified':
    pytest.skip('1-D: both centred vectors are 0, the reference divides 0 by 0 (see constant test)')
  rng = np.random.default_rng(sum(shape))
  q = rng.random((num_queries, dim), dtype=np.float32) + 0.01
  x = rng.random((num_items, dim), dtype=np.float32) + 0.01
  got = np.asarray(distances.pairwise(q, x, metric))
  assert got.shape == (num_queries, num_items) and got.dtype == np.float32
  rtol, atol = TOLERANCES[metric]
  np.testing.assert_allclose(got, reference(q, x, metric), rtol=rtol, atol=atol)


def test_signed_features_match_cdist():
  rng = np.random.default_rng(1)
  q, x = rng.normal(size=(4, 40)).astype(np.float32), rng.normal(size=(60, 40)).astype(np.float32)
  for metric in SCIPY:
    rtol, atol = TOLERANCES[metric]
    np.testing.assert_allclose(np.asarray(distances.pairwise(q, x, metric)),
                               reference(q, x, metric), rtol=rtol, atol=atol)


def test_modified_equals_printed_3d_formula_term_by_term():
  rng = np.random.default_rng(3)
  vectors = rng.random((40, 3)) + 0.05
  a, b = vectors[:20], vectors[20:]
  terms = modified_reference(a, b)
  for i in range(20):
    for j in range(20):
      printed = printed_modified_3d(a[i], b[j])
      for name, general, exact in zip(('t1', 't2', 't3'), terms, printed):
        assert general[i, j] == pytest.approx(exact, rel=1e-9, abs=1e-15), (name, i, j)
  got = np.asarray(distances.pairwise(a.astype(np.float32), b.astype(np.float32), 'modified'))
  np.testing.assert_allclose(got, sum(terms), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('metric', distances.METRICS)
def test_symmetric_with_zero_diagonal(metric):
  rng = np.random.default_rng(4)
  x = rng.random((40, 64), dtype=np.float32) + 0.01
  d = np.asarray(distances.pairwise(x, x, metric))
  scale = max(float(np.abs(d).max()), 1e-6)
  np.testing.assert_allclose(d, d.T, atol=1e-5 * scale)
  # expanded forms cancel on the diagonal: tiny, non-negative, never NaN
  assert np.all(d >= 0) and np.all(np.isfinite(d))
  assert np.abs(np.diag(d)).max() <= {'euclidean': 3e-3}.get(metric, 1e-5) * max(scale, 1)


def test_modified_of_two_constant_vectors_has_no_third_term():
  # Both centred vectors are zero: t3 is 0/0 and defined as 0, so the distance is t1 + t2.
  q, x = np.full((1, 4), 2.0, np.float32), np.full((1, 4), 3.0, np.float32)
  t1 = (4 * 1.0 / (8 * 12))**2
  assert float(distances.pairwise(q, x, 'modified')[0, 0]) == pytest.approx(t1, rel=1e-5)


def test_other_dtypes_and_jax_arrays_are_accepted():
  import jax.numpy as jnp
  rng = np.random.default_rng(5)
  q, x = rng.random((2, 8)), rng.integers(1, 5, (9, 8))
  want = reference(q.astype(np.float32), x.astype(np.float32), 'euclidean')
  for items in (x, jnp.asarray(x, jnp.float32)):
    np.testing.assert_allclose(np.asarray(distances.pairwise(q, items)), want, rtol=1e-5,
                               atol=1e-4)


def _row(value, dim=4, fill=1.0):
  row = np.full(dim, fill, np.float32)
  row[1] = value
  return row


BAD_INPUTS = [
    # (queries, items, kwargs, message)
    (np.ones((2, 3)), np.ones((4, 5)), {}, 'queries have 3 features but items have 5'),
    (np.ones((0, 3)), np.ones((4, 3)), {}, 'queries: empty'),
    (np.ones((2, 3)), np.ones((0, 3)), {}, 'items: empty'),
    (np.ones((2, 0)), np.ones((4, 0)), {}, 'items: empty'),
    (np.ones(3), np.ones((4, 3)), {}, r'pairwise takes \(Q, D\)'),
    (np.ones((2, 3)), np.ones((2, 2, 3)), {}, r'items: expected a \(N, D\) array'),
    (np.ones((2, 3)), np.ones((4, 3)), {'metric': 'chebyshev'}, "unknown metric 'chebyshev'"),
    (np.stack([_row(1), _row(np.nan)]), np.ones((3, 4)), {}, 'queries row 1 has a NaN or Inf'),
    (np.ones((2, 4)), np.stack([_row(1), _row(1), _row(np.inf)]), {}, 'items row 2 has a NaN'),
    (np.ones((2, 4)), np.stack([_row(1), _row(3e30)]), {}, 'items row 1 .*overflows'),
    (np.zeros((1, 4)), np.ones((3, 4)), {'metric': 'cosine'}, 'queries row 0 is a zero vector'),
    (np.ones((1, 4)), np.stack([_row(1), _row(0, fill=0)]), {'metric': 'modified'},
     'items row 1 is a zero vector'),
    (np.ones((1, 4)), np.stack([_row(-5)]), {'metric': 'modified'},
     'items row 0 has a feature sum <= 0'),
    (np.stack([_row(1), _row(-3)]), np.ones((2, 4)), {'metric': 'modified'},
     'queries row 1 has a feature sum <= 0'),
]


@pytest.mark.parametrize('queries, items, kwargs, message', BAD_INPUTS)
def test_bad_input_raises_naming_the_problem(queries, items, kwargs, message):
  with pytest.raises(ValueError, match=message):
    distances.pairwise(queries, items, **kwargs)


@pytest.mark.parametrize('metric', ['euclidean', 'sqeuclidean', 'manhattan'])
def test_zero_vectors_are_fine_where_defined(metric):
  x = np.stack([np.zeros(4, np.float32), np.ones(4, np.float32)])
  d = np.asarray(distances.pairwise(x, x, metric))
  assert np.all(np.isfinite(d)) and d[0, 0] == 0 and d[0, 1] > 0


def test_negative_features_are_fine_for_modified_when_sums_are_positive():
  q = np.array([[2.0, -1.0, 3.0]], np.float32)
  x = np.array([[1.0, 2.0, -0.5], [4.0, 0.5, 1.0]], np.float32)
  np.testing.assert_allclose(np.asarray(distances.pairwise(q, x, 'modified')),
                             reference(q, x, 'modified'), rtol=1e-4)
