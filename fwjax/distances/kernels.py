"""Jitted distance kernels behind :mod:`fwjax.distances` (private; the public API lives there).

Every metric except manhattan is computed from one float32 matrix product ``q @ x.T`` at full
precision plus per-row statistics (squared norm, sum); manhattan is a fused
broadcast-subtract-abs-reduce (no (Q, N, D) array is ever formed). An item's distance has the
same bits whatever chunk or device it is computed in, because XLA picks a matrix product's
summation order from the operand shapes, and XLA:CPU's row reductions also round differently
for some row counts:

* the product, the statistics and manhattan for several queries run on blocks of a fixed
  number of item rows (a function of N only) inside one loop; an item is always in the same
  block;
* on the CPU, one query's product is one batched matrix product over those same blocks when
  N is a whole number of blocks (:func:`whole_blocks`, :func:`_batched_product`);
* manhattan for one query is a fixed tree of element-wise additions, whose bits cannot depend
  on the chunk (on the CPU it runs on pieces of at most ``ONE_QUERY_MANHATTAN_BYTES``);
* the element-wise rest runs on the whole chunk at once.

XLA:CPU runs a loop body on one core and the rest on all of them, so what can leave the loop
does. Statistics may come precomputed (:class:`fwjax.distances.Collection`), which leaves one
matrix product per block: for one query, the batched product streams the items on every core
at the machine's memory bandwidth.

This module also holds the float64 numpy forms used for exact re-scoring.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

METRICS = ('euclidean', 'sqeuclidean', 'manhattan', 'cosine', 'modified')
FUSIONS = ('sum', 'mean_feature', 'min')
# Why a row may be refused; codes returned by the kernels, explained by fwjax.distances.
OK, NON_FINITE, ZERO_NORM, NON_POSITIVE_SUM = 0, 1, 2, 3
NO_INDEX = np.iinfo(np.int32).max  # index of padding rows: sorts after every real item
_HIGHEST = lax.Precision.HIGHEST


def row_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Squared norms and sums of the rows of ``x`` (float32)."""
  return jnp.sum(x * x, axis=-1), jnp.sum(x, axis=-1)


def row_codes(sqnorm: jax.Array, total: jax.Array | None, metric: str) -> jax.Array:
  """Per-row refusal code (OK, NON_FINITE, ZERO_NORM, NON_POSITIVE_SUM) for ``metric``.

  A non-finite feature makes the squared norm or the sum non-finite, so the statistics the
  kernel needs anyway double as a finiteness check (no extra pass over the items).
  """
  # A NaN, an Inf, or a value whose square overflows makes the squared norm non-finite (and
  # a sum can only overflow after the squares have), so the squared norm alone is the check.
  code = jnp.where(jnp.isfinite(sqnorm), OK, NON_FINITE)
  if metric in ('cosine', 'modified'):
    code = jnp.where((code == OK) & (sqnorm <= 0), ZERO_NORM, code)
  if metric == 'modified':
    code = jnp.where((code == OK) & (total <= 0), NON_POSITIVE_SUM, code)
  return code.astype(jnp.int32)


def _clamp(d: jax.Array) -> jax.Array:
  # Tiny negatives from cancellation (and -0.0) become +0.0, so ties at zero compare equal.
  return jnp.where(d <= 0, jnp.zeros_like(d), d)


def _manhattan(q: jax.Array, x: jax.Array) -> jax.Array:
  """sum |q_i - x_j| for (Q, D) queries and (C, D) items, as (Q, C).

  XLA fuses the broadcast, subtraction, abs and sum into one reduction loop, so the (C, Q, D)
  intermediate is never stored; the item block bounds it anyway. Items lead the loop nest so
  each item row is read from memory once and the queries stay in cache.
  """
  return jnp.sum(jnp.abs(x[:, None, :] - q[None, :, :]), axis=-1).T


