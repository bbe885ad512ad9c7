"""MCNCC kernels: FFT correlation of probe maps with a chunk of reference maps, jit-compiled.

All three correlations MCNCC needs are done in the frequency domain, over a canvas of
``(L1, L2)`` cells that holds every padded reference of the call for a group of probes:

* ``num_c``: the probe's centred, unit-norm channel ``a_c`` (zero off the mask) against the
  reference channel ``r_c``. As ``sum(a_c) = 0`` the window's mean drops out, so the window
  needs no centring.
* ``S1_c``, ``S2_c``: the mask against ``r_c`` and ``r_c^2``, giving each window's sum and sum of
  squares under the mask, so ``sum(b^2) = S2 - S1^2 / n``.

Why FFT, measured with ``kernels/bench_matching.py`` on the shared 2-core CPU this was written
on (FID-300 sizes: masked probes of 24-74 x 15-30 cells against references of 73 x 20-34, 256
channels, margin 0.5): the direct form costs 3 correlations of 2 n C flops per offset, ~3 GFLOP
per pair. XLA's convolution with the probe as the filter (``feature_group_count=C``) ran at
0.30 pairs/s, 1.1% of the machine's matmul rate; this FFT kernel at 16 pairs/s, bound by the
transforms themselves (93% of scipy.fft's rate on the same canvas). A direct form at the full
matmul rate would reach ~30 pairs/s, and only with many probes of one shape (for one probe it
is a matrix-vector product, bound by memory). On a GPU (not measured: none was available) FFT
should win too: cuFFT is bound by memory traffic, ~16 bytes per canvas cell, channel and
correlation, ~0.1 GB per FID-300 pair or ~25 us at an H200's 4.8 TB/s, while the direct
form's ~3 GFLOP take ~45 us at its ~67 TFLOP/s float32 rate (TF32 is ruled out).

Reference spectra are computed once per chunk and canvas and shared by all probes of that
canvas (:func:`plan` groups the probes by the canvas they need); each probe costs one inverse
FFT per channel and reference, plus two for the window statistics whenever its mask differs
from the previous probe's (probes are sorted by mask, so probes without masks and of one shape
share them).

Accuracy. Float32 FFT rounding is spread over every output: an output's error is about 1e-7
times the norm of the whole canvas, not of its window. Windows with little of the channel's
energy (mostly padding, or a near-constant patch) therefore carry relatively larger errors;
a window channel whose variance under the mask is at most ``FLAT_RTOL * n * E_c`` (``E_c``:
the reference channel's mean square over its cells) counts as flat (``ncc_c = 0``), and every
``ncc_c`` is clipped to [-1, 1], so such windows cannot produce large spurious scores.
"""

import functools
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

FLAT_RTOL = 1e-4
"""A channel is flat (``ncc_c = 0``) when its sum of squared deviations under the mask is at
most ``FLAT_RTOL`` times: for the probe, its sum of squares under the mask; for a reference
window, ``n`` times the reference channel's mean square over the reference's cells."""

NO_INDEX = np.iinfo(np.int32).max  # index of padding references: sorts after every real one
_MAX_GROUP = 256


def padding(size: int, ref_size: int, margin: float) -> tuple[int, int]:
  """(before, after) zero padding of a reference dimension of ``ref_size`` for a probe ``size``.

  ``pad = floor(margin * size + 0.5)`` on each side (half rounds up, not Python's banker's
  rounding, so 0.5 pads 1 and 2.5 pads 3); when the probe is still longer than the padded
  reference, both sides grow equally (an odd cell goes after) until exactly one offset fits.
  """
  pad = math.floor(margin * size + 0.5)
  short = size - (ref_size + 2 * pad)
  if short <= 0:
    return pad, pad
  return pad + short // 2, pad + short - short // 2


def fft_length(n: int) -> int:
  """The smallest length >= n with no prime factor above 7 (fast for ducc and cuFFT)."""
  best = n
  while True:
    m = best
    for prime in (2, 3, 5, 7):
      while m % prime == 0:
        m //= prime
    if m == 1:
      return best
    best += 1


