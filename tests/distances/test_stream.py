"""fwjax.distances.topk / rank: exact orders with ties against numpy, chunked == unchunked
(bit for bit), sharded == one device, memory-mapped input, fusion, re-scoring, bad rows."""

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

from hypothesis import given, settings, strategies as st
import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fwjax.distances import kernels as K
from fwjax.distances import stream as _ranking
from fwjax import distances

REPO = pathlib.Path(__file__).resolve().parents[2]
SCIPY = {'euclidean': 'euclidean', 'sqeuclidean': 'sqeuclidean', 'manhattan': 'cityblock',
         'cosine': 'cosine'}
EXACT = ('euclidean', 'sqeuclidean', 'manhattan')  # exact in float32 on small integer features


def int_features(rng, shape):
  # Small integers: squared and absolute differences are exact in float32, with many ties.
  return rng.integers(0, 3, shape).astype(np.float32)


def numpy_order(d: np.ndarray) -> np.ndarray:
  """Ascending distance, ties by the lower index."""
  return np.argsort(d, axis=1, kind='stable')


def assert_same(got, want):
  """(distances, indices) equal bit for bit."""
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize('metric', EXACT)
def test_topk_and_rank_equal_numpy_order_with_ties(metric):
  rng = np.random.default_rng(0)
  q, x = int_features(rng, (6, 5)), int_features(rng, (301, 5))
  want = cdist(q.astype(np.float64), x.astype(np.float64), SCIPY[metric])
  order = numpy_order(want)
  dist, index = distances.topk(q, x, 25, metric, chunk_size=40, block=8)
  np.testing.assert_array_equal(index, order[:, :25])
  np.testing.assert_allclose(dist, np.take_along_axis(want, order[:, :25], 1), rtol=1e-6)
  dist, index = distances.rank(q, x, metric, chunk_size=72, block=8)
  np.testing.assert_array_equal(index, order)
  assert index.dtype == np.int64 and dist.dtype == np.float32


# k and the chunk length are compile-time constants: few distinct values keep compiles few.
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([5, 64]),
       metric=st.sampled_from(EXACT), chunk=st.sampled_from([8, 1000]))
def test_topk_property_any_chunking(seed, k, metric, chunk):
  rng = np.random.default_rng(seed)
  q, x = int_features(rng, (3, 4)), int_features(rng, (64, 4))
  want = cdist(q.astype(np.float64), x.astype(np.float64), SCIPY[metric])
  _, index = distances.topk(q, x, k, metric, chunk_size=chunk, block=8)
  np.testing.assert_array_equal(index, numpy_order(want)[:, :k])


@pytest.mark.parametrize('metric', distances.METRICS)
def test_chunked_equals_unchunked_bit_for_bit(metric):
  rng = np.random.default_rng(1)
  q = rng.random((4, 24), dtype=np.float32) + 0.01
  x = rng.random((203, 24), dtype=np.float32) + 0.01
  x[150] = x[7]  # exact duplicates: equal distances, broken by index
  x[40] = x[7]
  full = np.asarray(distances.pairwise(q, x, metric, block=16))
  order = numpy_order(full)
  for chunk in (16, 4096):  # 4 devices x 16-row blocks: chunks of 64 rows, and all in one
    dist, index = distances.topk(q, x, 12, metric, chunk_size=chunk, block=16)
    np.testing.assert_array_equal(index, order[:, :12])
    np.testing.assert_array_equal(dist, np.take_along_axis(full, order[:, :12], 1))
  for chunk in (100,):  # chunks of 128 rows
    dist, index = distances.rank(q, x, metric, chunk_size=chunk, block=16)
    np.testing.assert_array_equal(index, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(full, order, 1))


def test_float_results_match_cdist_within_tolerance():
  rng = np.random.default_rng(2)
  q, x = rng.random((3, 50), dtype=np.float32), rng.random((500, 50), dtype=np.float32)
  for metric, name in SCIPY.items():
    want = cdist(q.astype(np.float64), x.astype(np.float64), name)
    dist, index = distances.topk(q, x, 10, metric, chunk_size=128)
    np.testing.assert_allclose(dist, np.take_along_axis(want, index, 1), rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)
    # a float32 near-tie may swap neighbours; the set of distances must match float64's
    np.testing.assert_allclose(dist, np.sort(want, axis=1)[:, :10], rtol=1e-4, atol=1e-5)


