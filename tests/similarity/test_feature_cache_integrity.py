"""The feature cache does not trust its file: altered and cut-off rows are found and named.

Issue 16, finding 2: one altered row of ``features.f32`` silently changed a ranking, and a
truncated file ended in an IndexError. Rows are now checked against a CRC-32 each when read.
"""

import logging

import numpy as np
import pytest

from fwjax.similarity import feature_cache

DIM = 6


def _cache(tmp_path, rows=10, seed=0):
  cache = feature_cache.FeatureCache(tmp_path / 'cache', {'model': 'test'}, DIM)
  features = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
  digests = [f'{i:064x}' for i in range(rows)]
  cache.append(digests[:4], features[:4])
  cache.append(digests[4:], features[4:])
  return cache, digests, features


def test_intact_rows_assemble_in_order(tmp_path):
  cache, digests, features = _cache(tmp_path)
  order = [7, 0, 3, 3, 9]
  out, damaged = feature_cache.assemble(cache, [digests[i] for i in order], None)
  np.testing.assert_array_equal(out, features[order])
  assert damaged == []
  # Another process opening the same cache reads the same index and checksums.
  again = feature_cache.FeatureCache(tmp_path / 'cache', {'model': 'test'}, DIM)
  assert again.rows == cache.rows and again.checksums == cache.checksums


def test_an_altered_row_is_found_and_named(tmp_path, caplog):
  cache, digests, features = _cache(tmp_path)
  data = bytearray(cache.data_path.read_bytes())
  data[4 * DIM * 5 + 3] ^= 0x01  # one bit of row 5
  cache.data_path.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING):
    out, damaged = feature_cache.assemble(cache, digests[3:8], None)
  assert damaged == [2]  # digests[5] is the third one asked for
  np.testing.assert_array_equal(out[[0, 1, 3, 4]], features[[3, 4, 6, 7]])
  assert not out[2].any()  # a damaged row never reaches the caller as if it were features
  assert str(cache.data_path) in caplog.text and 'rows 5' in caplog.text
  assert 'checksum' in caplog.text


def test_a_truncated_file_is_found_and_named(tmp_path, caplog):
  cache, digests, features = _cache(tmp_path)
  cut = 4 * DIM * 7 + 5  # 7 complete rows and a part of row 7
  cache.data_path.write_bytes(cache.data_path.read_bytes()[:cut])
  with caplog.at_level(logging.WARNING):
    out, damaged = feature_cache.assemble(cache, digests, None)
  assert damaged == [7, 8, 9]
  np.testing.assert_array_equal(out[:7], features[:7])
  assert str(cache.data_path) in caplog.text and f'{cut} bytes' in caplog.text
  assert 'rows 7, 8, 9' in caplog.text
  # Rows appended after a truncation get new numbers; the old index lines that point at them
  # fail their checksums instead of reading another image's features.
  cache.forget([digests[9]])
  cache.append([digests[9]], features[9:])
  out, damaged = feature_cache.assemble(cache, digests, None)
  assert damaged == [7, 8]
  np.testing.assert_array_equal(out[9], features[9])


def test_malformed_index_lines_are_ignored_with_a_warning(tmp_path, caplog):
  cache, digests, _ = _cache(tmp_path)
  index = cache.dir / 'index.tsv'
  lines = index.read_text().splitlines(keepends=True)
  lines[2] = 'not\ta row\n'
  index.write_text(''.join(lines) + digests[0][:10])  # and a last line cut short by a crash
  with caplog.at_level(logging.WARNING):
    again = feature_cache.FeatureCache(tmp_path / 'cache', {'model': 'test'}, DIM)
  assert digests[2] not in again.rows and len(again.rows) == 9
  assert 'malformed' in caplog.text and '(lines 3)' in caplog.text


@pytest.mark.parametrize('rows', [1, feature_cache._ASSEMBLE_CHUNK + 3])
def test_streamed_assembly_checks_every_chunk(tmp_path, rows):
  cache, digests, features = _cache(tmp_path, rows=max(rows, 5))
  data = bytearray(cache.data_path.read_bytes())
  last = len(digests) - 1
  data[4 * DIM * last] ^= 0x80
  cache.data_path.write_bytes(bytes(data))
  _, damaged = feature_cache.assemble(cache, digests, tmp_path / 'out.npy')
  assert damaged == [last]
  np.testing.assert_array_equal(np.load(tmp_path / 'out.npy')[:last], features[:last])
