"""Plots of a descriptor run: the paper's confusion matrix and per-label precision-recall curves.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, so no display and no change to
the user's backend) and saved as PNG; every function writes one file and returns its path.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from fwjax import descriptors
from fwjax.metrics import classification


def pr_curves_png(y_true: np.ndarray, y_score: np.ndarray, codes: Sequence[str],
                  path: str | os.PathLike, *, average_precision: Sequence[float] | None = None,
                  title: str = '') -> str:
  """Per-label precision-recall curves as a grid of small plots, with each label's AP.

  Args:
    y_true: (N, L) 0/1 labels.
    y_score: (N, L) scores.
    codes: L label names.
    path: the PNG to write.
    average_precision: (L,) AP per label for the titles (NaN for no positives).
    title: the figure title (e.g. the macro PRAUC).

  Returns:
    The path written.
  """
  y_true, y_score = np.asarray(y_true), np.asarray(y_score)
  num = y_true.shape[1]
  cols = 6
  rows = -(-num // cols)
  fig = Figure(figsize=(2.6 * cols, 2.4 * rows))
  axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
  for i, ax in enumerate(np.ravel(axes)):
    if i >= num:
      ax.axis('off')
      continue
    positives = int(y_true[:, i].sum())
    if positives:
      precision, recall = classification.precision_recall_curve(y_true[:, i], y_score[:, i])
      ax.step(recall, precision, where='post', color='tab:blue')
      ax.axhline(positives / len(y_true), color='grey', lw=0.8, ls='--')  # chance level
    else:
      ax.text(0.5, 0.5, 'no positives', ha='center', va='center', color='grey')
    ap = '' if average_precision is None else f' AP {average_precision[i]:.3f}'
    ax.set_title(f'{codes[i]} (n={positives}){ap}', fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=7)
  for ax in np.ravel(axes)[(rows - 1) * cols:]:
    ax.set_xlabel('recall', fontsize=8)
  for ax in np.ravel(axes)[::cols]:
    ax.set_ylabel('precision', fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


CONFUSION_VALUES = ('row_percent', 'count')

_CONFUSION_RULE = ('Rows: true descriptor. An image adds 1 to the diagonal for each true '
                   'descriptor that no absent one outranks; its confused descriptors share one '
                   'unit, split over the absent descriptors scored above them (the paper\'s '
                   'Table 9 rule).')


def confusion_display(matrix: np.ndarray, values: str = 'row_percent') -> tuple[np.ndarray, str]:
  """What the confusion figure shows in its cells, as colour and as numbers alike.

  Args:
    matrix: (L, L) the paper's multilabel confusion matrix (rows true, columns outranking).
    values: ``'row_percent'``: each entry as a percentage of its row's total (the diagonal is
      the part of a descriptor's weight where it was not confused); ``'count'``: the entries
      themselves (images, fractional where the paper's rule shares a unit).

  Returns:
    (L, L) the values shown, and their name for the colour bar.
  """
  matrix = np.asarray(matrix, np.float64)
  if values == 'count':
    return matrix, 'images (shared units are fractions)'
  if values != 'row_percent':
    raise ValueError(f'values must be one of {CONFUSION_VALUES}, got {values!r}')
  totals = matrix.sum(axis=1, keepdims=True)
  shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
  return 100 * shares, '% of the row\'s total'


def confusion_png(matrix: np.ndarray, codes: Sequence[str], path: str | os.PathLike, *,
                  title: str = '', values: str = 'row_percent',
                  positives: Sequence[int] | None = None,
                  names: Mapping[str, str] | None = None) -> str:
  """The paper's multilabel confusion matrix (rows true, columns outranking) as a heatmap.

  Both axes name the descriptors (code and name). Colour and numbers show the same values
  (:func:`confusion_display`), named on the colour bar; numbers under 0.5 are left out. A
  caption under the matrix states the paper's rule.

  Args:
    matrix: (L, L) from :func:`fwjax.metrics.multilabel_confusion`.
    codes: the L descriptor codes.
    path: the PNG to write.
    title: the figure title.
    values: ``'row_percent'`` (default) or ``'count'``.
    positives: (L,) validation images with each descriptor, shown as ``n=`` on its row.
    names: code -> name (default: the NFRC names, :data:`fwjax.descriptors.NAMES`).

  Returns:
    The path written.
  """
  names = descriptors.NAMES if names is None else names
  shown, unit = confusion_display(matrix, values)
  scale = 100.0 if values == 'row_percent' else max(float(shown.max()), 1e-12)
  n = len(codes)
  fig = Figure(figsize=(0.5 * n + 4.5, 0.45 * n + 3.8))
  ax = fig.subplots()
  image = ax.imshow(shown, cmap='Blues', vmin=0, vmax=scale)
  for t in range(n):
    for f in range(n):
      value = shown[t, f]
      if value >= 0.5:
        ax.text(f, t, f'{value:.0f}', ha='center', va='center', fontsize=7,
                color='white' if value > 0.6 * scale else 'black')
  label = [f'{code} {names.get(code, "")}'.strip() for code in codes]
  rows = label if positives is None else [f'{name} (n={int(count)})'
                                          for name, count in zip(label, positives)]
  ax.set_xticks(range(n), label, rotation=90, fontsize=8)
  ax.set_yticks(range(n), rows, fontsize=8)
  ax.set_xlabel('absent descriptor scored above the true one (diagonal: not confused)')
  ax.set_ylabel('true descriptor' + ('' if positives is None else
                                     ' (n = validation images with it)'))
  fig.colorbar(image, ax=ax, label=f'colour and numbers: {unit}', fraction=0.04, pad=0.02)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.text(0.5, 0.012, textwrap.fill(_CONFUSION_RULE, 130), ha='center', va='bottom', fontsize=8)
  return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=110)
  return path