_ONE_DEVICE = """
import json, sys, numpy as np
from fwjax import distances
import jax
assert jax.local_device_count() == 1
rng = np.random.default_rng(3)
q = rng.random((3, 20), dtype=np.float32) + 0.01
x = rng.random((150, 20), dtype=np.float32) + 0.01
x[90] = x[5]
out = {}
for metric in ('euclidean', 'manhattan', 'modified'):
  d, i = distances.topk(q, x, 9, metric, chunk_size=64, block=16)
  out[metric] = [d.tolist(), i.tolist()]
json.dump(out, sys.stdout)
"""


def test_sharded_equals_single_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', _ONE_DEVICE], capture_output=True, text=True,
                        env=env, cwd=REPO, check=True)
  single = json.loads(done.stdout)
  rng = np.random.default_rng(3)
  q = rng.random((3, 20), dtype=np.float32) + 0.01
  x = rng.random((150, 20), dtype=np.float32) + 0.01
  x[90] = x[5]
  for metric in single:  # the matmul path, the manhattan path, and modified's statistics
    d, i = distances.topk(q, x, 9, metric, chunk_size=64, block=16)
    np.testing.assert_array_equal(d, np.asarray(single[metric][0], np.float32))
    np.testing.assert_array_equal(i, np.asarray(single[metric][1]))


def test_memmap_path_and_jax_inputs_match_ndarray(tmp_path):
  rng = np.random.default_rng(4)
  q, x = rng.random((2, 16), dtype=np.float32), rng.random((300, 16), dtype=np.float32)
  path = tmp_path / 'items.npy'
  np.save(path, x)
  want = distances.topk(q, x, 7, 'cosine', chunk_size=64)
  for items in (path, str(path), np.load(path, mmap_mode='r'), jax.numpy.asarray(x)):
    got = distances.topk(q, items, 7, 'cosine', chunk_size=64)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_bad_item_row_in_a_later_chunk_is_named_by_global_index(tmp_path):
  x = np.ones((500, 8), np.float32)
  x[:, 0] = np.arange(500)
  x[437, 3] = np.nan
  path = tmp_path / 'items.npy'
  np.save(path, x)
  with pytest.raises(ValueError, match='items row 437 has a NaN or Inf'):
    distances.topk(np.ones((1, 8)), path, 3, chunk_size=64)
  x[437, 3] = 1.0
  x[321] = 0.0
  with pytest.raises(ValueError, match='items row 321 is a zero vector'):
    distances.rank(np.ones((1, 8)), x, 'cosine', chunk_size=64)


def fused_reference(q, x, metric, fusion, mask):
  rows = []
  for refs, keep in zip(q, mask):
    refs = refs[keep].astype(np.float64)
    if fusion == 'mean_feature':
      rows.append(cdist(refs.mean(0, keepdims=True), x, SCIPY[metric])[0])
    else:
      d = cdist(refs, x.astype(np.float64), SCIPY[metric])
      rows.append(d.min(0) if fusion == 'min' else d.sum(0))
  return np.stack(rows)


@pytest.mark.parametrize('fusion', distances.FUSIONS)
@pytest.mark.parametrize('metric', ['cosine', 'manhattan'])
def test_fusion_matches_numpy_and_masked_equals_sliced(fusion, metric):
  rng = np.random.default_rng(5)
  q = rng.random((3, 4, 12), dtype=np.float32) + 0.01
  x = rng.random((120, 12), dtype=np.float32) + 0.01
  mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]], bool)
  q_padded = np.where(mask[:, :, None], q, np.nan)  # padding may hold anything
  want = fused_reference(q, x, metric, fusion, mask)
  dist, order = distances.rank(q_padded, x, metric, fusion=fusion, reference_mask=mask,
                               chunk_size=32)
  np.testing.assert_allclose(dist, np.take_along_axis(want, order, 1), rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(dist, axis=1) >= 0)
  # masked equals sliced: query 1 with references 0 and 2 only
  sliced, sliced_order = distances.rank(q[1:2, [0, 2]], x, metric, fusion=fusion, chunk_size=32)
  np.testing.assert_allclose(dist[1], sliced[0], rtol=1e-6, atol=1e-6)
  dist_k, index_k = distances.topk(q_padded, x, 5, metric, fusion=fusion, reference_mask=mask,
                                   rescore=True)
  np.testing.assert_allclose(dist_k, np.sort(want, 1)[:, :5], rtol=1e-6, atol=1e-7)


