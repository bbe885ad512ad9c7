"""Jitted distance kernels behind :mod:`fwjax.distances` (private; the public API lives there).

Every metric except manhattan is computed from one float32 matrix product ``q @ x.T`` at full
precision plus per-row statistics (squared norm, sum); manhattan is a fused
broadcast-subtract-abs-reduce (no (Q, N, D) array is ever formed). Items are processed in
blocks of a fixed number of rows, so an item's distance is the same bits whatever chunk or
device it is computed in (XLA's matrix product picks its summation order from the operand
shapes, so a chunk of another length could otherwise round differently and break ties
differently).

This module also holds the float64 numpy forms used for exact re-scoring.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

METRICS = ('euclidean', 'sqeuclidean', 'manhattan', 'cosine', 'modified')
FUSIONS = ('sum', 'mean_feature', 'min')
# Why a row may be refused; codes returned by the kernels, explained by fwjax.distances.
OK, NON_FINITE, ZERO_NORM, NON_POSITIVE_SUM = 0, 1, 2, 3
NO_INDEX = np.iinfo(np.int32).max  # index of padding rows: sorts after every real item
_HIGHEST = lax.Precision.HIGHEST


def row_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Squared norms and sums of the rows of ``x`` (float32)."""
  return jnp.sum(x * x, axis=-1), jnp.sum(x, axis=-1)


def row_codes(sqnorm: jax.Array, total: jax.Array, metric: str) -> jax.Array:
  """Per-row refusal code (OK, NON_FINITE, ZERO_NORM, NON_POSITIVE_SUM) for ``metric``.

  A non-finite feature makes the squared norm or the sum non-finite, so the statistics the
  kernel needs anyway double as a finiteness check (no extra pass over the items).
  """
  code = jnp.where(jnp.isfinite(sqnorm) & jnp.isfinite(total), OK, NON_FINITE)
  if metric in ('cosine', 'modified'):
    code = jnp.where((code == OK) & (sqnorm <= 0), ZERO_NORM, code)
  if metric == 'modified':
    code = jnp.where((code == OK) & (total <= 0), NON_POSITIVE_SUM, code)
  return code.astype(jnp.int32)


def _clamp(d: jax.Array) -> jax.Array:
  # Tiny negatives from cancellation (and -0.0) become +0.0, so ties at zero compare equal.
  return jnp.where(d <= 0, jnp.zeros_like(d), d)


def _manhattan(q: jax.Array, x: jax.Array) -> jax.Array:
  """sum |q_i - x_j| for a (Q, D) x (B, D) block.

  XLA fuses the broadcast, subtraction, abs and sum into one reduction loop, so the (B, Q, D)
  intermediate is never stored; the item block bounds it anyway. Items lead the loop nest so
  each item row is read from memory once and the queries stay in cache.
  """
  return jnp.sum(jnp.abs(x[:, None, :] - q[None, :, :]), axis=-1).T


def block_distances(q: jax.Array, q_sqnorm: jax.Array, q_sum: jax.Array, gram: jax.Array,
                    x_sqnorm: jax.Array, x_sum: jax.Array, metric: str) -> jax.Array:
  """(Q, B) float32 distances from the product ``gram = q @ x.T`` and the row statistics."""
  qn, xn = q_sqnorm[:, None], x_sqnorm[None, :]
  sq = _clamp(qn + xn - 2.0 * gram)
  if metric == 'sqeuclidean':
    return sq
  if metric == 'euclidean':
    return _clamp(jnp.sqrt(sq))
  cos = jnp.clip(gram * lax.rsqrt(qn) * lax.rsqrt(xn), -1.0, 1.0)
  if metric == 'cosine':
    return _clamp(1.0 - cos)
  # modified: every term from gram, the squared norms and the sums (DESIGN.md section 4).
  n = q.shape[1]
  qs, xs = q_sum[:, None], x_sum[None, :]
  t1 = jnp.square(sq / (qs * xs))
  t2 = jnp.square(cos - 1.0)
  centred_q = jnp.maximum(qn - qs * qs / n, 0.0)
  centred_x = jnp.maximum(xn - xs * xs / n, 0.0)
  # ||ca - cb||^2 = ||a - b||^2 - (sum a - sum b)^2 / n: one cancellation instead of three.
  centred_sq = jnp.maximum(sq - jnp.square(qs - xs) / n, 0.0)
  denominator = 2.0 * (centred_q + centred_x)
  ratio = jnp.where(denominator > 0, centred_sq / jnp.where(denominator > 0, denominator, 1.0), 0.0)
  t3 = jnp.square(jnp.clip(ratio, 0.0, 1.0))
  return _clamp(t1 + t2 + t3)


def fuse(d: jax.Array, num_refs: int, ref_mask: jax.Array, fusion: str) -> jax.Array:
  """(Q*R, B) distances -> (Q, B) fused over the R references of each query."""
  if num_refs == 1:
    return d
  d = d.reshape(-1, num_refs, d.shape[-1])
  mask = ref_mask[:, :, None]
  if fusion == 'min':
    return jnp.min(jnp.where(mask, d, jnp.inf), axis=1)
  return jnp.sum(jnp.where(mask, d, 0.0), axis=1)  # 'sum' ('mean_feature' arrives with R = 1)


