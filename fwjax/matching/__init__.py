"""MCNCC spatial matching of feature maps (Kong, Supancic, Ramanan & Fowlkes, IJCV 2019).

A probe feature map ``p`` (h, w, C) with a validity mask ``m`` (h, w) (the mark's cells;
default all) is matched against a reference map ``r`` (H, W, C):

* ``r`` is zero-padded by ``pad = floor(margin * h + 0.5)`` rows and ``floor(margin * w + 0.5)``
  columns on each side (half rounds up, not Python's banker's rounding); where the probe is
  still larger than the padded reference, that dimension is padded further, equally on both
  sides with an odd cell after, until exactly one offset fits (:func:`padding`).
* At every offset (y, x) where the probe lies inside the padded reference, with the window
  ``q = r_padded[y:y+h, x:x+w]``, for each channel c over the n mask cells:
  ``a = p_c - mean(p_c)``, ``b = q_c - mean(q_c)``,
  ``ncc_c = sum(a b) / sqrt(sum(a^2) sum(b^2))``, and ``mcncc(y, x) = mean_c ncc_c``.
* A flat channel carries no evidence: ``ncc_c = 0`` when ``sum(a^2) <= FLAT_RTOL sum(p_c^2)``
  (the probe) or ``sum(b^2) <= FLAT_RTOL n E_c`` (the window; ``E_c`` is the reference
  channel's mean square over its H x W cells: float32 FFT rounding is spread over the whole
  map, so a window's variance is only resolved relative to that scale). ``FLAT_RTOL = 1e-4``;
  exact zeros (constant channels, windows all padding) are flat.
* The pair's score is the maximum over offsets; its best offset (y, x) is that of the padded
  reference (the window's top-left cell is reference cell ``(y - top, x - left)`` with
  ``(top, _), (left, _) = padding(h, H, margin), padding(w, W, margin)``). Ties go to the first
  offset in row-major order.
* Optional probe transforms: a left-right flip and small rotations of the probe's map with its
  mask (:func:`fwjax.matching.kernels.transform_probe`: bilinear, the mask keeps the cells
  whose source lies inside). Transform t is ``transforms(flip, rotations)[t]``, flip-major,
  the identity first; the pair's score is the maximum over transforms (ties: lower t). Each
  transformed probe is padded by its own size.
* Rankings order references by score, highest first, ties by lower index (as
  :mod:`fwjax.distances`).

Scores are float32 from FFT correlations (:mod:`fwjax.matching.kernels`, which says why FFT and
how accurate); they agree with the float64 loop of :mod:`fwjax.matching.reference` to ~1e-5
on maps whose windows hold a fair share of their channel's energy, and every ``ncc_c`` is
clipped to [-1, 1].

Sizes. Probes of different shapes are padded with masks to a common shape (per canvas group,
below), references to the largest (H, W), each in its top-left corner, with their true sizes
in ``reference_sizes`` (:func:`pack_references` writes such an array, in memory or as a .npy).
The FFT canvas must hold the largest padded reference, ``max(H + 2 pad, h)`` by the same in W,
and a probe's cost grows with its canvas's area, so probes are grouped by the canvas they need
(:func:`fwjax.matching.kernels.plan`; each group pays for its own reference spectra) instead of
all paying for the largest. What padding costs: each pair is computed on the canvas of its
group, set by the call's largest reference; for FID-300's references (widths 156-270 px) that
is at most ~1.3x the area a width-matched canvas would have. Split very unequal collections by
size.

Streaming. :func:`topk` and :func:`rank` read references in chunks from a numpy array, a jax
array, an ``np.memmap`` or a .npy path (memory-mapped; resident memory stays bounded), split
each chunk over all local devices, and return what the unchunked computation returns (each
pair's score is computed on its own, so the bits do not depend on the chunking or the number
of devices).

Input rules, each a ``ValueError`` naming the probe or reference index: NaN or Inf in a map
(in references, within its size); zero-size maps; a channel count that differs from the
references'; a mask of the wrong shape, or with no true cell (also after a rotation);
``margin < 0``; a zero, repeated or non-finite rotation; ``k`` outside [1, N].

Example:
  >>> refs = np.random.default_rng(0).random((20, 12, 8, 16), np.float32)
  >>> probe = refs[3, 2:9, 1:6]
  >>> result = topk([probe], refs, 5)
  >>> int(result.indices[0, 0]), round(float(result.scores[0, 0]), 4)
  (3, 1.0)
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fwjax.matching import kernels
from fwjax.matching import stream
from fwjax.matching.stream import pack_references, transforms  # noqa: F401 (public)

FLAT_RTOL = kernels.FLAT_RTOL
DEFAULT_MARGIN = 0.5
"""Half the probe may hang over each edge of the reference: a crime-scene mark is often a
partial print, cropped loosely, whose best window can lie partly outside the reference. Larger
margins cost canvas area (and admit more chance matches at the borders); the FID-300 tuning
task is where this value gets chosen."""

ArrayLike = Any


class Matches(NamedTuple):
  """Per pair: score, best offset and transform (all of shape (P, N) or (P, k)).

  Attributes:
    scores: float32 MCNCC, the maximum over offsets and transforms.
    offsets: int64 (..., 2) best (y, x) in the padded reference.
    transforms: int64 index into :func:`transforms` of the best transform.
    indices: int64 reference indices (rankings), or None (:func:`mcncc`: column j is
      reference j).
  """
  scores: np.ndarray
  offsets: np.ndarray
  transforms: np.ndarray
  indices: np.ndarray | None = None


def padding(size: int, ref_size: int, margin: float = DEFAULT_MARGIN) -> tuple[int, int]:
  """(before, after) zero padding of a reference dimension for a probe dimension ``size``.

  Example:
    >>> padding(5, 20, 0.5), padding(30, 20, 0.1)  # pad 3 (2.5 rounds up); 3 + 2 more
    ((3, 3), (5, 5))
  """
  return kernels.padding(size, ref_size, margin)


def mcncc(probes: ArrayLike, references: ArrayLike, *, probe_masks=None,
          reference_sizes=None, margin: float = DEFAULT_MARGIN, flip: bool = False,
          rotations: Sequence[float] = (), chunk_size: int | None = None) -> Matches:
  """MCNCC score, best offset and best transform of every (probe, reference) pair.

  Args:
    probes: (P, h, w, C) array, or a list of P arrays (h_i, w_i, C) of any sizes.
    references: (N, H, W, C) numpy array, jax array, ``np.memmap`` or .npy path (streamed in
      chunks; :func:`pack_references` stores maps of different sizes so), or a list of N
      (H_i, W_i, C) arrays.
    probe_masks: None (every cell counts), or per probe a (h_i, w_i) bool mask or None.
    reference_sizes: (N, 2) true (H_i, W_i) of maps stored padded in a (N, H, W, C) array.
    margin: reference padding in units of the probe's size (module docstring).
    flip: also match the probe mirrored left-right.
    rotations: extra angles in degrees (the identity is always matched).
    chunk_size: references per chunk (rounded up to a multiple of the devices); default from
      a working-memory budget of ~512 MiB per device.

  Returns:
    :class:`Matches` with scores (P, N) float32, offsets (P, N, 2) int64, transforms (P, N)
    int64, indices None.

  Raises:
    ValueError: see the module docstring; a probe or reference is named by its index.
  """
  score, _, offset, transform = stream._run(
      probes, references, probe_masks=probe_masks, reference_sizes=reference_sizes,
      margin=margin, flip=flip, rotations=rotations, k=0, chunk_size=chunk_size)
  return Matches(score, offset, transform)


def topk(probes: ArrayLike, references: ArrayLike, k: int, *, probe_masks=None,
         reference_sizes=None, margin: float = DEFAULT_MARGIN, flip: bool = False,
         rotations: Sequence[float] = (), chunk_size: int | None = None) -> Matches:
  """The ``k`` best-scoring references of each probe, streamed over all local devices.

  Args: as :func:`mcncc`, and
    k: how many, 1 <= k <= N.

  Returns:
    :class:`Matches` of shape (P, k): scores descending, equal scores by lower index.

  Raises:
    ValueError: see the module docstring; a probe or reference is named by its index.
  """
  return Matches(*stream._reorder(stream._run(
      probes, references, probe_masks=probe_masks, reference_sizes=reference_sizes,
      margin=margin, flip=flip, rotations=rotations, k=k, chunk_size=chunk_size)))


def rank(probes: ArrayLike, references: ArrayLike, *, probe_masks=None, reference_sizes=None,
         margin: float = DEFAULT_MARGIN, flip: bool = False, rotations: Sequence[float] = (),
         chunk_size: int | None = None) -> Matches:
  """Every reference ordered by score for each probe (the full ranking).

  Args: as :func:`mcncc`.

  Returns:
    :class:`Matches` of shape (P, N): scores descending, equal scores by lower index.

  Raises:
    ValueError: see the module docstring; a probe or reference is named by its index.
  """
  score, _, offset, transform = stream._run(
      probes, references, probe_masks=probe_masks, reference_sizes=reference_sizes,
      margin=margin, flip=flip, rotations=rotations, k=0, chunk_size=chunk_size)
  order = np.argsort(-score, axis=1, kind='stable')
  return Matches(np.take_along_axis(score, order, axis=1),
                 np.take_along_axis(offset, order[..., None], axis=1),
                 np.take_along_axis(transform, order, axis=1), order.astype(np.int64))


def score_map(probe: ArrayLike, reference: ArrayLike, *, probe_mask=None,
              margin: float = DEFAULT_MARGIN) -> np.ndarray:
  """MCNCC at every offset of one pair (no transforms), to see where a probe matches.

  Args:
    probe: (h, w, C).
    reference: (H, W, C).
    probe_mask: (h, w) bool, or None.
    margin: as :func:`mcncc`.

  Returns:
    (ny, nx) float32: entry (y, x) is offset (y, x) of the padded reference.

  Raises:
    ValueError: as :func:`mcncc`.
  """
  if not (math.isfinite(margin) and margin >= 0):
    raise ValueError(f'margin: expected a finite number >= 0, got {margin}')
  reference = np.asarray(reference)
  if reference.ndim != 3 or min(reference.shape) == 0:
    raise ValueError(f'reference 0: expected a non-empty (H, W, C) map, got shape '
                     f'{reference.shape}')
  big_h, big_w = reference.shape[:2]
  prepared = stream._prepare_probes([probe], None if probe_mask is None else [probe_mask],
                             reference.shape[2], margin, False, (), big_h, big_w)
  group, = prepared.groups
  h, w = int(group.geometry[0, 0]), int(group.geometry[1, 0])
  *_, bad, view = kernels.score_views(
      reference[None].astype(np.float32), np.array([[big_h, big_w]], np.int32),
      *(getattr(group, name) for name in stream.GROUP_FIELDS), canvas=group.canvas)
  if bool(bad[0]):
    raise ValueError('reference 0 has a NaN or Inf value (or values so large that their '
                     'squares overflow float32)')
  top, bottom = padding(h, big_h, margin)
  left, right = padding(w, big_w, margin)
  return np.asarray(view[0, 0, :big_h + top + bottom - h + 1, :big_w + left + right - w + 1])
