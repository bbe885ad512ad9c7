"""Pillow-exact resizing of 8-bit greyscale impressions, on the host and on the accelerator.

The paper feeds one greyscale impression to an ImageNet network as three channels made by three
interpolations (nearest N, bilinear B, Hamming H). This module reproduces Pillow's resampling
bit for bit (checked against the installed Pillow in tests/test_resample.py), so a cache built
here equals one built with Pillow, and the same images can be resized on a GPU.
:func:`resize` is the readable numpy reference; :func:`resize_pillow` calls Pillow itself for
the same bits, faster on the host (the cache uses it); :func:`resize_batch_jax` is the batched
accelerator path.

Pillow's algorithm for bilinear and Hamming (libImaging/Resample.c): two separable passes. For an
axis of ``n_in`` pixels resized to ``n_out``, with ``scale = n_in / n_out`` and
``filterscale = max(scale, 1)`` (downscaling is antialiased), output pixel ``i`` has centre
``c = (i + 0.5) scale``, support ``s = filter_support * filterscale`` (1 for both filters), source
window ``[int(c - s + 0.5), int(c + s + 0.5))`` clipped to the image, weights
``filter((x - c + 0.5) / filterscale)`` normalised to sum 1 and turned into fixed point with 22
fractional bits (rounded half away from zero). Each pass adds ``2^21`` (round half up), shifts
right by 22 and clips to 0..255. Hamming(x) = sinc(x) (0.54 + 0.46 cos(pi x)) for |x| < 1, with
0.54 and 0.46 as C float literals. NEAREST picks source index ``floor(x_i)`` where ``x_0 = scale/2``
and ``x_{i+1} = x_i + scale``, accumulated in double precision as Pillow does.

Pass order: the two orders differ by a grey level here and there, and Pillow 13 does not always run
the horizontal pass first. Measured against it (tests/test_resample.py; 1,433 shapes where the
orders differ, no exception): it runs the vertical pass first exactly when the height shrinks by
more than twice as many pixels as the width does, ``in_h - out_h > 2 (in_w - out_w)`` with
``out_h < in_h`` (:func:`vertical_first`). A pass whose size does not change is skipped.

Example:
  >>> import numpy as np
  >>> image = np.arange(6000, dtype=np.uint8).reshape(100, 60)
  >>> resize(image, 35, 14, 'hamming').shape
  (35, 14)
  >>> compose(image, 'B-H-N', 35, 14).shape
  (35, 14, 3)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

METHODS = ('nearest', 'bilinear', 'hamming')
#: The paper's nine channel compositions, listed R-G-B.
COMPOSITIONS = ('B-B-B', 'B-H-N', 'B-N-H', 'H-B-N', 'H-H-H', 'H-N-B', 'N-B-H', 'N-H-B', 'N-N-N')
POLICIES = ('squish', 'pad')

_LETTERS = {'N': 'nearest', 'B': 'bilinear', 'H': 'hamming'}
_PRECISION_BITS = 22
# C float literals in Pillow's hamming_filter, promoted to double.
_HAMMING_A = float(np.float32(0.54))
_HAMMING_B = float(np.float32(0.46))


def _bilinear(x: float) -> float:
  x = abs(x)
  return 1.0 - x if x < 1.0 else 0.0


def _hamming(x: float) -> float:
  x = abs(x)
  if x == 0.0:
    return 1.0
  if x >= 1.0:
    return 0.0
  x *= math.pi
  return math.sin(x) / x * (_HAMMING_A + _HAMMING_B * math.cos(x))


_FILTERS = {'bilinear': _bilinear, 'hamming': _hamming}


@functools.lru_cache(maxsize=256)
def coefficients(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's per-axis resampling table for a filter method, in 22-bit fixed point.

  Args:
    in_size: source length along the axis.
    out_size: target length along the axis.
    method: ``'bilinear'`` or ``'hamming'``.

  Returns:
    ``(start, weights)``: (out_size,) int64 first source index of each output pixel, and
    (out_size, ksize) int64 fixed-point weights (zero past each window's end).
  """
  filt = _FILTERS[method]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale
  ksize = int(math.ceil(support)) * 2 + 1
  start = np.zeros(out_size, np.int64)
  weights = np.zeros((out_size, ksize), np.int64)
  inverse = 1.0 / filterscale
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = [filt((x - center + 0.5) * inverse) for x in range(lo, hi)]
    total = 0.0
    for w in taps:  # sequential, as in C: the last bit of the sum can matter
      total += w
    for j, w in enumerate(taps):
      if total != 0.0:
        w /= total
      weights[i, j] = int(w * (1 << _PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
    start[i] = lo
  return start, weights


@functools.lru_cache(maxsize=256)
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Pillow's NEAREST source index for each output pixel along one axis: (out_size,) int64."""
  scale = in_size / out_size
  steps = np.full(out_size, scale)
  steps[0] = scale * 0.5
  positions = np.add.accumulate(steps)  # sequential double additions, as Pillow's loop
  return np.minimum(np.floor(positions).astype(np.int64), in_size - 1)


@functools.lru_cache(maxsize=256)
def weight_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """The dense (in_size, out_size) int64 matrix of :func:`coefficients` (or a 0/1 selection)."""
  matrix = np.zeros((in_size, out_size), np.int64)
  if method == 'nearest':
    matrix[nearest_indices(in_size, out_size), np.arange(out_size)] = 1
    return matrix
  start, weights = coefficients(in_size, out_size, method)
  for i in range(out_size):
    taps = weights[i][: max(0, min(weights.shape[1], in_size - start[i]))]
    matrix[start[i]:start[i] + len(taps), i] = taps
  return matrix


def vertical_first(in_height: int, in_width: int, height: int, width: int) -> bool:
  """Whether Pillow 13 runs the vertical pass before the horizontal one for this resize."""
  return height < in_height and (in_height - height) > 2 * (in_width - width)


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'unknown resampling method {method!r}; expected one of {METHODS}')


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 2:
    raise ValueError(f'expected a 2-D greyscale image, got shape {image.shape}')
  if image.dtype != np.uint8:
    raise ValueError(f'expected uint8 pixels, got {image.dtype}; convert 16-bit scans explicitly '
                     '(e.g. (image >> 8).astype(np.uint8)) so no information is lost unawares')
  if image.size == 0:
    raise ValueError(f'the image is empty (shape {image.shape})')
  return image


def _check_size(height: int, width: int) -> None:
  if int(height) < 1 or int(width) < 1:
    raise ValueError(f'target size must be positive, got {height}x{width} (height x width)')


def _filter_pass(image: np.ndarray, out_size: int, method: str, axis: int) -> np.ndarray:
  """One fixed-point pass along ``axis`` (1 horizontal, 0 vertical), as a banded sum.

  Tap j of every output pixel is one gather of a whole column (or row) block, so the work is
  ``out_size x ksize`` fused multiply-adds per line in int32 (exact: the sum of the weights is
  2^22, so ``255 * 2^22 + 2^21 < 2^31``).
  """
  in_size = image.shape[axis]
  start, weights = coefficients(in_size, out_size, method)
  index = np.minimum(start[:, None] + np.arange(weights.shape[1]), in_size - 1)
  weights = weights.astype(np.int32)
  taps = [t for t in range(weights.shape[1]) if weights[:, t].any()]
  half = 1 << (_PRECISION_BITS - 1)
  if axis == 0:  # gather whole rows: contiguous
    out = np.empty((out_size, image.shape[1]), np.uint8)
    block = max(1, (1 << 22) // max(image.shape[1], 1))
    for lo in range(0, out_size, block):
      rows = slice(lo, lo + block)
      acc = np.full((len(range(out_size)[rows]), image.shape[1]), half, np.int32)
      for tap in taps:
        acc += image[index[rows, tap]].astype(np.int32) * weights[rows, tap, None]
      out[rows] = np.clip(acc >> _PRECISION_BITS, 0, 255)
    return out
  out = np.empty((image.shape[0], out_size), np.uint8)
  block = max(1, (1 << 22) // max(out_size, 1))
  for lo in range(0, image.shape[0], block):
    chunk = image[lo:lo + block]
    acc = np.full((chunk.shape[0], out_size), half, np.int32)
    for tap in taps:
      acc += chunk[:, index[:, tap]].astype(np.int32) * weights[:, tap]
    out[lo:lo + block] = np.clip(acc >> _PRECISION_BITS, 0, 255)
  return out


def resize(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
  """Resizes a 2-D uint8 image exactly as Pillow's ``Image.resize`` does.

  Args:
    image: (H, W) uint8 greyscale image.
    height: target height.
    width: target width.
    method: ``'nearest'``, ``'bilinear'`` or ``'hamming'``.

  Returns:
    (height, width) uint8, equal to
    ``np.asarray(Image.fromarray(image).resize((width, height), <method>))``.

  Raises:
    ValueError: not a non-empty 2-D uint8 image, a non-positive size, or an unknown method.
  """
  _check_method(method)
  image = _check_image(image)
  _check_size(height, width)
  in_h, in_w = image.shape
  if (in_h, in_w) == (height, width):
    return image.copy()
  if method == 'nearest':
    return image[nearest_indices(in_h, height)][:, nearest_indices(in_w, width)]
  passes = [(width, 1), (height, 0)]
  if vertical_first(in_h, in_w, height, width):
    passes.reverse()
  out = image
  for size, axis in passes:
    if size != out.shape[axis]:
      out = _filter_pass(out, size, method, axis)
  return out


_PILLOW_METHODS = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'hamming': Image.Resampling.HAMMING,
}


def resize_pillow(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
  """Resizes a 2-D uint8 image with Pillow's own resampler: the fast exact host path.

  Gives the same bits as :func:`resize` (tests/test_resample.py checks that over random shapes)
  in Pillow's C loops, which :func:`resize` transcribes into numpy; Pillow's loops are faster,
  the more so for large scans and for new image sizes (for which :func:`resize` builds its
  weight tables; kernels/bench_cache.py). :func:`resize` stays the readable reference; this is
  what the cache builds with.

  Args:
    image: (H, W) uint8 greyscale image.
    height: target height.
    width: target width.
    method: ``'nearest'``, ``'bilinear'`` or ``'hamming'``.

  Returns:
    (height, width) uint8, a new writable array.

  Raises:
    ValueError: not a non-empty 2-D uint8 image, a non-positive size, or an unknown method.
  """
  _check_method(method)
  image = _check_image(image)
  _check_size(height, width)
  # reducing_gap=None (Pillow's default, spelled out) keeps the exact filter: a gap would first
  # box-reduce by an integer factor, which is faster but no longer the filter resize reproduces.
  resized = Image.fromarray(np.ascontiguousarray(image)).resize(
      (int(width), int(height)), resample=_PILLOW_METHODS[method], reducing_gap=None)
  return np.array(resized, np.uint8)


# ------------------------------------------------------------------------------- on device


def _split_bytes(matrix: np.ndarray) -> np.ndarray:
  """(3, in, out) float32 byte planes of a non-negative < 2^24 integer matrix."""
  if matrix.min() < 0 or matrix.max() >= 1 << 24:
    raise ValueError('weights outside [0, 2^24) cannot be split exactly')
  return np.stack([(matrix >> s) & 0xFF for s in (16, 8, 0)]).astype(np.float32)


def _device_pass(images: jax.Array, planes: jax.Array, axis: int) -> jax.Array:
  # Each product is < 2^16 and a window holds < 256 non-zero taps, so every float32 partial
  # sum stays below 2^24: exact. Full precision matmul (no TF32 or bf16 passes).
  x = images.astype(jnp.float32)
  spec = 'bhw,kwo->kbho' if axis == 2 else 'bhw,khi->kbiw'
  parts = jnp.einsum(spec, x, planes, precision=jax.lax.Precision.HIGHEST)
  parts = parts.astype(jnp.int32)
  acc = (parts[0] << 16) + (parts[1] << 8) + parts[2] + (1 << (_PRECISION_BITS - 1))
  return jnp.clip(acc >> _PRECISION_BITS, 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=('height', 'width', 'method'))
def _resize_batch(images, height, width, method):
  _, in_h, in_w = images.shape
  if method == 'nearest':
    rows = jnp.asarray(nearest_indices(in_h, height))
    cols = jnp.asarray(nearest_indices(in_w, width))
    return images[:, rows][:, :, cols]
  passes = [(in_w, width, 2), (in_h, height, 1)]
  if vertical_first(in_h, in_w, height, width):
    passes.reverse()
  out = images
  for in_size, size, axis in passes:
    if size != in_size:
      out = _device_pass(out, jnp.asarray(_split_bytes(weight_matrix(in_size, size, method))), axis)
  return out


def resize_batch_jax(images, height: int, width: int, method: str) -> jax.Array:
  """Resizes a batch of same-size uint8 images on the default device, bit-identical to Pillow.

  The weight tables are the ones :func:`resize` uses; the arithmetic is exact integer arithmetic
  carried in float32 matrix products (weights split into bytes), jit-compiled per shape.

  Args:
    images: (B, H, W) uint8 array (numpy or jax).
    height: target height.
    width: target width.
    method: ``'nearest'``, ``'bilinear'`` or ``'hamming'``.

  Returns:
    (B, height, width) uint8 jax array.

  Raises:
    ValueError: bad shape, dtype, size or method, or a downscale over 128x along an axis (its
      windows are too wide for exact float32 sums; resize on the host with :func:`resize`).
  """
  _check_method(method)
  if images.ndim != 3 or images.dtype != np.uint8 or 0 in images.shape:
    raise ValueError(f'expected a non-empty (B, H, W) uint8 batch, got {images.shape} '
                     f'{images.dtype}')
  _check_size(height, width)
  _, in_h, in_w = images.shape
  if method != 'nearest' and max(in_h / height, in_w / width) > 128:
    raise ValueError(f'downscaling {in_h}x{in_w} to {height}x{width} is over 128x along an axis; '
                     'resize on the host with fwjax.resample.resize')
  return _resize_batch(jnp.asarray(images), int(height), int(width), method)


# ------------------------------------------------------------------------------- compositions


def composition_methods(composition: str) -> tuple[str, str, str]:
  """``'B-H-N'`` -> ``('bilinear', 'hamming', 'nearest')`` (channels listed R-G-B).

  Any three letters from N, B, H are accepted; :data:`COMPOSITIONS` lists the paper's nine.
  """
  letters = composition.upper().split('-')
  if len(letters) != 3 or any(letter not in _LETTERS for letter in letters):
    raise ValueError(f'bad channel composition {composition!r}: expected three of N (nearest), '
                     f'B (bilinear), H (hamming) joined by "-", e.g. one of {COMPOSITIONS}')
  return tuple(_LETTERS[letter] for letter in letters)


def fit_size(in_height: int, in_width: int, height: int, width: int,
             policy: str = 'squish') -> tuple[int, int, int, int]:
  """Where an image goes in a (height, width) frame: ``(top, left, inner_h, inner_w)``.

  ``'squish'`` (the paper) stretches to the whole frame. ``'pad'`` keeps the aspect ratio
  (scaled by ``min(height / in_height, width / in_width)``, rounded, at least 1 pixel) and
  centres the image, letterboxed.
  """
  if policy not in POLICIES:
    raise ValueError(f'unknown resize policy {policy!r}; expected one of {POLICIES}')
  _check_size(height, width)
  if policy == 'squish':
    return 0, 0, height, width
  scale = min(height / in_height, width / in_width)
  inner_h = min(height, max(1, round(in_height * scale)))
  inner_w = min(width, max(1, round(in_width * scale)))
  return (height - inner_h) // 2, (width - inner_w) // 2, inner_h, inner_w


def background_level(image: np.ndarray) -> int:
  """The fill value for letterboxing: the median of the image's border pixels.

  Impressions are dark marks on a light ground (or, for some scanners, the reverse); the border
  is almost always ground, so padding with its median adds no false edge.
  """
  border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
  return int(np.median(border))


def compose(image: np.ndarray, composition: str, height: int, width: int,
            policy: str = 'squish') -> np.ndarray:
  """Three channels made by three interpolations of one greyscale image.

  Args:
    image: (H, W) uint8 greyscale impression.
    composition: e.g. ``'B-H-N'``: bilinear in R, Hamming in G, nearest in B.
    height: target height.
    width: target width.
    policy: ``'squish'`` (the paper: stretch to height x width) or ``'pad'`` (keep the aspect
      ratio; letterbox with :func:`background_level`).

  Returns:
    (height, width, 3) uint8.
  """
  methods = composition_methods(composition)
  image = _check_image(image)
  top, left, inner_h, inner_w = fit_size(*image.shape, height, width, policy)
  out = np.full((height, width, 3), background_level(image) if policy == 'pad' else 0, np.uint8)
  planes = {m: resize(image, inner_h, inner_w, m) for m in set(methods)}
  for channel, method in enumerate(methods):
    out[top:top + inner_h, left:left + inner_w, channel] = planes[method]
  return out


def compose_image(image: np.ndarray, composition: str, height: int, width: int,
                  policy: str = 'squish') -> np.ndarray:
  """Three network channels of a greyscale impression or of a colour photograph.

  A greyscale (H, W) image gets the three interpolations of ``composition`` (:func:`compose`).
  A colour (H, W, 3) RGB image keeps its colours: every channel is resized with the
  composition's first interpolation (``'B-H-N'`` -> bilinear), the same bits as Pillow's
  resampler on that channel, and letterboxed with each channel's own background level.

  Args:
    image: (H, W) or (H, W, 3) uint8.
    composition: e.g. ``'B-B-B'``.
    height, width: target size.
    policy: ``'squish'`` or ``'pad'`` (see :func:`fit_size`).

  Returns:
    (height, width, 3) uint8.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    return compose(image, composition, height, width, policy)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'expected a (H, W) or (H, W, 3) uint8 image, got {image.shape} '
                     f'{image.dtype}')
  method = composition_methods(composition)[0]
  top, left, inner_h, inner_w = fit_size(*image.shape[:2], height, width, policy)
  out = np.zeros((height, width, 3), np.uint8)
  for channel in range(3):
    plane = np.ascontiguousarray(image[..., channel])
    if policy == 'pad':
      out[..., channel] = background_level(plane)
    out[top:top + inner_h, left:left + inner_w, channel] = resize_pillow(plane, inner_h, inner_w,
                                                                         method)
  return out