def test_rescoring_recovers_exact_order_of_near_duplicates():
  # Large common offset, tiny differences: ||a||^2 + ||b||^2 - 2ab cancels in float32.
  rng = np.random.default_rng(6)
  base = 100.0 + rng.random(256)
  x = (base + 1e-3 * rng.standard_normal((64, 256))).astype(np.float32)
  q = (base + 1e-3 * rng.standard_normal((2, 256))).astype(np.float32)
  want = cdist(q.astype(np.float64), x.astype(np.float64))
  order = numpy_order(want)
  dist, index = distances.topk(q, x, 8, 'euclidean', rescore=True, rescore_pool=64)
  np.testing.assert_array_equal(index, order[:, :8])
  np.testing.assert_allclose(dist, np.take_along_axis(want, order[:, :8], 1), rtol=1e-6)
  for metric in ('cosine', 'manhattan', 'modified'):
    _, index = distances.topk(q, x, 8, metric, rescore=True, rescore_pool=64)
    want_m = (modified_reference(q, x) if metric == 'modified'
              else cdist(q.astype(np.float64), x.astype(np.float64), SCIPY[metric]))
    np.testing.assert_array_equal(index, numpy_order(want_m)[:, :8])


def modified_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """DESIGN.md section 4's modified distance, float64, from differences."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  ca, cb = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
  t1 = (np.square(a - b).sum(-1) / (a.sum(-1) * b.sum(-1)))**2
  cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  t3 = (np.square(ca - cb).sum(-1) / (2 * (np.square(ca).sum(-1) + np.square(cb).sum(-1))))**2
  return t1 + (cos - 1)**2 + t3


@pytest.mark.parametrize('call, message', [
    (lambda q, x: distances.topk(q, x, 0), r'k: must be in \[1, N=10\], got 0'),
    (lambda q, x: distances.topk(q, x, 11), r'k: must be in \[1, N=10\], got 11'),
    (lambda q, x: distances.topk(q, x, 3, rescore=True, rescore_pool=2), 'rescore_pool'),
    (lambda q, x: distances.rank(q, x, fusion='max'), "unknown fusion 'max'"),
    (lambda q, x: distances.rank(q, x, 'hamming'), "unknown metric 'hamming'"),
    (lambda q, x: distances.rank(q[:, None].repeat(2, 1), x, reference_mask=np.ones((2, 3), bool)),
     'reference_mask: expected bool of shape'),
    (lambda q, x: distances.rank(q[:, None].repeat(2, 1), x,
                                 reference_mask=np.array([[1, 1], [0, 0]], bool)),
     'query row 1 has no reference'),
    (lambda q, x: distances.rank(np.stack([q, q + np.inf], 1), x),
     'queries row 0 reference 1 has a NaN'),
    (lambda q, x: distances.rank(np.stack([q, -q], 1), x, 'modified', fusion='mean_feature'),
     r'queries row 0 \(mean of its references\) is a zero vector'),
    (lambda q, x: distances.topk(q, '/nonexistent/items.npy', 2), 'cannot memory-map'),
    (lambda q, x: distances.topk(q, x, 2, chunk_size=0), 'chunk_size: must be positive'),
])
def test_ranking_bad_input(call, message):
  q = np.ones((2, 4), np.float32)
  x = np.arange(40, dtype=np.float32).reshape(10, 4) + 1
  with pytest.raises(ValueError, match=message):
    call(q, x)


def test_k_equal_to_n_is_the_full_ranking():
  rng = np.random.default_rng(7)
  q, x = rng.random((2, 8), dtype=np.float32), rng.random((30, 8), dtype=np.float32)
  dist_k, index_k = distances.topk(q, x, 30, 'cosine', chunk_size=16)
  dist_r, index_r = distances.rank(q, x, 'cosine', chunk_size=16)
  np.testing.assert_array_equal(index_k, index_r)
  np.testing.assert_array_equal(dist_k, dist_r)


@pytest.mark.parametrize('metric', distances.METRICS)
@pytest.mark.parametrize('num_items', [203, 208])
def test_single_query_chunked_equals_unchunked_bit_for_bit(metric, num_items):
  # One query takes other kernels: a tree sum for manhattan, and on the CPU for N = 208 (13
  # whole blocks of 16) one batched product over the blocks, for N = 203 the block loop. D = 24
  # is a width where XLA:CPU's row reductions and whole-array products round differently with
  # the row count.
  assert K.whole_blocks(num_items, 16) == (num_items == 208 and jax.default_backend() == 'cpu')
  rng = np.random.default_rng(8)
  q = rng.random((1, 24), dtype=np.float32) + 0.01
  x = rng.random((num_items, 24), dtype=np.float32) + 0.01
  x[150] = x[7]
  full = np.asarray(distances.pairwise(q, x, metric, block=16))
  order = numpy_order(full)
  for chunk in (16, 100, 4096):
    dist, index = distances.topk(q, x, 12, metric, chunk_size=chunk, block=16)
    np.testing.assert_array_equal(index, order[:, :12])
    np.testing.assert_array_equal(dist, np.take_along_axis(full, order[:, :12], 1))
  dist, index = distances.rank(q, x, metric, chunk_size=16, block=16)
  np.testing.assert_array_equal(dist, np.take_along_axis(full, order, 1))


@pytest.mark.parametrize('metric', distances.METRICS)
@pytest.mark.parametrize('num_queries,num_items', [(1, 203), (1, 208), (3, 203)])
def test_collection_equals_bare_items_bit_for_bit(metric, num_queries, num_items, tmp_path):
  rng = np.random.default_rng(9)
  q = rng.random((num_queries, 24), dtype=np.float32) + 0.01
  x = rng.random((num_items, 24), dtype=np.float32) + 0.01
  x[40] = x[7]
  want_pairwise = np.asarray(distances.pairwise(q, x, metric, block=16))
  want_topk = distances.topk(q, x, 12, metric, chunk_size=16, block=16)
  want_rank = distances.rank(q, x, metric, chunk_size=100, block=16)
  path = tmp_path / 'items.npy'
  np.save(path, x)
  for items in (x, path, jax.numpy.asarray(x)):
    refs = distances.Collection(items, block=16, chunk_size=48)
    np.testing.assert_array_equal(np.asarray(distances.pairwise(q, refs, metric)), want_pairwise)
    for got, want in ((distances.topk(q, refs, 12, metric, chunk_size=16), want_topk),
                      (distances.rank(q, refs, metric, chunk_size=100), want_rank)):
      assert_same(got, want)
  np.testing.assert_array_equal(
      distances.topk(q, refs, 5, metric, rescore=True)[1],
      distances.topk(q, x, 5, metric, rescore=True)[1])


def test_collection_keeps_its_own_copy_and_its_statistics_are_right():
  rng = np.random.default_rng(10)
  x = rng.standard_normal((70, 9)).astype(np.float32)
  refs = distances.Collection(x)
  np.testing.assert_allclose(refs.sqnorm, np.square(x.astype(np.float64)).sum(1), rtol=1e-5)
  np.testing.assert_allclose(refs.sums, x.astype(np.float64).sum(1), rtol=1e-4, atol=1e-5)
  assert refs.shape == (70, 9) and len(refs) == 70
  q = rng.standard_normal((2, 9)).astype(np.float32)
  want = distances.topk(q, x, 4)
  x[:] = 0.0  # the caller's array changes; the collection does not
  got = distances.topk(q, refs, 4)
  np.testing.assert_array_equal(got[1], want[1])


def test_collection_bad_rows_are_named_when_built_or_used(tmp_path):
  x = np.ones((300, 8), np.float32)
  x[:, 0] = np.arange(300)
  x[211, 2] = np.inf
  path = tmp_path / 'items.npy'
  np.save(path, x)
  with pytest.raises(ValueError, match='items row 211 has a NaN or Inf'):
    distances.Collection(path, chunk_size=64)
  x[211, 2] = 1.0
  x[123] = 0.0  # fine for euclidean and manhattan, refused by cosine and modified
  refs = distances.Collection(x, chunk_size=64)
  assert distances.topk(np.ones((1, 8)), refs, 3, 'manhattan')[1].shape == (1, 3)
  assert distances.pairwise(np.ones((1, 8)), refs, 'euclidean').shape == (1, 300)
  with pytest.raises(ValueError, match='items row 123 is a zero vector'):
    distances.topk(np.ones((1, 8)), refs, 3, 'cosine')
  with pytest.raises(ValueError, match='items row 123 is a zero vector'):
    distances.pairwise(np.ones((1, 8)), refs, 'modified')
  with pytest.raises(ValueError, match='prepared with block=512, got 8'):
    distances.rank(np.ones((1, 8)), refs, block=8)
  with pytest.raises(ValueError, match='prepared with block=512, got 8'):
    distances.topk(np.ones((1, 8)), refs, 3, 'manhattan', block=8)


@pytest.mark.parametrize('metric', ['cosine', 'manhattan'])
def test_collection_zero_copy_chunks_equal_bare_items(metric):
  # D = 64: chunks of the Collection's aligned copy go to the device as views, read on the
  # calling thread. The copy is followed by zero rows up to a whole number of default chunks
  # (1,024 rows here), so a last, partial chunk that ends there is a view too; one that ends
  # beyond is copied into a buffer.
  rng = np.random.default_rng(11)
  q = rng.random((2, 64), dtype=np.float32)
  x = rng.random((1000, 64), dtype=np.float32)
  refs = distances.Collection(x, block=64)
  assert refs.source.cheap_reads
  last = refs.source.read(768, 1000, 256)
  assert np.shares_memory(last, refs.source.items) and not last[232:].any()
  assert not np.shares_memory(refs.source.read(768, 1000, 768), refs.source.items)
  for chunk in (256, 600):  # 4 devices x 64-row blocks: 4 chunks, or 2 (the last copied)
    want = distances.topk(q, x, 15, metric, chunk_size=chunk, block=64)
    got = distances.topk(q, refs, 15, metric, chunk_size=chunk)
    assert_same(got, want)
  want_d, want_i = distances.rank(q, x, metric, chunk_size=256, block=64)
  got_d, got_i = distances.rank(q, refs, metric, chunk_size=256)
  assert_same((got_d, got_i), (want_d, want_i))
  np.testing.assert_allclose(got_d, np.sort(cdist(q, x, SCIPY[metric]), 1), rtol=2e-5, atol=1e-5)


def test_collection_buffers_kept_between_calls_and_shared_by_threads(tmp_path):
  # A memory-mapped Collection copies every chunk into buffers it keeps between calls; calls
  # after the first (and calls from two threads at once) must see only their own chunks.
  rng = np.random.default_rng(12)
  x = rng.random((700, 16), dtype=np.float32)
  path = tmp_path / 'items.npy'
  np.save(path, x)
  refs = distances.Collection(path, block=16)
  queries = [rng.random((2, 16), dtype=np.float32) for _ in range(6)]
  want = [distances.topk(q, x, 9, 'euclidean', chunk_size=64, block=16) for q in queries]
  for q, (want_d, want_i) in zip(queries, want):
    got_d, got_i = distances.topk(q, refs, 9, 'euclidean', chunk_size=64)
    assert_same((got_d, got_i), (want_d, want_i))
  assert list(refs._buffer_pool) == [64]  # pylint: disable=protected-access
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    got = list(pool.map(lambda q: distances.topk(q, refs, 9, 'euclidean', chunk_size=64),
                        queries))
  for (got_d, got_i), (want_d, want_i) in zip(got, want):
    assert_same((got_d, got_i), (want_d, want_i))


def test_block_size_makes_n_whole_blocks_where_it_can():
  # A function of N only; beyond 1,024 items the largest divisor of N in [512, 1024], else 1,024.
  assert _ranking.block_size(200_000, None) == 1000
  assert _ranking.block_size(1_000_000, None) == 1000
  assert _ranking.block_size(2 ** 20, None) == 1024
  assert _ranking.block_size(1_000_003, None) == 1024  # a prime
  assert _ranking.block_size(203, None) == 256 and _ranking.block_size(203, 16) == 16
  for n in range(1025, 5000, 7):
    block = _ranking.block_size(n, None)
    divisors = [b for b in range(512, 1025) if n % b == 0]
    assert block == (max(divisors) if divisors else 1024)


@pytest.mark.parametrize('dim', [3, 8, 24, 100])
def test_batched_product_depends_only_on_the_block(dim):
  # The one-query product on the CPU: an item's bits may depend on its block's shape and its
  # position in the block, never on how many blocks the chunk holds or where the chunk starts.
  rng = np.random.default_rng(13)
  x = (rng.standard_normal((40 * 8, dim)) * rng.random((40 * 8, 1)) * 10).astype(np.float32)
  q = rng.standard_normal(dim).astype(np.float32)
  product = jax.jit(K._batched_product, static_argnums=2)  # pylint: disable=protected-access
  whole = np.asarray(product(q, x, 8))[0]
  np.testing.assert_allclose(whole, x.astype(np.float64) @ q, rtol=1e-4, atol=1e-3)
  for first, count in ((0, 1), (3, 2), (11, 3), (32, 7), (1, 39)):
    part = np.asarray(product(q, x[8 * first:8 * (first + count)], 8))[0]
    np.testing.assert_array_equal(part, whole[8 * first:8 * (first + count)])
  with pytest.raises(ValueError, match='not whole blocks'):
    product(q, x[:20], 8)


@pytest.mark.parametrize('as_jax', [False, True])
def test_one_query_manhattan_in_pieces_equals_one_piece(as_jax, monkeypatch):
  # pairwise runs one query's manhattan on views of the items of about
  # K.ONE_QUERY_MANHATTAN_BYTES each. Its tree sum is element-wise, so no bit may change with
  # the pieces, and a bad row in a later piece is named by its index in the whole collection.
  rng = np.random.default_rng(14)
  q = rng.random((1, 24), dtype=np.float32)
  x = rng.random((203, 24), dtype=np.float32)
  items = jax.numpy.asarray(x) if as_jax else x
  whole = np.asarray(distances.pairwise(q, items, 'manhattan'))
  counts = []
  real_pieces = _ranking.host_pieces

  def spy(array, max_rows):
    pieces = real_pieces(array, max_rows)
    counts.append(len(pieces))
    return pieces

  monkeypatch.setattr(_ranking, 'host_pieces', spy)
  monkeypatch.setattr(K, 'ONE_QUERY_MANHATTAN_BYTES', 4 * 24 * 40)
  got = np.asarray(distances.pairwise(q, items, 'manhattan'))
  assert counts == [5]  # 203 rows in pieces of 48 (40 rounded up to 16-row alignment)
  np.testing.assert_array_equal(got, whole)
  np.testing.assert_allclose(got, cdist(q, x, 'cityblock'), rtol=1e-5)
  x[170, 3] = np.nan
  with pytest.raises(ValueError, match='items row 170 has a NaN or Inf'):
    distances.pairwise(q, jax.numpy.asarray(x) if as_jax else x, 'manhattan')


def test_host_pieces_are_aligned_views_covering_the_items():
  x = _ranking.aligned_empty((1000, 3))
  x[:] = np.arange(3000, dtype=np.float32).reshape(1000, 3)
  pieces = _ranking.host_pieces(x, 300)
  assert [start for start, _ in pieces] == [0, 256, 512, 768]  # 4 balanced pieces of 256
  np.testing.assert_array_equal(np.concatenate([p for _, p in pieces]), x)
  assert all(np.shares_memory(p, x) and p.ctypes.data % 64 == 0 for _, p in pieces)
  assert len(_ranking.host_pieces(x, 5000)) == 1
  assert _ranking.host_pieces(x[1:], 300) is None  # not 64-byte aligned: no views
  on_device = jax.device_put(x)
  assert np.shares_memory(_ranking.host_pieces(on_device, 300)[1][1], np.asarray(on_device))
  sharded = jax.device_put(x[:992], jax.sharding.NamedSharding(
      _ranking.mesh(), jax.sharding.PartitionSpec('items')))
  assert _ranking.host_pieces(sharded, 300) is None  # its rows live in four buffers


def test_one_query_manhattan_streams_smaller_chunks_all_views(monkeypatch):
  # One query's manhattan streams chunks of at most K.ONE_QUERY_MANHATTAN_BYTES; a Collection
  # pads its copy for both default chunkings, so each of their chunks is a view.
  monkeypatch.setattr(_ranking, '_VIEW_CHUNK_BYTES', 4 * 64 * 1300)
  monkeypatch.setattr(K, 'ONE_QUERY_MANHATTAN_BYTES', 4 * 64 * 520)
  rng = np.random.default_rng(15)
  x = rng.random((1100, 64), dtype=np.float32)
  refs = distances.Collection(x, block=64)
  reads = []
  real_read = refs.source.read

  def spy(start, stop, rows, out=None):
    chunk = real_read(start, stop, rows, out)
    reads.append((rows, np.shares_memory(chunk, refs.source.items)))
    return chunk

  monkeypatch.setattr(refs.source, 'read', spy)
  for num_queries, chunks in ((1, [(512, True)] * 3), (2, [(1280, True)])):
    q = rng.random((num_queries, 64), dtype=np.float32)
    reads.clear()
    got = distances.topk(q, refs, 15, 'manhattan')
    assert reads == chunks
    assert_same(got, distances.topk(q, x, 15, 'manhattan', chunk_size=1100, block=64))