def _tree_sum(y: jax.Array) -> jax.Array:
  """Sum over the last axis as a fixed binary tree of element-wise additions.

  No reduction op whose order XLA picks, so a row's sum has the same bits whatever the shape
  around it, and no loop, so XLA:CPU spreads it over every core (pairwise summation is also
  more accurate than a running sum). XLA fuses the levels a few at a time; the largest stored
  intermediate is a fraction of ``y``.
  """
  width = 1 << max(0, (y.shape[-1] - 1).bit_length())
  if width != y.shape[-1]:
    y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, width - y.shape[-1])])  # adds exact zeros
  while y.shape[-1] > 1:
    half = y.shape[-1] // 2
    y = y[..., :half] + y[..., half:]
  return y[..., 0]


# One query's manhattan (:func:`_tree_sum`) stores its first tree levels, an eighth of the chunk,
# between XLA fusions. On the CPU it is faster on pieces small enough for that intermediate to
# stay in the last-level cache (kernels/bench_distances.py; kernels/results/NOTES.md has the
# measurements). The tree's bits do not depend on the chunking, so pairwise and the streaming
# run it on pieces of at most this many bytes.
ONE_QUERY_MANHATTAN_BYTES = 128 << 20


def piece_bytes(metric: str, num_rows: int) -> int | None:
  """The most item bytes per call for ``metric`` with ``num_rows`` query rows (the one-query
  manhattan tree: ``ONE_QUERY_MANHATTAN_BYTES``), or None where bigger calls are no slower."""
  return ONE_QUERY_MANHATTAN_BYTES if metric == 'manhattan' and num_rows == 1 else None


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


def _blocked(fn, x: jax.Array, block: int):
  """``fn`` on consecutive ``block``-row blocks of ``x``, outputs joined along their last axis.

  The blocks are sliced inside the loop (read in place); a last partial block is zero-padded
  (a copy of at most one block) and its padding cut from the outputs.
  """
  size, dim = x.shape
  full, tail = divmod(size, block)
  parts = []
  if full:
    out = lax.map(lambda i: fn(lax.dynamic_slice_in_dim(x, i * block, block)), jnp.arange(full))
    parts.append(jax.tree.map(
        lambda o: jnp.moveaxis(o, 0, -2).reshape(*o.shape[1:-1], full * block), out))
  if tail:
    xb = jnp.zeros((block, dim), x.dtype).at[:tail].set(x[full * block:])
    parts.append(jax.tree.map(lambda o: o[..., :tail], fn(xb)))
  if len(parts) == 1:
    return parts[0]
  return jax.tree.map(lambda *o: jnp.concatenate(o, axis=-1), *parts)


def whole_blocks(num_items: int, block: int) -> bool:
  """Whether one query's products take :func:`_batched_product` (else the block loop).

  A function of N and the block only (never of the chunking), so every chunk of a collection
  takes the same form: N must be a whole number of blocks (chunks and device shards are, and
  so is the unchunked collection), the backend the CPU (the bit-for-bit argument in
  :func:`_batched_product` is about XLA:CPU's runtime; a GPU library may pick its algorithm by
  the batch count), and the block at least 2 rows (XLA rewrites a 1-row product into a
  reduction, whose rounding depends on the row count).
  """
  return jax.default_backend() == 'cpu' and block >= 2 and num_items % block == 0


def _batched_product(q_row: jax.Array, x: jax.Array, block: int) -> jax.Array:
  """(1, C) ``q_row @ x.T`` for one query row, as one batched product over ``block``-row blocks.

  XLA:CPU runs a batched dot as one matrix product per batch element, all of one shape and all
  handed to its thread pool at once (its DotThunk). So an item's value depends only on the block
  shape and its position in its block, as in the block loop, while every core streams items (a
  loop body runs on one): faster than the loop for a large collection, at the machine's memory
  bandwidth (kernels/bench_distances.py). ``C`` must be a multiple of ``block``: x is only reshaped, and a
  slice or pad of it would be a copy of the chunk.
  """
  size, dim = x.shape
  if size % block:
    raise ValueError(f'_batched_product: {size} rows are not whole blocks of {block}')
  num_blocks = size // block
  out = lax.dot_general(jnp.broadcast_to(q_row, (num_blocks, dim)),
                        x.reshape(num_blocks, block, dim), (((1,), (2,)), ((0,), (0,))),
                        precision=_HIGHEST)
  return out.reshape(1, size)


