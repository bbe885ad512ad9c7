"""fwjax.matching against the literal float64 loop of fwjax.matching.reference: score maps over
shapes, margins and masks, pair scores with transforms, flat channels, the properties MCNCC must
have (a cut-out scores 1, per-channel affine invariance), chunked == unchunked, sharded == one
device, memory-mapped input, and every documented bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fwjax import matching
from fwjax.matching import kernels, reference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Float32 FFT correlation vs float64 loops, on maps whose windows hold a fair share of their
# channel's energy (uniform or ReLU-like values, C >= 6): observed errors are ~1e-7 to 5e-6.
SCORE_ATOL = 1e-5


def _relu_maps(rng, shape):
  """Non-negative, partly zero values like a CNN's features after a ReLU."""
  return np.maximum(rng.normal(size=shape) - 0.3, 0.0)


def _assert_same_best(got: matching.Matches, p: int, n: int, probe, ref, mask, margin,
                      flip=False, rotations=()):
  """Score within SCORE_ATOL of the float64 loop; offset and transform equal when the best is
  clear of the runner-up (float32 may swap near-ties)."""
  want_score, want_offset, want_t = reference.mcncc_pair(probe, ref, mask, margin, flip,
                                                         rotations)
  assert abs(got.scores[p, n] - want_score) < SCORE_ATOL, (p, n)
  runner_up = -np.inf
  t = 0
  for f in ((False, True) if flip else (False,)):
    for angle in (0.0, *rotations):
      pt, mt = reference.transform_probe(probe, mask, f, angle)
      values = np.sort(reference.ncc_map(pt, ref, mt, margin).ravel())
      runner_up = max(runner_up, values[-2] if t == want_t else values[-1])
      t += 1
  if want_score - runner_up > 1e-4:
    assert tuple(got.offsets[p, n]) == tuple(want_offset), (p, n)
    assert got.transforms[p, n] == want_t, (p, n)


@pytest.mark.parametrize('probe_shape,ref_shape,margin,masked', [
    ((5, 4), (11, 9), 0.5, False),
    ((5, 4), (11, 9), 0.0, True),
    ((6, 3), (8, 12), 0.25, True),
    ((7, 7), (9, 8), 1.0, False),
    ((1, 1), (4, 3), 0.5, False),  # one cell: every window is flat, every score 0
    ((12, 3), (6, 8), 0.5, True),  # taller than the padded reference: padded further
])
def test_score_map_matches_reference(probe_shape, ref_shape, margin, masked):
  rng = np.random.default_rng(sum(probe_shape) * 31 + sum(ref_shape))
  probe = _relu_maps(rng, (*probe_shape, 6))
  ref = _relu_maps(rng, (*ref_shape, 6))
  mask = None
  if masked:
    mask = rng.random(probe_shape) > 0.3
    mask[0, 0] = mask[-1, -1] = True
  got = matching.score_map(probe, ref, probe_mask=mask, margin=margin)
  want = reference.ncc_map(probe, ref, mask, margin)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=SCORE_ATOL)


def test_padding_rounds_half_up_and_grows_until_one_offset_fits():
  assert matching.padding(5, 20, 0.5) == (3, 3)  # 2.5 -> 3 (Python's round gives 2)
  assert matching.padding(3, 20, 0.5) == (2, 2)  # 1.5 -> 2
  assert matching.padding(4, 20, 0.0) == (0, 0)
  assert matching.padding(30, 20, 0.1) == (5, 5)  # pad 3, then 4 more cells, 2 each side
  assert matching.padding(31, 20, 0.1) == (5, 6)  # pad 3, then 5 more: the odd one after
  for size, ref_size, margin in [(30, 20, 0.1), (31, 20, 0.1), (9, 2, 0.0)]:
    before, after = matching.padding(size, ref_size, margin)
    assert ref_size + before + after - size + 1 == 1  # exactly one offset
  rng = np.random.default_rng(0)
  scores = matching.score_map(rng.random((9, 3, 4)), rng.random((4, 6, 4)), margin=0.2)
  assert scores.shape == (1, 6)  # 4 + 2 + 2 < 9 rows: one; 6 + 2 columns: 6 offsets


