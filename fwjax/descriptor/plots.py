"""Plots of a descriptor run: the paper's confusion matrix and per-label precision-recall curves.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, so no display and no change to
the user's backend) and saved as PNG; every function writes one file and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

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


def confusion_png(matrix: np.ndarray, codes: Sequence[str], path: str | os.PathLike, *,
                  title: str = '') -> str:
  """The paper's multilabel confusion matrix (rows true, columns predicted) as a heatmap.

  Colours show each row as a share of its total (so rare descriptors stay visible); the numbers
  are the matrix entries.

  Returns:
    The path written.
  """
  matrix = np.asarray(matrix, np.float64)
  totals = matrix.sum(axis=1, keepdims=True)
  shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
  n = len(codes)
  fig = Figure(figsize=(0.55 * n + 2, 0.5 * n + 1.5))
  ax = fig.subplots()
  image = ax.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  for t in range(n):
    for f in range(n):
      value = matrix[t, f]
      if value:
        text = f'{value:.0f}' if float(value).is_integer() else f'{value:.1f}'
        ax.text(f, t, text, ha='center', va='center', fontsize=6,
                color='white' if shares[t, f] > 0.6 else 'black')
  ax.set_xticks(range(n), codes, rotation=90, fontsize=7)
  ax.set_yticks(range(n), codes, fontsize=7)
  ax.set_xlabel('predicted (outranking) descriptor')
  ax.set_ylabel('true descriptor')
  fig.colorbar(image, ax=ax, label='share of row', fraction=0.04)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=110)
  return path
