"""Plain numpy float64 MCNCC, written as literally as the definition reads (tests only).

Loops over offsets and channels one at a time, with no FFT, no expanded variance formula and no
batching, so that the jitted kernels in :mod:`fwjax.matching.kernels` have an independent
statement of the semantics to be compared with. Slow: use it on small maps.

The geometry (``padding``) and the flat-channel rule (``FLAT_RTOL``) are the ones documented
in :mod:`fwjax.matching`; they are restated here rather than imported, so that a change to one
side shows up as a test failure.
"""

import math

import numpy as np

FLAT_RTOL = 1e-4


def padding(size: int, ref_size: int, margin: float) -> tuple[int, int]:
  """(before, after) zero padding of a reference dimension for a probe dimension ``size``."""
  pad = math.floor(margin * size + 0.5)
  short = size - (ref_size + 2 * pad)
  if short <= 0:
    return pad, pad
  return pad + short // 2, pad + short - short // 2


def ncc_map(probe: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
            margin: float = 0.5) -> np.ndarray:
  """MCNCC at every offset of the probe inside the padded reference, shape (ny, nx).

  Args:
    probe: (h, w, C).
    reference: (H, W, C).
    mask: (h, w) bool, True on the probe's cells that count (default: all).
    margin: padding of the reference, in units of the probe's size.

  Returns:
    float64 (ny, nx): entry (y, x) is the mean over channels of the normalised
    cross-correlation of the probe with the window of the padded reference whose top-left cell
    is (y, x).
  """
  p = np.asarray(probe, np.float64)
  r = np.asarray(reference, np.float64)
  h, w, channels = p.shape
  big_h, big_w, _ = r.shape
  m = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
  top, bottom = padding(h, big_h, margin)
  left, right = padding(w, big_w, margin)
  padded = np.zeros((big_h + top + bottom, big_w + left + right, channels))
  padded[top:top + big_h, left:left + big_w] = r
  # The scale that decides whether a window's channel is flat: the reference channel's mean
  # square over its own cells (the padding excluded), times the number of mask cells.
  energy = (r**2).reshape(-1, channels).mean(axis=0)
  n = int(m.sum())
  ny, nx = padded.shape[0] - h + 1, padded.shape[1] - w + 1
  out = np.empty((ny, nx))
  for y in range(ny):
    for x in range(nx):
      window = padded[y:y + h, x:x + w]
      total = 0.0
      for c in range(channels):
        pc = p[:, :, c][m]
        qc = window[:, :, c][m]
        a = pc - pc.mean()
        b = qc - qc.mean()
        saa = (a * a).sum()
        sbb = (b * b).sum()
        if saa <= FLAT_RTOL * (pc * pc).sum() or sbb <= FLAT_RTOL * n * energy[c]:
          continue  # a flat channel carries no evidence: ncc_c = 0
        total += (a * b).sum() / math.sqrt(saa * sbb)
      out[y, x] = total / channels
  return out


def best_offset(scores: np.ndarray) -> tuple[float, tuple[int, int]]:
  """(maximum, its (y, x)); ties go to the first offset in row-major order."""
  flat = int(np.argmax(scores))  # numpy returns the first of equal maxima
  return float(scores.reshape(-1)[flat]), divmod(flat, scores.shape[1])


def transform_probe(probe: np.ndarray, mask: np.ndarray | None, flip: bool,
                    angle: float) -> tuple[np.ndarray, np.ndarray]:
  """The probe map and mask mirrored left-right (if ``flip``), then rotated by ``angle``.

  Rotation is counter-clockwise as displayed (rows down), in degrees, about the map's centre.
  The output is the bounding box of the rotated map, ``ceil(|h cos| + |w sin|)`` by
  ``ceil(|h sin| + |w cos|)`` less 1e-9 (so right angles give exact sizes). Output cell (i, j)
  takes its value from source point (u, v) (inverse rotation of the cell centre) by bilinear
  interpolation over the masked neighbours only (weights renormalised, so background does not
  bleed in); it is valid when (u, v) lies in [0, h-1] x [0, w-1] and the bilinear weight of
  masked neighbours is at least 0.5.
  """
  p = np.asarray(probe, np.float64)
  h, w, channels = p.shape
  m = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
  if flip:
    p, m = p[:, ::-1], m[:, ::-1]
  if angle == 0:
    return p.copy(), m.copy()
  theta = math.radians(angle)
  cos, sin = math.cos(theta), math.sin(theta)
  out_h = math.ceil(abs(h * cos) + abs(w * sin) - 1e-9)
  out_w = math.ceil(abs(h * sin) + abs(w * cos) - 1e-9)
  out = np.zeros((out_h, out_w, channels))
  out_mask = np.zeros((out_h, out_w), bool)
  for i in range(out_h):
    for j in range(out_w):
      # Counter-clockwise as displayed (rows point down) takes a source offset (du, dv) from
      # the centre to (cos du - sin dv, sin du + cos dv); this is its inverse.
      di, dj = i - (out_h - 1) / 2, j - (out_w - 1) / 2
      u = cos * di + sin * dj + (h - 1) / 2
      v = -sin * di + cos * dj + (w - 1) / 2
      if not (-1e-9 <= u <= h - 1 + 1e-9 and -1e-9 <= v <= w - 1 + 1e-9):
        continue
      u0, v0 = min(math.floor(u), max(h - 2, 0)), min(math.floor(v), max(w - 2, 0))
      fu, fv = u - u0, v - v0
      weight, value = 0.0, np.zeros(channels)
      for du, wu in ((0, 1 - fu), (1, fu)):
        for dv, wv in ((0, 1 - fv), (1, fv)):
          uu, vv = min(u0 + du, h - 1), min(v0 + dv, w - 1)
          if wu * wv > 0 and m[uu, vv]:
            weight += wu * wv
            value += wu * wv * p[uu, vv]
      if weight >= 0.5:
        out[i, j] = value / weight
        out_mask[i, j] = True
  return out, out_mask


def mcncc_pair(probe: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
               margin: float = 0.5, flip: bool = False,
               rotations: tuple[float, ...] = ()) -> tuple[float, tuple[int, int], int]:
  """(score, best (y, x), transform index) of one pair, the maximum over transforms.

  Transforms are numbered flip-major: ``t = f * (1 + len(rotations)) + k`` for flip f in
  (False, True if ``flip``) and angle ``(0, *rotations)[k]``; ties go to the lower t.
  """
  best = (-math.inf, (0, 0), 0)
  t = 0
  for f in ((False, True) if flip else (False,)):
    for angle in (0.0, *rotations):
      p, m = transform_probe(probe, mask, f, angle)
      score, offset = best_offset(ncc_map(p, reference, m, margin))
      if score > best[0]:
        best = (score, offset, t)
      t += 1
  return best
