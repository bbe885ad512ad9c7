"""A class-folder collection made from a few photographs: seeded variants of each, and distractors.

de Bie (2020) ranked class-folder collections (Caltech-256, FIRE) where each class holds several
photographs of one kind of object, and FIRE's ``others`` folder holds images of no class.
``make_variant_folders`` builds a small collection of that shape from a handful of photographs
(the three in ``shared/data/imagenet_samples``, say): each photograph becomes a class of seeded
variants (crop, mirror, scale, small rotation, brightness and contrast), the way a seized phone
holds several shots of one object, and any other images can be linked in as a distractor class.
It exercises the thesis's protocol end to end on real colour photographs without a download; it
is not a benchmark of retrieval quality (variants of one photograph are easy to find).

Layout written::

  <out_dir>/<class>/<class>_<i>.jpg     variants of each photograph (RGB JPEG)
  <out_dir>/<distractor_class>/...      symbolic links to the distractor images (not copied)
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance

# The longer side of a variant: large enough for any network input of the thesis (331 for
# NASNetLarge), small enough that a collection of a few hundred images stays a few megabytes.
VARIANT_SIZE = 384


def _variant(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
  """One seeded variant of an RGB photograph."""
  width, height = image.size
  share = rng.uniform(0.6, 1.0)  # side share of the crop
  crop_w, crop_h = max(1, int(width * share)), max(1, int(height * share))
  left = int(rng.integers(0, width - crop_w + 1))
  top = int(rng.integers(0, height - crop_h + 1))
  out = image.crop((left, top, left + crop_w, top + crop_h))
  if rng.random() < 0.5:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  # The corners a rotation uncovers take the photograph's mean colour, not black.
  fill = tuple(int(v) for v in np.asarray(out, np.float64).mean(axis=(0, 1)))
  out = out.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR,
                   expand=False, fillcolor=fill)
  scale = size * rng.uniform(0.6, 1.0) / max(out.size)
  out = out.resize((max(8, round(out.width * scale)), max(8, round(out.height * scale))),
                   Image.Resampling.BICUBIC)
  out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
  return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))


def make_variant_folders(out_dir: str | pathlib.Path, photos: Mapping[str, str | pathlib.Path],
                         variants_per_class: int, *, distractors: Sequence[str | pathlib.Path] = (),
                         distractor_class: str = 'others', seed: int = 0,
                         size: int = VARIANT_SIZE) -> pathlib.Path:
  """Writes a class-folder collection of photograph variants (and a distractor class).

  Args:
    out_dir: folder to write; classes already in it are overwritten file by file.
    photos: class name -> photograph; each class gets ``variants_per_class`` variants.
    variants_per_class: variants per photograph (at least 2: a query and an item to find).
    distractors: images linked (not copied) into ``<out_dir>/<distractor_class>/``.
    distractor_class: the distractor folder's name (FIRE calls it ``others``).
    seed: every variant is a function of the seed and the class's position.
    size: the longest side of a variant is at most this many pixels.

  Returns:
    ``out_dir`` as a path.

  Raises:
    ValueError: fewer than 2 variants, no photographs, or a class named like the distractors.
    FileNotFoundError: a photograph or distractor that does not exist.
  """
  if variants_per_class < 2:
    raise ValueError(f'variants_per_class must be >= 2 (a query and an image to find), got '
                     f'{variants_per_class}')
  if not photos:
    raise ValueError('give at least one photograph')
  if distractors and distractor_class in photos:
    raise ValueError(f'class {distractor_class!r} is both a photograph class and the distractor '
                     'class; rename one')
  out = pathlib.Path(out_dir)
  for position, (name, path) in enumerate(sorted(photos.items())):
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'photograph of class {name!r} not found: {path}')
    with Image.open(path) as opened:
      image = opened.convert('RGB')
    rng = np.random.default_rng([seed, position])
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(variants_per_class):
      _variant(image, rng, size).save(folder / f'{name}_{i:03d}.jpg', quality=90)
  if distractors:
    folder = out / distractor_class
    folder.mkdir(parents=True, exist_ok=True)
    for source in distractors:
      source = pathlib.Path(source).resolve()
      if not source.is_file():
        raise FileNotFoundError(f'distractor image not found: {source}')
      link = folder / source.name
      if link.is_symlink() or link.exists():
        link.unlink()
      link.symlink_to(source)
  return out