def transform_probe(probe: np.ndarray, mask: np.ndarray, flip: bool,
                    angle: float) -> tuple[np.ndarray, np.ndarray]:
  """The probe map and mask mirrored left-right (if ``flip``), then rotated by ``angle``.

  Rotating the feature map (not the image) costs nothing beyond this resampling and needs no
  feature extractor, and for small angles a CNN's channels change little under rotation. For
  large angles, extract features of rotated images instead and pass them as separate probes.

  Rotation is counter-clockwise as displayed (rows down), in degrees, about the map's centre,
  into the bounding box of the rotated map, ``ceil(|h cos| + |w sin| - 1e-9)`` by
  ``ceil(|h sin| + |w cos| - 1e-9)``. Output cell (i, j) takes its value from the source point
  (u, v) (the cell centre rotated back) by bilinear interpolation over the masked neighbours
  only (weights renormalised, so background values do not bleed in); it is in the new mask
  when (u, v) lies in [0, h-1] x [0, w-1] and the weight of masked neighbours is >= 0.5.

  Args:
    probe: (h, w, C) float64.
    mask: (h, w) bool.
    flip: mirror left-right first.
    angle: degrees.

  Returns:
    (map (h', w', C) float64, mask (h', w') bool).
  """
  p = np.asarray(probe, np.float64)
  m = np.asarray(mask, bool)
  if flip:
    p, m = p[:, ::-1], m[:, ::-1]
  if angle == 0:
    return np.ascontiguousarray(p), np.ascontiguousarray(m)
  h, w, channels = p.shape
  theta = math.radians(angle)
  cos, sin = math.cos(theta), math.sin(theta)
  out_h = math.ceil(abs(h * cos) + abs(w * sin) - 1e-9)
  out_w = math.ceil(abs(h * sin) + abs(w * cos) - 1e-9)
  di = np.arange(out_h)[:, None] - (out_h - 1) / 2
  dj = np.arange(out_w)[None, :] - (out_w - 1) / 2
  u = cos * di + sin * dj + (h - 1) / 2
  v = -sin * di + cos * dj + (w - 1) / 2
  inside = (u >= -1e-9) & (u <= h - 1 + 1e-9) & (v >= -1e-9) & (v <= w - 1 + 1e-9)
  u0 = np.clip(np.floor(u), 0, max(h - 2, 0)).astype(int)
  v0 = np.clip(np.floor(v), 0, max(w - 2, 0)).astype(int)
  fu, fv = u - u0, v - v0
  weight = np.zeros((out_h, out_w))
  value = np.zeros((out_h, out_w, channels))
  for du, wu in ((0, 1 - fu), (1, fu)):
    for dv, wv in ((0, 1 - fv), (1, fv)):
      uu, vv = np.minimum(u0 + du, h - 1), np.minimum(v0 + dv, w - 1)
      wk = np.where(inside & (wu * wv > 0) & m[uu, vv], wu * wv, 0.0)
      weight += wk
      value += wk[..., None] * p[uu, vv]
  out_mask = inside & (weight >= 0.5)
  out = np.where(out_mask[..., None], value / np.where(out_mask, weight, 1.0)[..., None], 0.0)
  return out, out_mask