def _block_stats_and_gram(q: jax.Array, x: jax.Array):
  """q @ x.T, and the squared norms and sums of the rows of ``x``, in two passes over ``x``.

  The sums ride along in the matrix product as an extra all-ones query row, and the squared
  norms are a batched dot: both are several times faster on XLA:CPU than ``jnp.sum`` row
  reductions, which matters when one query makes the product itself memory-bound.
  """
  ones = jnp.ones((1, q.shape[1]), q.dtype)
  product = jnp.matmul(jnp.concatenate([q, ones]), x.T, precision=_HIGHEST)
  sqnorm = lax.dot_general(x, x, (((1,), (1,)), ((0,), (0,))), precision=_HIGHEST)
  return product[:-1], sqnorm, product[-1]


def _one_block(q, q_sqnorm, q_sum, ref_mask, xb, *, metric, num_refs, fusion):
  """Fused (Q, B) distances of one item block, and the block's per-row refusal codes."""
  if metric == 'manhattan':
    # A NaN or Inf feature makes every distance of its row non-finite: the first query's
    # distances are the finiteness check, with no second pass over the items for statistics.
    d = fuse(_clamp(_manhattan(q, xb)), num_refs, ref_mask, fusion)
    return d, jnp.where(jnp.isfinite(d[0]), OK, NON_FINITE).astype(jnp.int32)
  gram, xn, xs = _block_stats_and_gram(q, xb)
  d = block_distances(q, q_sqnorm, q_sum, gram, xn, xs, metric)
  return fuse(d, num_refs, ref_mask, fusion), row_codes(xn, xs, metric)


@functools.partial(jax.jit, static_argnames=('metric', 'block', 'num_refs', 'fusion'))
def chunk_distances(q, q_sqnorm, q_sum, ref_mask, x, first_index, num_items, *, metric: str,
                    block: int, num_refs: int, fusion: str):
  """Fused distances of queries to a chunk of items, padding masked out.

  Args:
    q, q_sqnorm, q_sum: (Q*R, D) query rows and their statistics.
    ref_mask: (Q, R) bool, which references are real.
    x: (C, D) items; rows at global index >= ``num_items`` are padding. Blocks start at
      multiples of ``block`` from ``x[0]``; a last partial block is padded (a small copy).
    first_index: global index of ``x[0]``.
    num_items: total number of real items.

  Returns:
    distances (Q, C) (+inf on padding), global indices (C,) int32 (NO_INDEX on padding),
    per-row refusal codes (C,) int32.
  """
  size, dim = x.shape
  one = functools.partial(_one_block, q, q_sqnorm, q_sum, ref_mask, metric=metric,
                          num_refs=num_refs, fusion=fusion)
  full, tail = divmod(size, block)
  parts_d, parts_c = [], []
  if full:
    # Slices of x inside the loop: the blocks are read in place, never copied out first.
    d, codes = lax.map(lambda i: one(lax.dynamic_slice_in_dim(x, i * block, block)),
                       jnp.arange(full))
    parts_d.append(jnp.moveaxis(d, 0, 1).reshape(d.shape[1], -1))
    parts_c.append(codes.reshape(-1))
  if tail:
    xb = jnp.zeros((block, dim), x.dtype).at[:tail].set(x[full * block:])
    d, codes = one(xb)
    parts_d.append(d[:, :tail])
    parts_c.append(codes[:tail])
  d = jnp.concatenate(parts_d, axis=1) if len(parts_d) > 1 else parts_d[0]
  codes = jnp.concatenate(parts_c) if len(parts_c) > 1 else parts_c[0]
  index = first_index + jnp.arange(size, dtype=jnp.int32)
  valid = index < num_items
  d = jnp.where(valid[None, :], d, jnp.inf)
  codes = jnp.where(valid, codes, OK)
  return d, jnp.where(valid, index, NO_INDEX), codes


def merge_topk(best_d, best_i, d, i, k: int):
  """Lexicographic (distance, index) smallest ``k`` of running and new (Q, m) candidates."""
  d, i = lax.sort((jnp.concatenate([best_d, d], axis=1), jnp.concatenate([best_i, i], axis=1)),
                  dimension=1, num_keys=2)
  return d[:, :k], i[:, :k]


def local_topk(d: jax.Array, index: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Smallest ``k`` of (Q, C) distances; ties go to the lower position (= lower index)."""
  # lax.top_k keeps the lower-index element first among equals (documented), and positions
  # within a chunk increase with the global item index.
  neg, pos = lax.top_k(-d, k)
  return -neg, index[pos]


# Float64 direct forms (no expansion, so no cancellation): exact re-scoring and references.

def exact_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
  """(Q, M) float64 distances computed from differences, for small M (re-scoring)."""
  q = np.asarray(q, np.float64)[:, None, :]
  x = np.asarray(x, np.float64)[None, :, :]
  if metric == 'manhattan':
    return np.abs(q - x).sum(-1)
  sq = np.square(q - x).sum(-1)
  if metric == 'sqeuclidean':
    return sq
  if metric == 'euclidean':
    return np.sqrt(sq)
  qn, xn = np.sqrt(np.square(q).sum(-1)), np.sqrt(np.square(x).sum(-1))
  cos = np.clip((q * x).sum(-1) / (qn * xn), -1.0, 1.0)
  if metric == 'cosine':
    return 1.0 - cos
  cq, cx = q - q.mean(-1, keepdims=True), x - x.mean(-1, keepdims=True)
  t1 = np.square(sq / (q.sum(-1) * x.sum(-1)))
  t2 = np.square(cos - 1.0)
  den = 2.0 * (np.square(cq).sum(-1) + np.square(cx).sum(-1))
  num = np.square(cq - cx).sum(-1)
  t3 = np.square(np.divide(num, den, out=np.zeros_like(num), where=den > 0))
  return t1 + t2 + t3
