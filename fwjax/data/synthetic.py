"""Synthetic shoeprints: procedural greyscale sole impressions with known NFRC descriptors.

The default data of fwjax: it needs no download, so every job runs on a fresh machine.

An impression is a portrait sole (about 2.4:1) on light paper: a toe/forefoot part and a heel,
joined by a waist. The sole is cut into four regions (toe, forefoot, heel top, heel bottom);
each region carries one motif of a leaf descriptor (:mod:`fwjax.data.motifs`), drawn large enough
to survive downscaling to the paper's network sizes. The labels are the motifs' codes with their
parents added (a Target is also Circular).

Label frequencies are skewed like the NFRC data of the paper: bars (D01), circles (D02),
4-sided (D04) and complex (D07) are common; wavy bars (D01-01), targets (D02-01), 5-sided (D05)
and plain (D14) rare (:data:`LEAF_WEIGHTS`).

Nuisances, drawn per impression: a small rotation (up to 4 degrees), ink wear (low-frequency
patches where the ink did not transfer), speckle noise, blur, uneven ink density, and sometimes
a partial mark (a toe tip or heel end missing). Everything is deterministic given the seed.

Two products:
* :func:`make_descriptor_set`: a manifest folder (PNG images + manifest.csv) for training.
* :func:`make_retrieval_set`: K "shoe models", each with a clean reference impression and noisy,
  partial probes of the same design, in FID-300's layout (``references/``, ``tracks_cropped/``,
  ``label_table.csv``), so the similarity job reads it like the real database.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image, ImageFilter

from fwjax import descriptors
from fwjax.data import manifest as manifest_lib
from fwjax.data import motifs

#: Relative frequency with which a region gets each leaf motif.
LEAF_WEIGHTS: dict[str, float] = {
    'D01': 10, 'D01-01': 1.2, 'D01-02': 2.5, 'D02': 8, 'D02-01': 1.2, 'D03': 3, 'D04': 9,
    'D05': 1.2, 'D06': 2.5, 'D07': 8, 'D08': 3.5, 'D09': 4, 'D10': 3, 'D11': 3, 'D12': 4,
    'D13': 2.5, 'D14': 1.2,
}
REGIONS = ('toe', 'forefoot', 'heel_top', 'heel_bottom')
PAPER, INK = 236, 28


@dataclasses.dataclass(frozen=True)
class Design:
  """What a sole carries: a leaf code and a drawing seed per region, and its shape."""
  region_codes: tuple[str, ...]
  region_seeds: tuple[int, ...]
  toe_width: float
  heel_width: float
  unit: float          # element size as a share of the sole width

  @property
  def labels(self) -> tuple[str, ...]:
    return descriptors.with_parents(self.region_codes)


def random_design(rng: np.random.Generator) -> Design:
  """Draws a sole design: 2-4 distinct leaf motifs spread over the four regions."""
  codes = list(LEAF_WEIGHTS)
  p = np.array([LEAF_WEIGHTS[c] for c in codes])
  count = int(rng.choice([2, 3, 4], p=[0.35, 0.4, 0.25]))
  chosen = list(rng.choice(codes, size=count, replace=False, p=p / p.sum()))
  regions = chosen + list(rng.choice(chosen, size=len(REGIONS) - count))
  rng.shuffle(regions)
  return Design(tuple(str(c) for c in regions),
                tuple(int(s) for s in rng.integers(0, 2**31, len(REGIONS))),
                toe_width=float(rng.uniform(0.88, 1.0)), heel_width=float(rng.uniform(0.7, 0.82)),
                unit=float(rng.uniform(0.09, 0.12)))


def sole_masks(design: Design, height: int, width: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The sole's (H, W) bool mask and one mask per region."""
  y, x = np.mgrid[0:height, 0:width]
  u, v = (x + 0.5) / width - 0.5, (y + 0.5) / height   # u in [-.5, .5], v in [0, 1] top to bottom
  # Half-width profile along the sole: toe ellipse, waist, heel ellipse.
  toe = design.toe_width * 0.5 * np.sqrt(np.clip(1 - ((v - 0.33) / 0.32) ** 2, 0, None))
  heel = design.heel_width * 0.5 * np.sqrt(np.clip(1 - ((v - 0.8) / 0.19) ** 2, 0, None))
  waist = np.where((v > 0.3) & (v < 0.85), 0.5 * design.heel_width * 0.72, 0)
  half = np.maximum(np.maximum(toe, heel), waist)
  sole = np.abs(u) < half
  bands = {'toe': (0.0, 0.3), 'forefoot': (0.3, 0.62), 'heel_top': (0.62, 0.8),
           'heel_bottom': (0.8, 1.0)}
  regions = {name: sole & (v >= lo) & (v < hi) for name, (lo, hi) in bands.items()}
  return sole, regions


