"""Distances between feature vectors, and ranking of collections larger than device memory.

Metrics (``METRICS``), for a query ``a`` and an item ``b`` of length n:

* ``euclidean`` ``||a - b||``, ``sqeuclidean`` ``||a - b||^2``, ``manhattan`` ``sum |a - b|``,
* ``cosine`` ``1 - a.b / (||a|| ||b||)``,
* ``modified`` (Ivanov, Gorlushkina & Govorov 2018, as printed for 3-vectors in de Bie 2020),
  generalised to n dimensions with centred vectors ``ca = a - mean(a)``::

      t1 = (||a - b||^2 / (sum(a) sum(b)))^2
      t2 = (cos(a, b) - 1)^2
      t3 = (||ca - cb||^2 / (2 (||ca||^2 + ||cb||^2)))^2       distance = t1 + t2 + t3

  For n = 3 this is the printed formula term by term (its third term reads
  ``9||ca-cb||^2 / (9(||ca||^2+||cb||^2))`` squared and divided by 4).

Euclidean, cosine and modified come from ONE float32 matrix product at full precision
(``Precision.HIGHEST``: never TF32) plus per-row squared norms and sums; manhattan is a blocked
reduction. Expanded forms lose accuracy for near-duplicates (``||a||^2 + ||b||^2 - 2a.b``), so
results are clamped at 0 and :func:`topk` can re-score its answer exactly in float64.

Ranking (:func:`topk`, :func:`rank`) streams the items in chunks from a numpy array, a jax array,
an ``np.memmap`` or the path of a .npy file, splits each chunk over all local devices, and returns
exactly what the unchunked computation returns: ties are broken by the lower item index, and an
item's distance has the same bits whatever the chunk size or number of devices.

Input rules (checked where the data enters, never a silent NaN in a ranking); each raises
``ValueError`` naming the argument and row:

* dimensions: queries and items must have the same feature length D >= 1; no empty inputs.
* NaN or Inf features (or features so large that a squared norm overflows float32): refused.
  Items are checked chunk by chunk while streaming (from the statistics the kernel computes
  anyway), and the error names the global row index.
* zero vectors: refused for ``cosine`` and ``modified`` (no direction); fine for the others.
* ``modified`` needs every feature sum > 0 (``t1`` divides by ``sum(a) sum(b)``); non-negative
  CNN features (after a ReLU) satisfy it unless a row is all zeros. When both centred vectors
  are zero (two constant vectors) ``t3`` is 0/0 and is defined as 0.
* unknown metric or fusion names, ``k < 1`` or ``k > N``.

Many queries against one collection: wrap the items in a :class:`Collection` once. It computes
and checks the per-item statistics a single time, so each later call reads the items once for a
matrix product and nothing more; results are bit for bit those of the bare items.

Several references per query: pass queries of shape (Q, R, D), fused by ``fusion``:

* ``'sum'`` (default): the sum of the R distances, the thesis's method (de Bie 2020), so results
  compare with it; an item must be close to every reference, and per query the ranking equals
  that of the mean distance.
* ``'mean_feature'``: the distance to the mean of the R reference vectors (the thesis's future
  work): one distance per item, R times cheaper, but it changes the geometry (the mean of two
  views is not a view).
* ``'min'``: the smallest of the R distances: an item close to any one reference ranks high;
  a single poor reference cannot hide a match, but one outlying reference pulls in its own
  neighbours.

Ragged reference sets: pad to the largest R and pass ``reference_mask`` (Q, R) bool; masked
references are ignored (they need not be valid vectors).
"""


from fwjax.distances import kernels as _kernels
from fwjax.distances.api import pairwise, rank, topk  # noqa: F401
from fwjax.distances.collection import Collection  # noqa: F401

METRICS = _kernels.METRICS
FUSIONS = _kernels.FUSIONS