def test_pairs_of_mixed_sizes_with_masks_and_transforms():
  rng = np.random.default_rng(7)
  probes = [_relu_maps(rng, s) for s in [(5, 4, 6), (4, 6, 6), (7, 3, 6)]]
  masks = [rng.random(p.shape[:2]) > 0.25 for p in probes]
  masks[1] = None  # a probe without a mask among masked ones
  refs = [_relu_maps(rng, s) for s in [(9, 7, 6), (7, 9, 6), (10, 6, 6), (8, 8, 6)]]
  probes[0] = refs[2][3:8, 1:5] * 2.0 + 0.5  # one true match (an affine copy)
  masks[0] = np.ones((5, 4), bool)
  flip, rotations = True, (12.0,)
  got = matching.mcncc(probes, refs, probe_masks=masks, margin=0.5, flip=flip,
                       rotations=rotations)
  assert got.scores.shape == (3, 4) and got.offsets.shape == (3, 4, 2)
  for p, (probe, mask) in enumerate(zip(probes, masks)):
    for n, ref in enumerate(refs):
      _assert_same_best(got, p, n, probe, ref, mask, 0.5, flip, rotations)
  top, _ = matching.padding(5, 10, 0.5)
  left, _ = matching.padding(4, 6, 0.5)
  assert got.scores[0, 2] == pytest.approx(1.0, abs=1e-5)
  assert tuple(got.offsets[0, 2]) == (3 + top, 1 + left) and got.transforms[0, 2] == 0
  assert matching.transforms(flip, rotations) == [(False, 0.0), (False, 12.0), (True, 0.0),
                                                  (True, 12.0)]


def test_rotation_matches_the_literal_loop_and_keeps_right_angles_exact():
  rng = np.random.default_rng(2)
  probe, mask = rng.random((5, 4, 3)), rng.random((5, 4)) > 0.3
  for flip in (False, True):
    for angle in (7.0, -20.0, 45.0, 90.0):
      got, got_mask = kernels.transform_probe(probe, mask, flip, angle)
      want, want_mask = reference.transform_probe(probe, mask, flip, angle)
      np.testing.assert_array_equal(got_mask, want_mask)
      np.testing.assert_allclose(got, want, atol=1e-12)
  turned, turned_mask = kernels.transform_probe(probe, mask, False, 90.0)
  # counter-clockwise as displayed: the right column becomes the top row; cells off the mask
  # stay off it (and hold 0)
  np.testing.assert_array_equal(turned_mask, np.rot90(mask, 1))
  np.testing.assert_allclose(turned, np.rot90(probe * mask[..., None], 1), atol=1e-12)


def test_flat_channels_score_zero_like_the_reference():
  rng = np.random.default_rng(5)
  probe = _relu_maps(rng, (4, 4, 6))
  ref = _relu_maps(rng, (9, 8, 6))
  probe[:, :, 0] = 3.0  # a constant probe channel
  probe[:, :, 1] = 2.0 + 1e-9 * rng.random((4, 4))  # below FLAT_RTOL: flat
  ref[:, :, 2] = 0.0  # an empty reference channel
  ref[:, :, 3] = 0.7  # constant: flat inside, not where a window meets the padding
  ref[:4, :4, 4] = 5.0 + 1e-8 * rng.random((4, 4))  # a near-constant patch of one channel
  got = matching.score_map(probe, ref, margin=0.5)
  want = reference.ncc_map(probe, ref, None, 0.5)
  np.testing.assert_allclose(got, want, atol=SCORE_ATOL)
  zeros = np.zeros((4, 4, 6))
  assert not matching.score_map(zeros, ref).any()  # every channel flat: 0 everywhere
  assert np.isfinite(got).all()


def test_cut_out_probe_scores_one_at_its_offset_and_ranks_first():
  rng = np.random.default_rng(11)
  refs = _relu_maps(rng, (12, 10, 8, 16)).astype(np.float32)
  probe = refs[7, 2:8, 3:7]
  mask = np.ones((6, 4), bool)
  mask[0, :2] = False
  result = matching.topk([probe], refs, 3, probe_masks=[mask], margin=0.5)
  top, _ = matching.padding(6, 10, 0.5)
  left, _ = matching.padding(4, 8, 0.5)
  assert result.indices[0, 0] == 7
  assert result.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
  assert tuple(result.offsets[0, 0]) == (2 + top, 3 + left)
  assert result.scores[0, 1] < 0.9


