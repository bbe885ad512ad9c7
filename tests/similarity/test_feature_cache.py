"""The on-disk feature cache: exact rows, content-hash lookups, a shared folder, crash leftovers."""

import hashlib
import json
import threading
import time

import numpy as np

from fwjax import runs
from fwjax.similarity import feature_cache

CONFIG = {'version': 1, 'model': 'resnet50-abc', 'stage': 'layer3', 'height': 64, 'width': 32,
          'composition': 'B-H-N', 'policy': 'pad'}
DIM = 5


def _assemble(cache, digests, out_path):
  features, damaged = feature_cache.assemble(cache, digests, out_path)
  assert damaged == []  # nothing in these tests damages a row
  return features


def _digest(content: bytes) -> str:
  return hashlib.sha256(content).hexdigest()


def _rows(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, DIM)).astype(np.float32)


def _bits(x):
  return np.ascontiguousarray(x, np.float32).view(np.uint32)


def test_rows_round_trip_bit_for_bit(tmp_path):
  cache = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert cache.matrix().shape == (0, DIM) and cache.rows == {}
  rows = _rows(6)
  # Values a text or float64 round trip would change.
  rows[0] = [np.nan, np.inf, -np.inf, -0.0, np.float32(1e-45)]
  rows[1] = np.nextafter(np.float32(1), np.float32(2))
  digests = [_digest(f'image {i}'.encode()) for i in range(6)]
  cache.append(digests[:4], rows[:4])
  cache.append(digests[4:], rows[4:])
  np.testing.assert_array_equal(_bits(cache.matrix()), _bits(rows))
  assert cache.rows == {d: i for i, d in enumerate(digests)}
  # assemble gathers by digest, in the order asked (repeats allowed), in memory or to a .npy.
  order = [digests[i] for i in (5, 0, 3, 3, 1)]
  np.testing.assert_array_equal(_bits(_assemble(cache, order, None)),
                                _bits(rows[[5, 0, 3, 3, 1]]))
  out = _assemble(cache, order, tmp_path / 'out' / 'features.npy')
  np.testing.assert_array_equal(_bits(np.load(tmp_path / 'out' / 'features.npy')),
                                _bits(rows[[5, 0, 3, 3, 1]]))
  assert out.shape == (5, DIM)
  assert _assemble(cache, [], None).shape == (0, DIM)
  # A later object on the same folder reads the same rows back.
  again = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert again.rows == cache.rows
  np.testing.assert_array_equal(_bits(again.matrix()), _bits(rows))


def test_lookup_is_by_content_hash(tmp_path):
  files = {name: tmp_path / 'images' / name for name in ('a.png', 'b.png', 'copy_of_a.png')}
  files['a.png'].parent.mkdir()
  files['a.png'].write_bytes(b'\x89PNG first image')
  files['b.png'].write_bytes(b'\x89PNG second image')
  files['copy_of_a.png'].write_bytes(b'\x89PNG first image')
  digests = {name: runs.file_sha256(path) for name, path in files.items()}
  assert digests['a.png'] == _digest(b'\x89PNG first image')
  cache = feature_cache.FeatureCache(tmp_path / 'cache', CONFIG, DIM)
  rows = _rows(2, 1)
  cache.append([digests['a.png'], digests['b.png']], rows)
  # A file with the same bytes under another name finds the same row.
  assert digests['copy_of_a.png'] in cache.rows
  np.testing.assert_array_equal(
      _assemble(cache, [digests[n] for n in ('b.png', 'copy_of_a.png')], None),
      rows[[1, 0]])


def test_two_caches_on_one_folder_see_each_others_rows(tmp_path):
  first = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  second = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)  # another run, opened meanwhile
  assert first.dir == second.dir
  a, b = _rows(3, 2), _rows(2, 3)
  first.append(['a0', 'a1', 'a2'], a)
  second.append(['b0', 'b1'], b)
  first.append(['a3'], _rows(1, 4))
  # Rows go after whatever is on disk, whoever wrote it.
  assert second.rows == {'b0': 3, 'b1': 4}
  assert first.rows == {'a0': 0, 'a1': 1, 'a2': 2, 'a3': 5}
  expected = np.concatenate([a, b, _rows(1, 4)])
  for cache in (first, second):
    np.testing.assert_array_equal(cache.matrix(), expected)
  # A cache opened now finds every row, whichever object appended it.
  third = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert third.rows == {**first.rows, **second.rows}
  np.testing.assert_array_equal(
      _assemble(third, ['b1', 'a3', 'a0'], None), expected[[4, 5, 0]])


