"""Spatial matching in the similarity job: feature maps per image, MCNCC rankings, shortlist."""

import csv

import numpy as np
import pytest
from PIL import Image

from fwjax import matching
from fwjax.models import feature_model, imagenet
from fwjax.similarity import job, spatial
from fwjax.similarity.config import SimilarityConfig


@pytest.fixture(scope='module')
def model():
  return feature_model.build_model(None, arch='vgg16', width=8, seed=0)


def _save(path, array):
  Image.fromarray(array).save(path)
  return path


def test_maps_keep_each_images_shape_and_values(model, tmp_path):
  rng = np.random.default_rng(0)
  exact = _save(tmp_path / 'exact.png', rng.integers(0, 256, (128, 64), dtype=np.uint8))
  odd = _save(tmp_path / 'odd.png', rng.integers(0, 256, (150, 90), dtype=np.uint8))
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not an image')
  maps = spatial.extract_maps(model, [exact, bad, odd], stage='block3', scale=1.0,
                              batch_size=2, progress=False)
  assert maps.paths == [exact, odd] and maps.skipped[0][0] == bad
  # block3 is two 2x2 pools down: a map covers ceil(size / 4) cells of its own image.
  assert maps.maps[0].shape == (32, 16, 32) and maps.maps[1].shape == (38, 23, 32)
  # An image whose size is a multiple of 32 needs no padding: its map is the body's output.
  grey = np.asarray(Image.open(exact))
  rgb = np.stack([grey] * 3, axis=-1)[None]
  _, feats = model.module.apply(model.variables, imagenet.preprocess_for('vgg16')(rgb))
  np.testing.assert_allclose(maps.maps[0], np.asarray(feats['block3'][0]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(maps.pooled()[1], maps.maps[1].mean(axis=(0, 1)), rtol=1e-6)


def test_rank_orders_by_mcncc_and_the_shortlist_reranks_its_top(model, tmp_path):
  rng = np.random.default_rng(1)
  refs = [rng.random((12 + i % 3, 6 + i % 2, 8)).astype(np.float32) for i in range(9)]
  items = spatial.MapSet(refs, [tmp_path / f'{i}' for i in range(9)], [], 0.0)
  probes = [[refs[4][2:9, 1:5]], [refs[7][3:10, 0:6]]]
  dist, order = spatial.rank(probes, items, margin=0.25, flip=False, rotations=())
  packed, sizes = matching.pack_references(refs)
  scores = matching.mcncc([p[0] for p in probes], packed, reference_sizes=sizes,
                          margin=0.25).scores
  np.testing.assert_array_equal(order, np.argsort(-scores, axis=1, kind='stable'))
  np.testing.assert_allclose(dist, 1 - np.take_along_axis(scores, order, 1), atol=1e-6)
  assert list(order[:, 0]) == [4, 7]  # a cut-out finds its own reference first
  pooled = np.stack([p[0].mean(axis=(0, 1)) for p in probes])
  full = spatial.rank(probes, items, margin=0.25, flip=False, rotations=(), shortlist=9,
                      pooled_queries=pooled)
  np.testing.assert_array_equal(full[1], order)
  short_dist, short = spatial.rank(probes, items, margin=0.25, flip=False, rotations=(),
                                   shortlist=3, pooled_queries=pooled)
  for q in range(2):  # the top 3 are the MCNCC order of the 3 candidates; the rest follow
    top = short[q, :3]
    np.testing.assert_array_equal(top, top[np.argsort(-scores[q, top], kind='stable')])
    assert np.isinf(short_dist[q, 3:]).all() and sorted(short[q]) == list(range(9))


def test_job_ranks_with_mcncc_and_writes_what_global_ranking_writes(tmp_path):
  config = SimilarityConfig(out_dir=str(tmp_path / 'out'), synthetic=5,
                            synthetic_probes_per_model=1, random_width=8, arch='vgg16',
                            stage='block3', matcher='mcncc', match_scale=0.5, margin=0.25,
                            flip=True, batch_size=4, progress=False)
  summary = job.run_similarity(config)
  assert summary['metric'] == 'mcncc' and summary['num_queries'] == 5
  assert 'mcncc margin=0.25 flip=True' in summary['features']
  ranked = next((tmp_path / 'out' / 'R1' / 'mcncc').glob('*.csv'))
  with open(ranked) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5 and [int(r['rank']) for r in rows] == [1, 2, 3, 4, 5]
  values = [float(r['mcncc']) for r in rows]
  assert values == sorted(values) and all(0 <= v <= 2 for v in values)
  assert (tmp_path / 'out' / 'cmc.png').is_file()


def test_bad_settings_name_the_flag(tmp_path):
  base = dict(out_dir=str(tmp_path), synthetic=3, arch='vgg16', matcher='mcncc')
  with pytest.raises(ValueError, match='--matcher=mcncc needs a spatial --stage'):
    job.run_similarity(SimilarityConfig(**base, stage='features'))
  with pytest.raises(ValueError, match='--fusion=mean_feature'):
    job.run_similarity(SimilarityConfig(**base, stage='block3', fusion='mean_feature'))
  with pytest.raises(ValueError, match='--match_scale must be > 0'):
    job.run_similarity(SimilarityConfig(**base, stage='block3', match_scale=0))
  with pytest.raises(ValueError, match="--matcher='nearest'"):
    job.run_similarity(SimilarityConfig(**dict(base, matcher='nearest'), stage='block3'))