def test_invariant_to_per_channel_affine_change_of_the_probe():
  rng = np.random.default_rng(12)
  refs = _relu_maps(rng, (6, 9, 7, 8))
  probe = _relu_maps(rng, (5, 4, 8))
  mask = rng.random((5, 4)) > 0.2
  scale = rng.uniform(0.01, 50.0, 8)
  shift = rng.uniform(-10.0, 10.0, 8)
  base = matching.mcncc([probe], refs, probe_masks=[mask])
  moved = matching.mcncc([probe * scale + shift], refs, probe_masks=[mask])
  np.testing.assert_allclose(moved.scores, base.scores, atol=1e-6)
  np.testing.assert_array_equal(moved.offsets, base.offsets)


def _collection(seed: int = 3):
  rng = np.random.default_rng(seed)
  refs = _relu_maps(rng, (23, 9, 7, 6)).astype(np.float32)
  sizes = np.stack([rng.integers(5, 10, 23), rng.integers(4, 8, 23)], axis=1)
  refs[15] = refs[4]  # an exact tie: the lower index ranks first
  sizes[15] = sizes[4]
  probes = [_relu_maps(rng, (4, 3, 6)), refs[4, 1:5, 0:4].copy(), _relu_maps(rng, (6, 2, 6))]
  masks = [None, np.ones((4, 4), bool), rng.random((6, 2)) > 0.2]
  return probes, masks, refs, sizes


def test_chunked_equals_unchunked_bit_for_bit():
  probes, masks, refs, sizes = _collection()
  kwargs = {'probe_masks': masks, 'reference_sizes': sizes, 'flip': True}
  whole = matching.mcncc(probes, refs, chunk_size=1000, **kwargs)
  for chunk in (1, 5, 8):
    part = matching.mcncc(probes, refs, chunk_size=chunk, **kwargs)
    for got, want in zip(part[:3], whole[:3]):
      np.testing.assert_array_equal(got, want)
    top = matching.topk(probes, refs, 6, chunk_size=chunk, **kwargs)
    order = np.lexsort((np.arange(23)[None].repeat(3, 0), -whole.scores), axis=1)[:, :6]
    np.testing.assert_array_equal(top.indices, order)
    np.testing.assert_array_equal(top.scores, np.take_along_axis(whole.scores, order, 1))
    np.testing.assert_array_equal(top.offsets,
                                  np.take_along_axis(whole.offsets, order[..., None], 1))
  ranked = matching.rank(probes, refs, **kwargs)
  assert ranked.indices[1, 0] == 4 and ranked.indices[1, 1] == 15  # tie: lower index first
  np.testing.assert_array_equal(ranked.scores, -np.sort(-whole.scores, axis=1))


def test_variable_sizes_equal_separate_maps():
  probes, masks, refs, sizes = _collection()
  packed = matching.mcncc(probes, refs, probe_masks=masks, reference_sizes=sizes)
  maps = [refs[i, :h, :w] for i, (h, w) in enumerate(sizes)]
  listed = matching.mcncc(probes, maps, probe_masks=masks)
  np.testing.assert_allclose(listed.scores, packed.scores, atol=1e-6)
  for n in (0, 4, 9):
    for p in range(3):
      _assert_same_best(packed, p, n, probes[p], maps[n], masks[p], matching.DEFAULT_MARGIN)


def test_memmap_path_and_jax_inputs_match_ndarray(tmp_path):
  probes, masks, refs, sizes = _collection(4)
  maps = [refs[i, :h, :w] for i, (h, w) in enumerate(sizes)]
  stored, stored_sizes = matching.pack_references(maps, tmp_path / 'refs.npy')
  assert isinstance(stored, np.memmap)
  want = matching.topk(probes, refs, 5, probe_masks=masks, reference_sizes=sizes)
  for source in (tmp_path / 'refs.npy', stored, jax.numpy.asarray(stored)):
    got = matching.topk(probes, source, 5, probe_masks=masks, reference_sizes=stored_sizes,
                        chunk_size=4)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)


_ONE_DEVICE = """
import json, sys
import jax
sys.path.insert(0, 'tests/matching')
from test_mcncc import _collection
from fwjax import matching
assert jax.local_device_count() == 1
probes, masks, refs, sizes = _collection()
got = matching.mcncc(probes, refs, probe_masks=masks, reference_sizes=sizes, rotations=(9,),
                     chunk_size=5)
json.dump([got.scores.tolist(), got.offsets.tolist(), got.transforms.tolist()], sys.stdout)
"""