def test_another_configuration_gets_another_cache(tmp_path):
  cache = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  cache.append(['x'], _rows(1))
  # The same settings in another order are the same configuration.
  same = feature_cache.FeatureCache(tmp_path, dict(reversed(list(CONFIG.items()))), DIM)
  assert same.dir == cache.dir and same.rows == {'x': 0}
  for change in ({'stage': 'layer4'}, {'height': 65}, {'composition': 'N-N-N'},
                 {'policy': 'squish'}, {'model': 'resnet50-def'}, {'version': 2}):
    other = feature_cache.FeatureCache(tmp_path, {**CONFIG, **change}, DIM)
    assert other.dir != cache.dir and other.dir.parent == cache.dir.parent, change
    assert other.rows == {} and other.matrix().shape == (0, DIM), change
  assert len({p.name for p in tmp_path.iterdir()}) == 7
  meta = json.loads((cache.dir / 'config.json').read_text())
  assert meta == {**CONFIG, 'dim': DIM}


class _SlowRows:
  """Rows that take a moment to hand over their values (sleeping, so other threads run): an
  append that reads the file size before converting them and is not locked would interleave."""

  def __init__(self, rows: np.ndarray):
    self.rows = rows

  def __array__(self, dtype=None, copy=None):
    time.sleep(2e-4)
    return self.rows if dtype is None else self.rows.astype(dtype)


def test_concurrent_appends_lose_no_row(tmp_path):
  per_thread, batch, dim = 60, 3, 64

  def rows_of(writer, i):  # every value says which writer, append and position it belongs to
    return np.stack([np.full(dim, 1e4 * writer + 10 * i + j, np.float32) for j in range(batch)])

  def work(writer, cache):
    start.wait()
    for i in range(per_thread):
      cache.append([f'w{writer}-{i}-{j}' for j in range(batch)], _SlowRows(rows_of(writer, i)))

  # Two threads with caches of their own (as two runs) and two sharing one object.
  shared = feature_cache.FeatureCache(tmp_path, CONFIG, dim)
  caches = [feature_cache.FeatureCache(tmp_path, CONFIG, dim),
            feature_cache.FeatureCache(tmp_path, CONFIG, dim), shared, shared]
  start = threading.Barrier(len(caches))
  threads = [threading.Thread(target=work, args=(w, c)) for w, c in enumerate(caches)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  total = len(caches) * per_thread * batch
  reader = feature_cache.FeatureCache(tmp_path, CONFIG, dim)
  assert len(reader.rows) == total and sorted(reader.rows.values()) == list(range(total))
  assert len((reader.dir / 'index.tsv').read_text().splitlines()) == total
  assert reader.matrix().shape == (total, dim)
  assert len(shared.rows) == 2 * per_thread * batch
  digests = [f'w{w}-{i}-{j}' for w in range(len(caches)) for i in range(per_thread)
             for j in range(batch)]
  expected = np.concatenate([rows_of(w, i) for w in range(len(caches)) for i in range(per_thread)])
  np.testing.assert_array_equal(_assemble(reader, digests, None), expected)


def test_a_partial_row_of_a_crashed_writer_is_never_reused(tmp_path):
  cache = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  cache.append(['a', 'b'], _rows(2, 5))
  # A writer died after writing part of a row, before its index entries.
  with open(cache.dir / 'features.f32', 'ab') as f:
    f.write(b'\1' * 7)
  reopened = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert reopened.rows == {'a': 0, 'b': 1}
  # The partial row is padded out: the next rows start after it.
  reopened.append(['c', 'd'], _rows(2, 6))
  assert reopened.rows == {'a': 0, 'b': 1, 'c': 3, 'd': 4}
  final = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert final.rows == reopened.rows
  np.testing.assert_array_equal(_assemble(final, ['a', 'b', 'c', 'd'], None),
                                np.concatenate([_rows(2, 5), _rows(2, 6)]))


def _cut_last_index_line(tmp_path):
  """A cache whose writer died in the middle of its last index line (its row is written)."""
  cache = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  cache.append(['a', 'b', 'c'], _rows(3, 5))
  index = cache.dir / 'index.tsv'
  index.write_text(index.read_text()[:-2])  # 'c\t2\n' -> 'c\t'


def test_an_index_line_cut_by_a_crash_is_ignored(tmp_path):
  _cut_last_index_line(tmp_path)
  reopened = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert reopened.rows == {'a': 0, 'b': 1}  # 'c' is recomputed
  np.testing.assert_array_equal(reopened.matrix(), _rows(3, 5))


def test_appending_after_an_index_line_cut_by_a_crash(tmp_path):
  _cut_last_index_line(tmp_path)
  reopened = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  reopened.append(['c', 'd'], _rows(2, 6))
  final = feature_cache.FeatureCache(tmp_path, CONFIG, DIM)
  assert final.rows == {'a': 0, 'b': 1, 'c': 3, 'd': 4}
  np.testing.assert_array_equal(_assemble(final, ['a', 'b', 'c', 'd'], None),
                                np.concatenate([_rows(2, 5), _rows(2, 6)]))