def prepare_probe(probe: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The probe centred under the mask, each channel scaled to unit norm, as float32.

  Done in float64 on the host, so the probe side is exact up to the final rounding; channels
  that are flat by ``FLAT_RTOL`` are all zero (``ncc_c = 0`` whatever the window). Rounding to
  float32 leaves ``sum(a_c)`` at ~1e-8 instead of 0, which lets ~1e-8 times the window's mean
  over its standard deviation into ``ncc_c``: far below the FFT's own rounding unless a window
  is nearly constant, and then it is flat.
  """
  p = np.asarray(probe, np.float64)
  m = np.asarray(mask, bool)
  cells = p[m]  # (n, C)
  centred = np.where(m[..., None], p - cells.mean(axis=0), 0.0)
  sum_sq = np.square(centred).sum(axis=(0, 1))
  flat = sum_sq <= FLAT_RTOL * np.square(cells).sum(axis=0)
  scale = np.where(flat, 0.0, 1.0 / np.sqrt(np.where(flat, 1.0, sum_sq)))
  return (centred * scale).astype(np.float32)


class ProbeGroup(NamedTuple):
  """Probes matched on one FFT canvas: padded to one shape, sorted by mask.

  Attributes:
    canvas: (L1, L2).
    a: (T, h, w, C) float32 from :func:`prepare_probe`, zero-padded.
    masks: (T, h, w) float32 0/1.
    counts: (T,) float32 mask cells n.
    geometry: (4, T) int32 rows: probe h, probe w, pad_y, pad_x.
    new_mask: (T,) bool, True where the mask differs from the previous probe's.
    members: (T,) int64 positions of these probes in the list given to :func:`plan`.
  """
  canvas: tuple[int, int]
  a: np.ndarray
  masks: np.ndarray
  counts: np.ndarray
  geometry: np.ndarray
  new_mask: np.ndarray
  members: np.ndarray


def plan(probes: list[tuple[np.ndarray, np.ndarray]], margin: float, ref_h: int,
         ref_w: int) -> list[ProbeGroup]:
  """Groups prepared probes (a, mask) by FFT canvas, minimising the estimated FFT work.

  Each probe needs a canvas of at least ``max(H + 2 pad, h)`` by the same in W, for the
  largest reference (H, W) of the call; on a larger canvas its cost grows with the area. A
  group costs, per reference and channel, its canvas area times (2 forward transforms of the
  reference, shared) + (per probe, 1 inverse transform + 2 for the window statistics, shared by
  the probes with the same mask). Sorted by their own canvas area, the probes are split into
  the contiguous groups of least total cost (dynamic programming): FID-300-like probes of
  heights 24-74 fall into a few groups instead of all paying for the largest canvas.
  """
  sizes = np.array([m.shape for _, m in probes], np.int64)
  pads = np.floor(margin * sizes + 0.5).astype(np.int64)  # padding()'s pad
  canvases = np.array([[fft_length(int(max(ref_h + 2 * py, h))),
                        fft_length(int(max(ref_w + 2 * px, w)))]
                       for (h, w), (py, px) in zip(sizes, pads)], np.int64)
  keys = [(m.shape, m.tobytes()) for _, m in probes]
  shares = {key: keys.count(key) for key in set(keys)}
  work = np.array([1.0 + 2.0 / shares[key] for key in keys])
  order = np.lexsort((canvases[:, 1], canvases[:, 0], canvases.prod(axis=1)))
  best = [0.0] + [math.inf] * len(order)
  start_of = [0] * (len(order) + 1)
  for stop in range(1, len(order) + 1):
    tall = wide = 0
    total = 2.0
    # Groups of at most _MAX_GROUP probes keep this quadratic search short; splitting a larger
    # group adds one pair of reference spectra per _MAX_GROUP probes (under 1% of its work).
    for start in range(stop - 1, max(stop - _MAX_GROUP, 0) - 1, -1):
      t = order[start]
      tall, wide = max(tall, canvases[t, 0]), max(wide, canvases[t, 1])
      total += work[t]
      cost = best[start] + tall * wide * total
      if cost < best[stop]:
        best[stop], start_of[stop] = cost, start
  bounds, stop = [], len(order)
  while stop:
    bounds.append((start_of[stop], stop))
    stop = start_of[stop]
  return [_group([probes[t] for t in order[i:j]], order[i:j], pads[order[i:j]],
                 tuple(int(v) for v in canvases[order[i:j]].max(axis=0)))
          for i, j in reversed(bounds)]


def _group(probes, members, pads, canvas) -> ProbeGroup:
  height = max(a.shape[0] for a, _ in probes)
  width = max(a.shape[1] for a, _ in probes)
  count = len(probes)
  a_all = np.zeros((count, height, width, probes[0][0].shape[2]), np.float32)
  masks = np.zeros((count, height, width), np.float32)
  for t, (a, m) in enumerate(probes):
    a_all[t, :a.shape[0], :a.shape[1]] = a
    masks[t, :m.shape[0], :m.shape[1]] = m
  # Probes sharing a mask (those without one, of one shape) share the window statistics:
  # sorted by mask, the kernel recomputes them only where the mask changes.
  first_of = {}
  key = np.array([first_of.setdefault(masks[t].tobytes(), t) for t in range(count)])
  order = np.argsort(key, kind='stable')
  new_mask = np.ones(count, bool)
  new_mask[1:] = key[order][1:] != key[order][:-1]
  sizes = np.array([m.shape for _, m in probes], np.int64)
  geometry = np.stack([sizes[:, 0], sizes[:, 1], pads[:, 0], pads[:, 1]]).astype(np.int32)
  return ProbeGroup(canvas, a_all[order], masks[order],
                    masks.sum(axis=(1, 2))[order].astype(np.float32), geometry[:, order],
                    new_mask, np.asarray(members)[order].astype(np.int64))


def _geometry(size, pad, ref_size):
  """Per (probe, reference): padding before, and the number of offsets, in one dimension."""
  short = jnp.maximum(size - ref_size - 2 * pad, 0)
  return pad + short // 2, jnp.maximum(ref_size + 2 * pad - size, 0) + 1


def _reference_spectra(refs, sizes, canvas):
  """Spectra of r and r^2 (N, C, L1, L2//2+1), mean squares E (N, C), non-finite flags (N,)."""
  big_h, big_w = refs.shape[1:3]
  inside = ((jnp.arange(big_h)[None, :, None] < sizes[:, 0, None, None])
            & (jnp.arange(big_w)[None, None, :] < sizes[:, 1, None, None]))[..., None]
  bad = jnp.any(inside & ~jnp.isfinite(refs), axis=(1, 2, 3))
  r = jnp.where(inside, refs, 0.0)  # also clears whatever a reused buffer held past the map
  r = jnp.transpose(r, (0, 3, 1, 2))  # FFTs run over the two last axes
  cells = jnp.maximum(sizes[:, 0] * sizes[:, 1], 1).astype(jnp.float32)
  energy = jnp.sum(r * r, axis=(2, 3)) / cells[:, None]
  bad = bad | ~jnp.all(jnp.isfinite(energy), axis=1)  # squares beyond float32's range
  spectrum = jnp.fft.rfft2(r, s=canvas)
  spectrum_sq = jnp.fft.rfft2(r * r, s=canvas)
  return spectrum, spectrum_sq, energy, bad


def _inverse_std(spectrum, spectrum_sq, energy, mask, n, canvas):
  """1/sqrt(sum(b^2)) of every window (N, C, L1, L2), 0 where the window channel is flat."""
  mask_spectrum = jnp.conj(jnp.fft.rfft2(mask, s=canvas))
  s1 = jnp.fft.irfft2(spectrum * mask_spectrum, s=canvas)
  s2 = jnp.fft.irfft2(spectrum_sq * mask_spectrum, s=canvas)
  var = s2 - s1 * s1 / n
  flat = var <= FLAT_RTOL * n * energy[:, :, None, None]
  return jnp.where(flat, 0.0, lax.rsqrt(jnp.where(flat, 1.0, var)))


def _score_canvas(spectrum, inv_std, a, canvas):
  """Mean over channels of the clipped NCC, at every circular shift of the canvas (N, L1, L2)."""
  probe_spectrum = jnp.conj(jnp.fft.rfft2(jnp.transpose(a, (2, 0, 1)), s=canvas))
  num = jnp.fft.irfft2(spectrum * probe_spectrum[None], s=canvas)
  return _channel_sum(jnp.clip(num * inv_std, -1.0, 1.0)) / num.shape[1]


def _channel_sum(x):
  """Sum over axis 1 as a fixed binary tree of element-wise additions.

  XLA:CPU's own reduction picks its order from the whole shape, so a pair's score changed in
  the last bit with the number of references in a chunk; a tree of additions gives the same
  bits for any chunking or number of devices (and sums pairwise, more accurately).
  """
  width = 1 << max(0, (x.shape[1] - 1).bit_length())
  if width != x.shape[1]:
    x = jnp.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2))  # exact zeros
  while x.shape[1] > 1:
    half = x.shape[1] // 2
    x = x[:, :half] + x[:, half:]
  return x[:, 0]


