"""Decoding greyscale impressions, refusing what is not one.

:func:`load_greyscale` returns a 2-D uint8 array or raises :class:`BadImageError` naming the file
and the reason. What it converts and what it refuses:

* ``L`` (8-bit grey): as is. ``1`` (bilevel): to 0/255.
* ``RGB``/``YCbCr`` whose three channels are equal (a grey scan saved in colour): the one channel.
  Real colour is refused unless ``allow_colour=True`` (then ITU-R 601 luma, Pillow's ``L``).
* ``LA``/``RGBA``/``PA`` whose alpha is fully opaque: the grey (or colour rule above) part.
  Transparency that hides content is refused: flattening it would invent a background.
* ``P`` (palette): refused unless the palette is grey (then its grey levels).
* 16-bit (``I;16*``, ``I``) and float (``F``): refused; reducing them to 8 bits is a choice the
  user makes explicitly (say, ``>> 8`` or a windowing), never silently.
* Empty images, truncated files (decoded fully here, so a cut file fails now, not later), and
  anything that is not an image.
* Decompression bombs: Pillow's global limit (89 Mpx) is replaced by an explicit per-call
  ``max_pixels``, by default 250 Mpx, so a 15000 x 7000 scan (105 Mpx) loads and a 20000 x 20000
  one is refused with the option to raise named.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np
from PIL import Image

#: Default pixel limit: well above a 15000 x 7000 scan (105 Mpx), far below what exhausts memory.
COLOUR_MODES = ('rgb', 'luma')
"""How :func:`load_image` treats colour images: kept as RGB, or turned into luma."""

MAX_PIXELS = 250_000_000


class BadImageError(ValueError):
  """A file that cannot be used as a greyscale impression; says which file and why."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{path}: {reason}')


class ColourImageError(BadImageError):
  """The image has real colour where one grey plane was asked for."""


def _grey_from_colour(image: Image.Image, path, allow_colour: bool) -> np.ndarray:
  rgb = np.asarray(image.convert('RGB'))
  if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
    return np.ascontiguousarray(rgb[..., 0])
  if not allow_colour:
    raise ColourImageError(path, f'is a colour image ({image.mode}); impressions are greyscale. '
                        'Convert it to greyscale first (from Python, load_image(..., '
                        'allow_colour=True) takes its luma)')
  return np.asarray(image.convert('RGB').convert('L'))


def _decode(path: str | os.PathLike, max_pixels: int) -> tuple[pathlib.Path, Image.Image]:
  """Opens and fully decodes an image file, refusing bombs, empty and broken files."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise BadImageError(path, 'no such file')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      previous = Image.MAX_IMAGE_PIXELS
      Image.MAX_IMAGE_PIXELS = None  # our own explicit check below replaces Pillow's global one
      try:
        image = Image.open(path)
      finally:
        Image.MAX_IMAGE_PIXELS = previous
      width, height = image.size
      if width * height > max_pixels:
        raise BadImageError(path, f'has {width}x{height} = {width * height:,} pixels, over the '
                            f'limit of {max_pixels:,} (a decompression-bomb guard); raise '
                            'max_pixels (--max_pixels) if the scan is genuine')
      if width == 0 or height == 0:
        raise BadImageError(path, f'is empty ({width}x{height})')
      image.load()  # decode everything now: a truncated file fails here
  except BadImageError:
    raise
  except Image.UnidentifiedImageError:
    raise BadImageError(path, 'is not an image Pillow can identify') from None
  except (OSError, SyntaxError, ValueError) as error:
    raise BadImageError(path, f'cannot be decoded ({error}); the file may be truncated or '
                        'corrupt') from None

  return path, image


def load_greyscale(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                   allow_colour: bool = False) -> np.ndarray:
  """Decodes an impression to a 2-D uint8 array, or says precisely why it cannot.

  Args:
    path: image file (PNG, JPEG, TIFF, BMP ... anything Pillow reads).
    max_pixels: refuse images with more pixels than this (decompression-bomb guard).
    allow_colour: convert real colour images to luma instead of refusing them.

  Returns:
    (H, W) uint8.

  Raises:
    BadImageError: missing, not an image, truncated, empty, too large, or a mode that would
      lose information (see the module docstring).
  """
  path, image = _decode(path, max_pixels)
  return _to_grey(image, path, allow_colour)


def _to_grey(image: Image.Image, path: pathlib.Path, allow_colour: bool) -> np.ndarray:
  """One grey plane of a decoded image, by the rules of the module docstring."""
  mode = image.mode
  if mode == 'L':
    return np.asarray(image)
  if mode == '1':
    return np.asarray(image.convert('L'))
  if mode.startswith('I') or mode == 'F':
    raise BadImageError(path, f'has {mode} pixels (16/32-bit or float); fwjax works on 8-bit grey: '
                        'reduce it to 8 bits yourself (e.g. >> 8, or a windowing) so the choice '
                        'is explicit')
  if mode in ('LA', 'La', 'RGBA', 'RGBa', 'PA') or (mode == 'P' and 'transparency' in image.info):
    rgba = image.convert('RGBA') if mode != 'LA' else image
    alpha = np.asarray(rgba.getchannel('A'))
    if alpha.min() < 255:
      raise BadImageError(path, f'has transparency ({mode}, alpha down to {alpha.min()}); '
                          'flattening would invent a background: flatten it yourself')
    if mode == 'LA':
      return np.asarray(image.getchannel('L'))
    return _grey_from_colour(rgba.convert('RGB'), path, allow_colour)
  if mode == 'P':
    palette = np.asarray(image.convert('RGB'))
    if (palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all():
      return np.ascontiguousarray(palette[..., 0])
    raise ColourImageError(path, 'is a palette image with colours; convert it to greyscale '
                           'yourself')
  if mode in ('RGB', 'YCbCr', 'CMYK', 'LAB', 'HSV'):
    return _grey_from_colour(image, path, allow_colour)
  raise BadImageError(path, f'has an unsupported mode {mode!r}')


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
               colour: str = 'rgb') -> np.ndarray:
  """Decodes a photograph or an impression: colour stays colour, grey stays one plane.

  A seized collection holds colour photographs as well as greyscale marks; the similarity job
  feeds colour as RGB (de Bie 2020's setting) and replicates a grey image to three channels.

  Args:
    path: image file.
    max_pixels: refuse images with more pixels than this (decompression-bomb guard).
    colour: ``'rgb'`` keeps real colour as (H, W, 3); ``'luma'`` turns it into grey (ITU-R 601
      luma, Pillow's ``L``), for matching colour photographs against greyscale marks.

  Returns:
    (H, W) uint8 for a greyscale image (also a grey scan saved as RGB), (H, W, 3) uint8 RGB for
    a colour one with ``colour='rgb'``.

  Raises:
    BadImageError: as :func:`load_greyscale` (transparency, 16-bit, broken files ...).
    ValueError: an unknown ``colour``.
  """
  if colour not in COLOUR_MODES:
    raise ValueError(f'colour must be one of {COLOUR_MODES}, got {colour!r}')
  if colour == 'luma':
    return load_greyscale(path, max_pixels=max_pixels, allow_colour=True)
  path, image = _decode(path, max_pixels)
  try:
    return _to_grey(image, path, allow_colour=False)
  except ColourImageError:  # opaque real colour (transparency was refused before this)
    return np.asarray(image.convert('RGB'))
