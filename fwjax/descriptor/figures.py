"""The paper's figures of a descriptor run: its data (Figures 3-5, 7, 8) and Grad-CAM (Figure 11).

Written by the descriptor job into the run folder (:func:`write_data_figures`,
:func:`write_gradcam`); each drawing function also works on its own and writes one PNG:

- ``data_interpolation.png`` (Figures 3-5): one training impression, its nearest (N), bilinear
  (B) and Hamming (H) planes at the network size and their channel composition, with a
  magnified region of each beside the same region of the original;
- ``data_classes.png`` (Figure 7): images per descriptor in the training and validation sets;
- ``data_resolutions.png`` (Figure 8): the originals' heights and widths, and their pixel
  counts, against the network input;
- ``gradcam/<code>.png`` and ``gradcam/overview.png`` (Figure 11): per descriptor, the
  validation images that have it and on which the model's loss for it is highest (the paper
  chooses its Grad-CAM examples so), each as the impression and its Grad-CAM overlay, with the
  descriptor's code and name, the image's true descriptors, the score and a colour bar; the
  overview shows the hardest image of every descriptor.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot: no display, the user's backend left
alone).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import pathlib
import textwrap
import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import LogFormatter
from PIL import Image

from fwjax import descriptors, resample
from fwjax.data import images as images_lib
from fwjax.descriptor import data as descriptor_data
from fwjax.descriptor.config import DescriptorConfig, build_model
from fwjax.models import gradcam as gradcam_lib
from fwjax.training import steps

DPI = 110
# Letter, resampling method, name for the reader.
_PLANES = (('N', 'nearest', 'nearest'), ('B', 'bilinear', 'bilinear'), ('H', 'hamming', 'Hamming'))


def _label(code: str) -> str:
  return f'{code} {descriptors.NAMES[code]}'


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=DPI)
  return path


# ------------------------------------------------------------------------------------ Grad-CAM


@dataclasses.dataclass(frozen=True)
class GradcamPanel:
  """One explained image: the impression, its heatmap and what the model said about it.

  Attributes:
    image: (H, W) uint8 greyscale impression (the network input plane).
    heatmap: (H, W) Grad-CAM in [0, 1].
    code: the descriptor explained.
    true_codes: the image's true descriptors.
    score: the model's score (sigmoid) for ``code``.
    loss: the model's binary cross-entropy for ``code`` on this image.
  """
  image: np.ndarray
  heatmap: np.ndarray
  code: str
  true_codes: tuple[str, ...]
  score: float
  loss: float


def highest_loss_rows(labels: np.ndarray, scores: np.ndarray, count: int
                      ) -> dict[int, np.ndarray]:
  """Per descriptor, the images that have it with the highest loss on it (the paper's Figure 11).

  The loss of image i on descriptor c is the unweighted binary cross-entropy ``-log s_ic`` of a
  positive, so the images chosen are those the model most fails to see the descriptor in.

  Args:
    labels: (N, L) 0/1 true labels.
    scores: (N, L) sigmoid scores.
    count: images per descriptor (fewer when it has fewer positives).

  Returns:
    ``{label index: rows}``, highest loss first (ties: lower row first), for every label with
    positives.
  """
  labels, loss = np.asarray(labels), bce_loss(scores)
  chosen = {}
  for c in range(labels.shape[1]):
    rows = np.flatnonzero(labels[:, c])
    if rows.size and count > 0:
      chosen[c] = rows[np.argsort(-loss[rows, c], kind='stable')[:count]]
  return chosen


def bce_loss(scores: np.ndarray) -> np.ndarray:
  """``-log s`` of sigmoid scores, the binary cross-entropy of a positive (clipped at 1e-7)."""
  return -np.log(np.clip(np.asarray(scores, np.float64), 1e-7, 1.0))


def gradcam_png(panels: Sequence[GradcamPanel], path: str | os.PathLike, *, title: str = '',
                columns: int = 4) -> str:
  """Impressions and their Grad-CAM overlays, pair by pair, with one colour bar.

  Args:
    panels: the images to show, in order.
    path: the PNG to write.
    title: the figure title.
    columns: image pairs per row.

  Returns:
    The path written.
  """
  if not panels:
    raise ValueError('gradcam_png needs at least one panel')
  height, width = panels[0].image.shape
  # Tall impressions (352x144) get 3.4 in of height, so each is drawn at about its own size.
  panel_h = 3.4
  panel_w = max(1.0, panel_h * width / height)
  columns = max(1, min(columns, len(panels)))
  rows = math.ceil(len(panels) / columns)
  text_h = 1.3  # headings above and true labels below each pair
  title_h = 0.3 + 0.25 * (title.count('\n') + 1) if title else 0.2
  fig = Figure(figsize=(columns * 2 * panel_w + 0.3 * columns + 1.4,
                        rows * (panel_h + text_h) + title_h + 0.3))
  grid = fig.add_gridspec(rows, 2 * columns, wspace=0.05, hspace=text_h / panel_h, left=0.02,
                          right=1 - 1.2 / fig.get_figwidth(),
                          top=1 - (title_h + 0.75) / fig.get_figheight(),
                          bottom=0.6 / fig.get_figheight())
  wrap = max(18, int(2 * panel_w * 11))
  for i, panel in enumerate(panels):
    r, c = divmod(i, columns)
    grey, over = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
    grey.imshow(panel.image, cmap='gray', vmin=0, vmax=255)
    over.imshow(gradcam_lib.overlay(panel.image, panel.heatmap))
    for ax in (grey, over):
      ax.set_xticks([])
      ax.set_yticks([])
    grey.set_title('impression', fontsize=8)
    # A map that is zero everywhere (no positive evidence for the descriptor) says so.
    over.set_title('Grad-CAM' if panel.heatmap.max() > 0 else 'Grad-CAM: zero everywhere',
                   fontsize=8)
    heading = f'{_label(panel.code)}\nscore {panel.score:.3f}, loss {panel.loss:.2f}'
    grey.text(1.0 + 0.025, 1.07, heading, transform=grey.transAxes, ha='center', va='bottom',
              fontsize=9, fontweight='bold')
    truth = 'true: ' + ', '.join(_label(code) for code in panel.true_codes)
    grey.text(1.0 + 0.025, -0.03, textwrap.fill(truth, wrap), transform=grey.transAxes,
              ha='center', va='top', fontsize=8)
  bar = fig.add_axes((1 - 0.95 / fig.get_figwidth(), 0.2, 0.18 / fig.get_figwidth(), 0.55))
  fig.colorbar(ScalarMappable(Normalize(0, 1), matplotlib.colormaps['jet']), cax=bar,
               label='Grad-CAM (1 = the image\'s maximum)')
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def write_gradcam(config: DescriptorConfig, out: pathlib.Path,
                  data: descriptor_data.DescriptorData, variables, labels: np.ndarray,
                  scores: np.ndarray) -> list[str]:
  """Grad-CAM figures of the highest-loss validation images of every descriptor.

  Writes ``gradcam/<code>.png`` (the ``config.num_gradcam`` hardest images of the descriptor)
  and ``gradcam/overview.png`` (the hardest image of every descriptor). The heatmaps of all of
  them come from one compiled Grad-CAM call, in batches of ``config.batch_size``.

  Args:
    config: the run's configuration (model, input size, composition, ``num_gradcam``).
    out: the run folder.
    data: the run's data (validation images as the model sees them).
    variables: the final model's variables.
    labels: (N_valid, 17) true labels.
    scores: (N_valid, 17) the final model's sigmoid scores.

  Returns:
    The PNGs written, relative to ``out``.
  """
  chosen = highest_loss_rows(labels, scores, min(config.num_gradcam, data.num_valid))
  if not chosen:
    return []
  pairs = [(int(row), c) for c, rows in chosen.items() for row in rows]
  rows = np.asarray([row for row, _ in pairs])
  images = data.valid_images(rows)  # (n, H, W, 3) uint8, as the model sees them
  model = build_model(config).clone(bn_axis_name=None)
  heat = gradcam_lib.gradcam(model, variables, steps.normalize(jnp.asarray(images)),
                             [c for _, c in pairs], batch_size=config.batch_size)
  loss = bce_loss(scores)
  panels: dict[int, list[GradcamPanel]] = {}
  for i, (row, c) in enumerate(pairs):
    panels.setdefault(c, []).append(GradcamPanel(
        images[i, ..., 0], heat[i], descriptors.CODES[c], descriptors.decode(labels[row]),
        float(scores[row, c]), float(loss[row, c])))
  first = resample.composition_methods(config.composition)[0]
  where = (f'{config.name}: impressions are the network input at {config.height}x'
           f'{config.width} (first channel, {first}); Grad-CAM of layer4')
  written = []
  for c, explained in panels.items():
    code = descriptors.CODES[c]
    written.append(gradcam_png(
        explained, out / 'gradcam' / f'{code}.png', columns=4,
        title=f'{_label(code)}: the {len(explained)} validation image'
              f'{"s" if len(explained) > 1 else ""} with it on which the loss is highest\n{where}'))
  hardest = [explained[0] for explained in panels.values()]
  written.append(gradcam_png(
      hardest, out / 'gradcam' / 'overview.png', columns=6,
      title=f'The highest-loss validation image of each descriptor\n{where}'))
  return [str(pathlib.Path(p).relative_to(out)) for p in written]


# ---------------------------------------------------------------------------------------- data


def network_planes(image: np.ndarray, height: int, width: int, policy: str = 'squish'
                   ) -> dict[str, np.ndarray]:
  """The N, B and H planes of an impression at the network size, as the cache stores them."""
  top, left, inner_h, inner_w = resample.fit_size(*image.shape, height, width, policy)
  fill = resample.background_level(image) if policy == 'pad' else 0
  planes = {}
  for letter, method, _ in _PLANES:
    plane = np.full((height, width), fill, np.uint8)
    plane[top:top + inner_h, left:left + inner_w] = resample.resize_pillow(
        image, inner_h, inner_w, method)
    planes[letter] = plane
  return planes


def _most_different_window(planes: dict[str, np.ndarray], size: tuple[int, int]
                           ) -> tuple[int, int]:
  """Top-left corner of the window of ``size`` where the N, B and H planes differ most."""
  n, b, h = (planes[letter].astype(np.float64) for letter in 'NBH')
  difference = np.abs(n - b) + np.abs(h - b) + np.abs(n - h)
  rows, cols = size
  best, corner = -1.0, (0, 0)
  for top in range(0, difference.shape[0] - rows + 1, max(1, rows // 4)):
    for left in range(0, difference.shape[1] - cols + 1, max(1, cols // 4)):
      value = float(difference[top:top + rows, left:left + cols].sum())
      if value > best:
        best, corner = value, (top, left)
  return corner


def interpolation_png(image: np.ndarray, height: int, width: int, composition: str,
                      path: str | os.PathLike, *, policy: str = 'squish', title: str = '') -> str:
  """The paper's Figures 3-5: one impression's N, B and H planes and their composition.

  The top row shows the original and the network-size planes whole; the bottom row magnifies
  the region where the planes differ most (outlined above), pixel for pixel, beside the same
  region of the original.

  Args:
    image: (H, W) uint8 original impression.
    height, width: the network input size.
    composition: e.g. ``'B-H-N'`` (R, G, B channels).
    path: the PNG to write.
    policy: ``'squish'`` or ``'pad'`` (:func:`fwjax.resample.fit_size`).
    title: the figure title.

  Returns:
    The path written.
  """
  planes = network_planes(image, height, width, policy)
  composed = np.stack([planes[letter] for letter in composition.upper().split('-')], axis=-1)
  crop = (max(4, height // 4), max(4, width // 3))
  top, left = _most_different_window(planes, crop)
  # The same region in the original (squish: plain scaling; pad: undo the letterbox).
  ptop, pleft, inner_h, inner_w = resample.fit_size(*image.shape, height, width, policy)
  sy, sx = image.shape[0] / inner_h, image.shape[1] / inner_w
  oy0, ox0 = max(0, int((top - ptop) * sy)), max(0, int((left - pleft) * sx))
  oy1 = min(image.shape[0], max(oy0 + 1, int((top + crop[0] - ptop) * sy)))
  ox1 = min(image.shape[1], max(ox0 + 1, int((left + crop[1] - pleft) * sx)))
  shown = [('original', f'{image.shape[0]}x{image.shape[1]}', image, image[oy0:oy1, ox0:ox1])]
  for letter, _, name in _PLANES:
    plane = planes[letter]
    shown.append((f'{letter}: {name}', f'{height}x{width}', plane,
                   plane[top:top + crop[0], left:left + crop[1]]))
  shown.append((f'{composition} (R, G, B)', f'{height}x{width}', composed,
                composed[top:top + crop[0], left:left + crop[1]]))
  panel_h = 4.0
  panel_w = max(1.2, panel_h * width / height)
  fig = Figure(figsize=(len(shown) * (panel_w + 0.3) + 0.4, 2 * panel_h + 1.8))
  axes = fig.subplots(2, len(shown), squeeze=False)
  for i, (name, size, whole, part) in enumerate(shown):
    for ax, picture in ((axes[0, i], whole), (axes[1, i], part)):
      ax.imshow(picture, cmap=None if picture.ndim == 3 else 'gray', vmin=0, vmax=255,
                interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
    axes[0, i].set_title(f'{name}\n{size}', fontsize=9)
    axes[1, i].set_title('magnified', fontsize=8)
    box = ((ox0, oy0, ox1 - ox0, oy1 - oy0) if i == 0 else (left, top, crop[1], crop[0]))
    axes[0, i].add_patch(Rectangle(
        (box[0] - 0.5, box[1] - 0.5), box[2], box[3], fill=False, edgecolor='red', lw=1.2))
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return _save(fig, path)


def class_distribution_png(train_labels: np.ndarray, path: str | os.PathLike, *,
                           valid_labels: np.ndarray | None = None, title: str = '') -> str:
  """The paper's Figure 7: images per descriptor, training (and validation) set.

  Args:
    train_labels: (N, 17) 0/1 training labels.
    path: the PNG to write.
    valid_labels: (M, 17) validation labels, drawn beside them (None: training only).
    title: the figure title.

  Returns:
    The path written.
  """
  train = np.asarray(train_labels).sum(axis=0)
  codes = descriptors.CODES
  fig = Figure(figsize=(9, 7))
  ax = fig.subplots()
  y = np.arange(len(codes))
  step = 0.4 if valid_labels is not None else 0.8
  bars = ax.barh(y - (step / 2 if valid_labels is not None else 0), train, height=step,
                 color='tab:blue', label=f'training ({len(train_labels)} images)')
  ax.bar_label(bars, [f'{int(n)} ({n / max(len(train_labels), 1):.0%})' for n in train],
               fontsize=7, padding=2)
  if valid_labels is not None:
    valid = np.asarray(valid_labels).sum(axis=0)
    bars = ax.barh(y + step / 2, valid, height=step, color='tab:orange',
                   label=f'validation ({len(valid_labels)} images)')
    ax.bar_label(bars, [str(int(n)) for n in valid], fontsize=7, padding=2)
  ax.set_yticks(y, [_label(code) for code in codes], fontsize=8)
  ax.invert_yaxis()  # D01 at the top, as the NFRC lists them
  ax.set_xlabel('images with the descriptor (a child implies its parent)')
  ax.set_xlim(0, max(train.max(), 1) * 1.25)
  ax.legend(loc='lower right', fontsize=8)
  ax.set_title(title or f'Class distribution: {train.sum() / max(len(train_labels), 1):.2f} '
               'descriptors per training image', fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def image_sizes(paths: Sequence[str | os.PathLike], *, workers: int = 8) -> np.ndarray:
  """(N, 2) heights and widths of image files, from their headers (nothing is decoded).

  Args:
    paths: image files.
    workers: threads reading headers.

  Returns:
    int64 (N, 2); a file whose header cannot be read gives (0, 0).
  """
  def size(path) -> tuple[int, int]:
    try:
      with Image.open(path) as image:
        return image.size[1], image.size[0]
    except (OSError, ValueError, Image.DecompressionBombError):
      return 0, 0

  with warnings.catch_warnings():  # the size is read, never the pixels: no bomb to guard
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      sizes = list(pool.map(size, paths))
  return np.asarray(sizes, np.int64).reshape(-1, 2)


def resolution_distribution_png(sizes: np.ndarray, path: str | os.PathLike, *,
                                network_size: tuple[int, int] | None = None,
                                title: str = '') -> str:
  """The paper's Figure 8: the originals' heights and widths, and their pixel counts.

  Args:
    sizes: (N, 2) heights and widths of the originals (rows of 0 are left out).
    path: the PNG to write.
    network_size: (height, width) of the network input, marked for comparison.
    title: the figure title.

  Returns:
    The path written.
  """
  sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
  sizes = sizes[(sizes > 0).all(axis=1)]
  if not len(sizes):
    raise ValueError('no image sizes to draw')
  fig = Figure(figsize=(12, 5))
  scatter, histogram = fig.subplots(1, 2)
  scatter.scatter(sizes[:, 1], sizes[:, 0], s=8, alpha=0.4, color='tab:blue',
                  label=f'{len(sizes)} originals')
  if network_size is not None:
    scatter.scatter([network_size[1]], [network_size[0]], marker='*', s=160, color='tab:red',
                    label=f'network input {network_size[0]}x{network_size[1]}')
  scatter.set_xscale('log')
  scatter.set_yscale('log')
  for axis in (scatter.xaxis, scatter.yaxis):  # pixels as plain numbers (300, 2000), not 10^x
    axis.set_major_formatter(LogFormatter())
    axis.set_minor_formatter(LogFormatter())  # labels minor ticks on narrow ranges only
  scatter.set_xlabel('width (pixels)')
  scatter.set_ylabel('height (pixels)')
  scatter.grid(True, which='both', alpha=0.3)
  scatter.legend(fontsize=8)
  megapixels = sizes[:, 0] * sizes[:, 1] / 1e6
  low, high = megapixels.min(), megapixels.max()
  bins = (np.geomspace(low, high, 30) if high > low * 1.01
          else np.geomspace(low / 1.5, high * 1.5, 5))
  histogram.hist(megapixels, bins=bins, color='tab:blue')
  histogram.set_xscale('log')
  histogram.set_xlabel('megapixels')
  histogram.set_ylabel('originals')
  histogram.set_title(f'median {np.median(megapixels):.2g} Mpx, from {low:.2g} to '
                      f'{high:.2g} Mpx', fontsize=9)
  if network_size is not None:
    histogram.axvline(network_size[0] * network_size[1] / 1e6, color='tab:red', ls='--',
                      label='network input')
    histogram.legend(fontsize=8)
  heights, widths = sizes[:, 0].astype(int), sizes[:, 1].astype(int)
  fig.suptitle(title or (f'Resolution of the {len(sizes)} originals: height {heights.min()}-'
                         f'{heights.max()}, width {widths.min()}-{widths.max()} pixels'),
               fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def write_data_figures(config: DescriptorConfig, out: pathlib.Path,
                       data: descriptor_data.DescriptorData) -> list[str]:
  """The data figures of a run: interpolation samples, class and resolution distributions.

  Args:
    config: the run's configuration (input size, composition, policy).
    out: the run folder.
    data: the run's data (its training originals and labels).

  Returns:
    The PNGs written, relative to ``out``.
  """
  written = [class_distribution_png(
      data.train_labels, out / 'data_classes.png', valid_labels=data.fit_data.valid_labels)]
  if data.train_paths:
    sample = data.train_paths[0]
    original = images_lib.load_greyscale(sample)
    written.append(interpolation_png(
        original, config.height, config.width, config.composition,
        out / 'data_interpolation.png', policy=config.policy,
        title=f'Interpolations of {pathlib.Path(sample).name} at {config.height}x{config.width} '
              f'({config.policy}) and their composition {config.composition}'))
    written.append(resolution_distribution_png(
        image_sizes(data.train_paths, workers=config.workers or 8),
        out / 'data_resolutions.png', network_size=(config.height, config.width)))
  return [str(pathlib.Path(p).relative_to(out)) for p in written]