def _offsets_view(score, sizes, geometry):
  """The canvas's circular shifts rearranged so that index (y, x) is offset (y, x) of the
  padded reference; offsets that do not exist for a pair are -inf. (N, L1, L2)."""
  length_y, length_x = score.shape[1:]
  h, w, pad_y, pad_x = geometry[0], geometry[1], geometry[2], geometry[3]
  top, count_y = _geometry(h, pad_y, sizes[:, 0])
  left, count_x = _geometry(w, pad_x, sizes[:, 1])
  # Offset y of the padded reference puts the probe's first row on reference row y - top.
  rows = (jnp.arange(length_y)[None, :] - top[:, None]) % length_y
  cols = (jnp.arange(length_x)[None, :] - left[:, None]) % length_x
  view = jnp.take_along_axis(score, rows[:, :, None], axis=1)
  view = jnp.take_along_axis(view, cols[:, None, :], axis=2)
  valid = ((jnp.arange(length_y)[None, :, None] < count_y[:, None, None])
           & (jnp.arange(length_x)[None, None, :] < count_x[:, None, None])
           & (sizes[:, 0, None, None] > 0))
  return jnp.where(valid, view, -jnp.inf)


def chunk_scores(refs, sizes, a, masks, counts, geometry, new_mask, *,
                 canvas: tuple[int, int], full: bool = False):
  """Best score and offset of every (probe, reference) pair of a chunk.

  Args:
    refs: (N, H, W, C) float32 reference maps, each in its top-left (sizes[i]) corner.
    sizes: (N, 2) int32 (H_i, W_i); (0, 0) for padding rows (their scores are -inf).
    a: (T, h, w, C) float32 probes from :func:`prepare_probe`, padded with zeros.
    masks: (T, h, w) float32 0/1.
    counts: (T,) float32 mask cells n.
    geometry: (4, T) int32 rows: probe h, probe w, pad_y, pad_x (from ``padding``'s pad).
    new_mask: (T,) bool, True where a probe's mask differs from the previous probe's (True
      for probe 0): the window statistics are recomputed only there.
    canvas: (L1, L2) FFT size, at least every padded reference's size.
    full: also return every pair's (L1, L2) offset view (small inputs only).

  Returns:
    (best (T, N) float32, its offset y (T, N) int32, x (T, N) int32, non-finite flags (N,)
    bool), and with ``full`` the views (T, N, L1, L2).
  """
  spectrum, spectrum_sq, energy, bad = _reference_spectra(refs, sizes, canvas)
  shape = (refs.shape[0], refs.shape[3]) + tuple(canvas)

  def per_probe(carry, xs):
    a_t, mask_t, n_t, geometry_t, new_t = xs
    inv_std = lax.cond(
        new_t, lambda: _inverse_std(spectrum, spectrum_sq, energy, mask_t, n_t, canvas),
        lambda: carry)
    score = _score_canvas(spectrum, inv_std, a_t, canvas)
    view = _offsets_view(score, sizes, geometry_t)
    flat_view = view.reshape(view.shape[0], -1)
    where = jnp.argmax(flat_view, axis=1).astype(jnp.int32)  # the first of equal maxima
    best = jnp.take_along_axis(flat_view, where[:, None], axis=1)[:, 0]
    out = (best, where, view) if full else (best, where)
    return inv_std, out

  # Built from the references (not jnp.zeros) so that under shard_map the carry varies over
  # devices like the statistics that replace it.
  init = jnp.broadcast_to(jnp.zeros_like(energy)[:, :, None, None], shape)
  _, out = lax.scan(per_probe, init, (a, masks, counts, geometry.T, new_mask))
  y, x = jnp.divmod(out[1], canvas[1])
  return (out[0], y, x, bad) + ((out[2],) if full else ())


@functools.partial(jax.jit, static_argnames=('canvas',))
def score_views(refs, sizes, a, masks, counts, geometry, new_mask, *, canvas):
  """:func:`chunk_scores` with every pair's offset view, on one device (small inputs)."""
  return chunk_scores(refs, sizes, a, masks, counts, geometry, new_mask, canvas=canvas,
                      full=True)