def _product(q: jax.Array, xb: jax.Array) -> jax.Array:
  """(Q, B) ``q @ xb.T`` (for one query a matrix-vector product)."""
  return jnp.matmul(q, xb.T, precision=_HIGHEST)


def _sqnorm(xb: jax.Array) -> jax.Array:
  return lax.dot_general(xb, xb, (((1,), (1,)), ((0,), (0,))), precision=_HIGHEST)


def _sum(xb: jax.Array) -> jax.Array:
  return jnp.matmul(jnp.ones((1, xb.shape[1]), xb.dtype), xb.T, precision=_HIGHEST)[0]


@functools.partial(jax.jit, static_argnames=('block',))
def item_stats(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
  """(C,) squared norms and sums of item rows, in ``block``-row blocks.

  Bit for bit what :func:`chunk_distances` computes for itself when not given them.
  """
  return _blocked(lambda xb: (_sqnorm(xb), _sum(xb)), x, block)


@functools.partial(jax.jit,
                   static_argnames=('metric', 'block', 'num_refs', 'fusion', 'batched'))
def chunk_distances(q, q_sqnorm, q_sum, ref_mask, x, first_index, num_items, x_sqnorm=None,
                    x_sum=None, *, metric: str, block: int, num_refs: int, fusion: str,
                    batched: bool = False):
  """Fused distances of queries to a chunk of items, padding masked out.

  Args:
    q, q_sqnorm, q_sum: (Q*R, D) query rows and their statistics.
    ref_mask: (Q, R) bool, which references are real.
    x: (C, D) items; rows at global index >= ``num_items`` are padding. Blocks start at
      multiples of ``block`` from ``x[0]``.
    first_index: global index of ``x[0]``.
    num_items: total number of real items.
    x_sqnorm, x_sum: (C,) item statistics from :func:`item_stats` (already checked), or None to
      compute (and check) what ``metric`` needs here.
    batched: :func:`whole_blocks` of the collection (N, not C): one query row's product is then
      :func:`_batched_product` (C is a multiple of ``block``), else it runs in the block loop.

  Returns:
    distances (Q, C) (+inf on padding), global indices (C,) int32 (NO_INDEX on padding),
    per-row refusal codes (C,) int32.
  """
  size = x.shape[0]
  if metric == 'manhattan':
    if q.shape[0] == 1:  # the rows piece_bytes limits
      # One query: a tree sum over the whole chunk, on every core (a reduction would run in
      # the block loop, on one). Several: the blocked reduction, which keeps queries in cache.
      d = _tree_sum(jnp.abs(x - q))[None, :]
    else:
      d = _blocked(lambda xb: _manhattan(q, xb), x, block)
    d = fuse(_clamp(d), num_refs, ref_mask, fusion)
    # A NaN or Inf feature makes every distance of its row non-finite: the first query's
    # distances are the finiteness check, with no second pass over the items for statistics.
    codes = jnp.where(jnp.isfinite(d[0]), OK, NON_FINITE).astype(jnp.int32)
  else:
    one_row = batched and q.shape[0] == 1  # its product leaves the loop
    if x_sqnorm is None:
      def per_block(xb):
        return (None if one_row else _product(q, xb), _sqnorm(xb),
                _sum(xb) if metric == 'modified' else None)
      gram, x_sqnorm, x_sum = _blocked(per_block, x, block)
      codes = row_codes(x_sqnorm, x_sum, metric)
    else:
      gram = None if one_row else _blocked(lambda xb: _product(q, xb), x, block)
      codes = jnp.full((size,), OK, jnp.int32)
    if one_row:
      gram = _batched_product(q[0], x, block)
    d = block_distances(q, q_sqnorm, q_sum, gram, x_sqnorm, x_sum, metric)
    d = fuse(d, num_refs, ref_mask, fusion)
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
