"""Peer implementations of the fwjax.distances metrics, for benchmarks and cross-checks.

* ``numpy_distances``: the obvious float64 implementation from differences (every metric,
  including ``modified``); slow, for checking.
* ``scipy_distances``: ``scipy.spatial.distance.cdist``.
* ``sklearn_distances``: ``sklearn.metrics.pairwise_distances`` (its BLAS euclidean/cosine and
  its manhattan).
* ``FaissFlat``: faiss-cpu brute force, ``IndexFlatL2`` (euclidean, squared then rooted),
  ``IndexFlatIP`` on L2-normalised vectors (cosine = 1 - inner product) and
  ``IndexFlat(METRIC_L1)`` (manhattan); ``search`` for the top k, ``pairwise`` for every distance.

Peers that cannot be imported (faiss on a GPU machine) are reported by ``available()``.
"""

import numpy as np

try:
  import faiss  # pylint: disable=g-import-not-at-top
except ImportError:
  faiss = None
try:
  from scipy.spatial import distance as scipy_distance  # pylint: disable=g-import-not-at-top
except ImportError:
  scipy_distance = None
try:
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top
except ImportError:
  sklearn_metrics = None

SCIPY_METRICS = {'euclidean': 'euclidean', 'sqeuclidean': 'sqeuclidean',
                 'manhattan': 'cityblock', 'cosine': 'cosine'}
SKLEARN_METRICS = {'euclidean': 'euclidean', 'manhattan': 'manhattan', 'cosine': 'cosine'}
FAISS_METRICS = ('euclidean', 'cosine', 'manhattan')


def available() -> dict[str, bool]:
  """Which peers can run here."""
  return {'faiss': faiss is not None, 'scipy': scipy_distance is not None,
          'sklearn': sklearn_metrics is not None}


def numpy_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
  """(Q, N) float64 distances from differences, one query row at a time (bounded memory)."""
  q, x = np.asarray(q, np.float64), np.asarray(x, np.float64)
  out = np.empty((len(q), len(x)))
  x_norm = np.linalg.norm(x, axis=1)
  x_centred = x - x.mean(axis=1, keepdims=True)
  for i, a in enumerate(q):
    diff = x - a
    if metric == 'manhattan':
      out[i] = np.abs(diff).sum(axis=1)
      continue
    sq = np.einsum('nd,nd->n', diff, diff)
    if metric in ('euclidean', 'sqeuclidean'):
      out[i] = np.sqrt(sq) if metric == 'euclidean' else sq
      continue
    cos = (x @ a) / (x_norm * np.linalg.norm(a))
    if metric == 'cosine':
      out[i] = 1.0 - cos
      continue
    ca = a - a.mean()
    t1 = np.square(sq / (a.sum() * x.sum(axis=1)))
    num = np.square(x_centred - ca).sum(axis=1)
    den = 2.0 * (np.square(ca).sum() + np.square(x_centred).sum(axis=1))
    t3 = np.square(np.divide(num, den, out=np.zeros_like(num), where=den > 0))
    out[i] = t1 + np.square(cos - 1.0) + t3
  return out


def scipy_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
  """``cdist`` (float64 inside)."""
  return scipy_distance.cdist(q, x, SCIPY_METRICS[metric])


def sklearn_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
  """``pairwise_distances`` with sklearn's own euclidean, cosine and manhattan."""
  return sklearn_metrics.pairwise_distances(q, x, metric=SKLEARN_METRICS[metric])


class FaissFlat:
  """Brute-force faiss index for one metric over float32 items (built once, like a collection)."""

  def __init__(self, items: np.ndarray, metric: str):
    if faiss is None:
      raise ImportError('faiss is not installed')
    if metric not in FAISS_METRICS:
      raise ValueError(f'faiss has no {metric!r} index; it has {FAISS_METRICS}')
    self.metric = metric
    items = np.ascontiguousarray(items, np.float32)
    dim = items.shape[1]
    if metric == 'euclidean':
      self.index = faiss.IndexFlatL2(dim)
    elif metric == 'cosine':
      items = items / np.linalg.norm(items, axis=1, keepdims=True)
      self.index = faiss.IndexFlatIP(dim)
    else:
      self.index = faiss.IndexFlat(dim, faiss.METRIC_L1)
    self.index.add(items)
    self._items = items  # faiss.pairwise_distances needs the (normalised) vectors

  def _prepare(self, q: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(q, np.float32)
    if self.metric == 'cosine':
      q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q

  def _finish(self, d: np.ndarray) -> np.ndarray:
    if self.metric == 'euclidean':
      return np.sqrt(np.maximum(d, 0))
    if self.metric == 'cosine':
      return 1.0 - d
    return d

  def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the k nearest items, ascending distance."""
    d, i = self.index.search(self._prepare(q), k)
    return self._finish(d), i

  def pairwise(self, q: np.ndarray) -> np.ndarray:
    """Every (Q, N) distance."""
    metric = {'euclidean': faiss.METRIC_L2, 'cosine': faiss.METRIC_INNER_PRODUCT,
              'manhattan': faiss.METRIC_L1}[self.metric]
    return self._finish(faiss.pairwise_distances(self._prepare(q), self._items, metric))