def render(design: Design, height: int, width: int,
           nuisance: np.random.Generator | None = None) -> np.ndarray:
  """Renders a design as an (H, W) uint8 impression; ``nuisance`` adds wear, noise, blur ..."""
  sole, regions = sole_masks(design, height, width)
  ink = np.zeros((height, width), bool)
  unit = design.unit * width
  for name, code, seed in zip(REGIONS, design.region_codes, design.region_seeds):
    mask = regions[name]
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
      continue
    top, left = rows.min(), cols.min()
    h, w = rows.max() - top + 1, cols.max() - left + 1
    ink[top:top + h, left:left + w] |= motifs.paint(code, w, h, unit, seed) & mask[top:top + h,
                                                                                 left:left + w]
  # The sole's rim is printed too: a thin outline, as the edge of a real outsole.
  edge = sole & ~(np.roll(sole, 2, 0) & np.roll(sole, -2, 0) & np.roll(sole, 2, 1)
                  & np.roll(sole, -2, 1))
  ink |= edge
  if nuisance is None:
    return np.where(ink, INK, PAPER).astype(np.uint8)
  return _degrade(ink, sole, nuisance)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  coarse = rng.random((cells, max(2, cells * width // max(height, 1))))
  image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height),
                                                                   Image.Resampling.BILINEAR)
  return np.asarray(image, np.float32) / 255


def _degrade(ink: np.ndarray, sole: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  height, width = ink.shape
  # Wear: patches of the sole that did not print.
  worn = _smooth_noise(rng, height, width, 8) < rng.uniform(0.0, 0.25)
  ink = ink & ~worn
  # Partial marks: sometimes the toe tip or heel end is missing.
  if rng.random() < 0.25:
    cut = int(height * rng.uniform(0.03, 0.12))
    if rng.random() < 0.5:
      ink[:cut] = False
    else:
      ink[height - cut:] = False
  density = 0.75 + 0.25 * _smooth_noise(rng, height, width, 5)
  grey = PAPER - (PAPER - INK) * density * ink
  grey = grey + rng.normal(0, rng.uniform(2, 10), grey.shape)
  speckle = rng.random(grey.shape) < rng.uniform(0, 0.01)
  grey = np.where(speckle, INK + 40, grey)
  image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
  image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.4)))
  image = image.rotate(rng.uniform(-4, 4), resample=Image.Resampling.BILINEAR, fillcolor=PAPER)
  return np.asarray(image)


def make_descriptor_set(out_dir: str | os.PathLike, n: int, *, seed: int = 0,
                        height: int = 704, width: int = 288) -> pathlib.Path:
  """Writes ``n`` labelled impressions and ``manifest.csv`` into ``out_dir``.

  Args:
    out_dir: folder to create (images go to ``out_dir/images``).
    n: number of impressions.
    seed: everything is a function of it.
    height: image height in pixels (width about height / 2.4 is sole-like).
    width: image width in pixels.

  Returns:
    The manifest path (``path,labels`` rows, fwjax.data.manifest's format).
  """
  if n < 1 or height < 16 or width < 8:
    raise ValueError(f'need n >= 1 and an image of at least 16x8 pixels; got n={n}, '
                     f'{height}x{width}')
  out_dir = pathlib.Path(out_dir)
  (out_dir / 'images').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    design = random_design(rng)
    image = render(design, height, width, np.random.default_rng((seed, i)))
    path = out_dir / 'images' / f'{i:06d}.png'
    Image.fromarray(image).save(path)
    examples.append(manifest_lib.Example(path, design.labels))
  return manifest_lib.write_manifest(out_dir / 'manifest.csv', examples)


def make_retrieval_set(out_dir: str | os.PathLike, num_models: int, probes_per_model: int = 2, *,
                       seed: int = 0, height: int = 586, width: int = 240) -> pathlib.Path:
  """Writes a retrieval set in FID-300's layout: references, probes and their ground truth.

  Each of ``num_models`` designs gets one clean reference (``references/00001.png`` ...) and
  ``probes_per_model`` degraded, partial probes (``tracks_cropped/00001.jpg`` ...), listed in
  ``label_table.csv`` as ``probe_id,reference_id``.

  Returns:
    ``out_dir``, readable with :func:`fwjax.data.fid300.load_fid300`.
  """
  if num_models < 2 or probes_per_model < 1:
    raise ValueError(f'need at least 2 models and 1 probe per model; got {num_models}, '
                     f'{probes_per_model}')
  out_dir = pathlib.Path(out_dir)
  (out_dir / 'references').mkdir(parents=True, exist_ok=True)
  (out_dir / 'tracks_cropped').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  probe_id = 0
  for model in range(1, num_models + 1):
    design = random_design(rng)
    Image.fromarray(render(design, height, width)).save(out_dir / 'references' / f'{model:05d}.png')
    for p in range(probes_per_model):
      probe_id += 1
      probe = render(design, height, width, np.random.default_rng((seed, model, p)))
      Image.fromarray(probe).save(out_dir / 'tracks_cropped' / f'{probe_id:05d}.jpg', quality=90)
      rows.append((probe_id, model))
  with open(out_dir / 'label_table.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  return out_dir