def test_four_fake_devices_equal_one():
  assert jax.local_device_count() == 4
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', _ONE_DEVICE], capture_output=True, text=True,
                        env=env, cwd=REPO, check=True)
  single = json.loads(done.stdout)
  probes, masks, refs, sizes = _collection()
  got = matching.mcncc(probes, refs, probe_masks=masks, reference_sizes=sizes, rotations=(9,),
                       chunk_size=5)
  np.testing.assert_array_equal(got.scores, np.asarray(single[0], np.float32))
  np.testing.assert_array_equal(got.offsets, np.asarray(single[1]))
  np.testing.assert_array_equal(got.transforms, np.asarray(single[2]))


def test_bad_inputs_name_the_probe_or_reference():
  rng = np.random.default_rng(9)
  refs = rng.random((6, 5, 5, 3), dtype=np.float32)
  probe = rng.random((3, 3, 3))
  bad = refs.copy()
  bad[4, 2, 1, 0] = np.nan
  with pytest.raises(ValueError, match='reference 4 has a NaN'):
    matching.topk([probe], bad, 2, chunk_size=4)
  bad[4, 2, 1, 0] = 0.0
  bad[2, 4, 4, 2] = np.inf  # outside reference 2's size: never read
  sizes = np.full((6, 2), 5)
  sizes[2] = (3, 3)
  assert np.isfinite(matching.mcncc([probe], bad, reference_sizes=sizes).scores).all()
  with pytest.raises(ValueError, match='reference 2 has a NaN or Inf'):
    matching.mcncc([probe], bad)
  huge = refs.copy()
  huge[5, 0, 0, 1] = 1e30  # finite, but its square is not
  with pytest.raises(ValueError, match='reference 5 .* overflow float32'):
    matching.rank([probe], huge)
  with pytest.raises(ValueError, match='reference 0 has a NaN'):
    matching.score_map(probe, huge[5])
  nan_probe = probe.copy()
  nan_probe[1, 1, 1] = np.inf
  with pytest.raises(ValueError, match='probe 1 has a NaN or Inf'):
    matching.mcncc([probe, nan_probe], refs)
  with pytest.raises(ValueError, match='probe 0 has 4 channels, the references 3'):
    matching.mcncc([rng.random((3, 3, 4))], refs)
  with pytest.raises(ValueError, match='probe 1: its mask has no true cell'):
    matching.mcncc([probe, probe], refs, probe_masks=[None, np.zeros((3, 3), bool)])
  with pytest.raises(ValueError, match='probe 0: mask of shape'):
    matching.mcncc([probe], refs, probe_masks=[np.ones((2, 3), bool)])
  with pytest.raises(ValueError, match='probe 0: expected a non-empty'):
    matching.mcncc([np.zeros((0, 3, 3))], refs)
  with pytest.raises(ValueError, match='references: expected a non-empty'):
    matching.mcncc([probe], np.zeros((2, 0, 5, 3)))
  with pytest.raises(ValueError, match='reference 1: size'):
    matching.mcncc([probe], refs, reference_sizes=[[5, 5], [0, 5], [5, 5], [5, 5], [5, 5],
                                                   [5, 5]])
  with pytest.raises(ValueError, match='margin'):
    matching.mcncc([probe], refs, margin=-0.1)
  with pytest.raises(ValueError, match='rotations'):
    matching.mcncc([probe], refs, rotations=(0.0,))
  with pytest.raises(ValueError, match='k: must be in'):
    matching.topk([probe], refs, 7)


def test_probes_far_apart_in_size_get_their_own_canvas():
  rng = np.random.default_rng(13)
  small = (_relu_maps(rng, (2, 2, 6)), np.ones((2, 2), bool))
  large = (_relu_maps(rng, (30, 9, 6)), np.ones((30, 9), bool))
  similar = (_relu_maps(rng, (3, 2, 6)), np.ones((3, 2), bool))
  groups = kernels.plan([small, large, similar], 0.5, 10, 8)
  assert sorted(sorted(g.members.tolist()) for g in groups) == [[0, 2], [1]]
  assert groups[0].canvas[0] < groups[1].canvas[0]
  refs = _relu_maps(rng, (3, 10, 8, 6))
  probes = [p for p, _ in (small, large, similar)]
  got = matching.mcncc(probes, refs)
  for p, probe in enumerate(probes):
    for n in range(3):
      _assert_same_best(got, p, n, probe, refs[n], None, matching.DEFAULT_MARGIN)
