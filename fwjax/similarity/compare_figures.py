"""The comparison's figures (de Bie 2020) and the writing of everything under ``comparison/``.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot), built from the rows that
``compare.read_comparison`` reads back from the store.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fwjax.similarity import compare
from fwjax.similarity import compare_tables as tables

_METRIC_COLOURS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown')
_MARKERS = ('o', 's', '^', 'D', 'v', 'P')


def _colours(names: Sequence[str]) -> dict[str, str]:
  return {n: _METRIC_COLOURS[i % len(_METRIC_COLOURS)] for i, n in enumerate(names)}


def score_boxplots(runs: Sequence[compare.StoredRun], score: str, title: str) -> Figure:
  """Per-query ``score`` per (CNN, metric): boxes grouped by CNN, coloured by metric, with the
  mean as a diamond (precision@1 is 0 or 1: its box alone says little); a panel per R."""
  labels, metrics = compare.labels_in_order(runs), compare.metrics_in_order(runs)
  refs = compare.references_in_order(runs)
  chosen = compare.score_runs(runs)
  colours = _colours(metrics)
  # Panels stacked: six CNNs x four metrics make 24 boxes a row, too wide side by side.
  panel_width = max(6.0, 0.4 * len(labels) * (len(metrics) + 1))
  fig = Figure(figsize=(panel_width + 1.5, 1.2 + 3.4 * len(refs)), layout='constrained')
  axes = fig.subplots(len(refs), 1, sharex=True, squeeze=False)[:, 0]
  for ax, r in zip(axes, refs):
    for i, label in enumerate(labels):
      for j, metric in enumerate(metrics):
        run = chosen.get((label, metric, r))
        if run is None:
          continue
        values = compare.per_query(run, score)
        values = values[~np.isnan(values)]
        if not values.size:
          continue
        box = ax.boxplot([values], positions=[i * (len(metrics) + 1) + j], widths=0.8,
                         patch_artist=True, showfliers=True, showmeans=True,
                         meanprops={'marker': 'D', 'markerfacecolor': 'white',
                                    'markeredgecolor': 'black', 'markersize': 5},
                         flierprops={'markersize': 3, 'markeredgecolor': colours[metric]},
                         medianprops={'color': 'black'})
        box['boxes'][0].set(facecolor=colours[metric], alpha=0.75)
    ax.set_xticks([i * (len(metrics) + 1) + (len(metrics) - 1) / 2 for i in range(len(labels))],
                  labels, rotation=20, ha='right')
    ax.set_xlim(-1, len(labels) * (len(metrics) + 1) - 1)
    ax.set_title(f'R = {r} reference image' + ('s' if r > 1 else ''))
    ax.grid(axis='y', alpha=0.3)
    ax.set_ylabel('AUIRC (lower is better)' if score == 'auirc' else score)
  handles = [Patch(facecolor=colours[m], alpha=0.75, label=m) for m in metrics]
  handles.append(Line2D([], [], marker='D', markerfacecolor='white', markeredgecolor='black',
                        linestyle='', label='mean'))
  fig.legend(handles=handles, loc='outside right upper', title='metric')
  fig.suptitle(title)
  return fig


def _spread(values: np.ndarray) -> tuple[float, float, float]:
  """(mean, mean - min, max - mean) of the repeats' values."""
  mean = float(np.mean(values))
  return mean, mean - float(np.min(values)), float(np.max(values)) - mean


def _place_labels(ax, points: Sequence[tuple[float, float, str, str]]) -> None:
  """Annotates points, moving a label up or down when it would cover one already placed."""
  to_points = 72 / ax.figure.dpi
  placed: list[tuple[float, float]] = []
  for x, y, text, colour in sorted(points, key=lambda p: -p[1]):
    px, py = ax.transData.transform((x, y)) * to_points
    width = 4.5 * len(text)  # points of a 7-point label, roughly
    for dy in (4, -12, 14, -22, 24, -32, 34, -42):
      spot = (px + 5, py + dy)
      if all(abs(spot[0] - qx) > width or abs(spot[1] - qy) > 9 for qx, qy in placed):
        break
    placed.append(spot)
    ax.annotate(text, (x, y), textcoords='offset points', xytext=(5, dy), fontsize=7,
                color=colour)


def auirc_time_scatter(runs: Sequence[compare.StoredRun]) -> Figure:
  """Mean AUIRC against time (extraction per 10,000 images + distance), one point per
  (CNN, metric, R), a panel per R; horizontal bars span the repeats' min to max."""
  labels, metrics = compare.labels_in_order(runs), compare.metrics_in_order(runs)
  refs = compare.references_in_order(runs)
  chosen = compare.score_runs(runs)
  cnn_colours = _colours(labels)
  markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(metrics)}
  fig = Figure(figsize=(5.5 * len(refs) + 2, 5.5), layout='constrained')
  axes = fig.subplots(1, len(refs), sharey=True, squeeze=False)[0]
  for ax, r in zip(axes, refs):
    points = []
    for label in labels:
      extraction = compare.timing_values(runs, label, 'feature_extraction')
      for metric in metrics:
        run = chosen.get((label, metric, r))
        distance = compare.timing_values(runs, label, 'distance', metric, r)
        if run is None or not distance.size or len(distance) != len(extraction):
          continue
        x, low, high = _spread(extraction + distance)
        y = float(np.nanmean(compare.per_query(run, 'auirc')))
        ax.errorbar([x], [y], xerr=[[low], [high]], fmt=markers[metric], capsize=3,
                    color=cnn_colours[label], markersize=7)
        points.append((x, y, metric, cnn_colours[label]))
    xs = [p[0] for p in points]
    if xs and max(xs) > 20 * max(min(xs), 1e-9):
      ax.set_xscale('log')
    fig.canvas.draw()  # the axes' limits and transform, for placing the labels
    _place_labels(ax, points)
    ax.set_title(f'R = {r} reference image' + ('s' if r > 1 else ''))
    ax.set_xlabel('seconds: extraction per 10,000 images + distance')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('mean AUIRC (lower is better)')
  handles = [Line2D([], [], color=cnn_colours[n], marker='o', linestyle='', label=n)
             for n in labels]
  handles += [Line2D([], [], color='grey', marker=markers[m], linestyle='', label=m)
              for m in metrics]
  fig.legend(handles=handles, fontsize=8, loc='outside right upper')
  fig.suptitle('AUIRC versus time (mean; bars: min to max over repeats)')
  return fig


def timing_bars(runs: Sequence[compare.StoredRun]) -> Figure:
  """Model build, extraction per 10,000 images and distance (per metric; a panel per R) per
  CNN: the mean over repeats with min-max error bars."""
  labels, metrics = compare.labels_in_order(runs), compare.metrics_in_order(runs)
  refs = compare.references_in_order(runs)
  colours = _colours(metrics)
  panels = 2 + len(refs)
  # Two panels a row: six CNNs x five panels side by side would be unreadably wide.
  rows = -(-panels // 2)
  fig = Figure(figsize=(2 * max(4.5, 0.95 * len(labels)) + 1.5, 0.8 + 3.8 * rows),
               layout='constrained')
  grid = fig.subplots(rows, 2, squeeze=False).ravel()
  for spare in grid[panels:]:
    spare.set_visible(False)
  axes = grid[:panels]
  x = np.arange(len(labels))
  for ax, phase, title in ((axes[0], 'model_build', 'model build (weights + compile)'),
                           (axes[1], 'feature_extraction', 'extraction per 10,000 images')):
    stats = [_spread(v) if (v := compare.timing_values(runs, n, phase)).size else (np.nan, 0, 0)
             for n in labels]
    ax.bar(x, [s[0] for s in stats], yerr=np.array([s[1:] for s in stats]).T, capsize=3,
           color='tab:grey')
    ax.set_title(title, fontsize=10)
  width = 0.8 / max(len(metrics), 1)
  for ax, r in zip(axes[2:], refs):
    for j, metric in enumerate(metrics):
      stats = []
      for n in labels:
        values = compare.timing_values(runs, n, 'distance', metric, r)
        stats.append(_spread(values) if values.size else (np.nan, 0, 0))
      ax.bar(x - 0.4 + width * (j + 0.5), [s[0] for s in stats], width,
             yerr=np.array([s[1:] for s in stats]).T, capsize=2, color=colours[metric],
             label=metric)
    ax.set_title(f'distance, all queries, R = {r}', fontsize=10)
  for ax in axes:
    ax.set_xticks(x, labels, rotation=25, ha='right', fontsize=8)
    ax.set_ylabel('seconds')
    ax.grid(axis='y', alpha=0.3)
  fig.legend(handles=[Patch(facecolor=colours[m], label=m) for m in metrics], fontsize=8,
             title='metric', loc='outside right upper')
  fig.suptitle('Timings: mean over repeats, bars from min to max')
  return fig


def write_comparison(runs: Sequence[compare.StoredRun], out_dir: str | pathlib.Path, *,
                     precision_k: int, untrained: Sequence[str] | None = None,
                     top_classes: int = 5) -> list[pathlib.Path]:
  """Writes the figures (PNG) and tables (CSV + Markdown) under ``out_dir``.

  Args:
    runs: from :func:`fwjax.similarity.compare.read_comparison`.
    out_dir: the comparison's folder (``<out_dir>/comparison/`` in the runner).
    precision_k: the k of the precision@k figure and columns.
    untrained: the untrained classes (None: no untrained-class table).
    top_classes: rows per CNN of the best-classes table.

  Returns:
    The paths written.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if not runs:
    raise ValueError(f'no complete comparison runs in the store to draw into {out_dir}: '
                     'run the comparison first')
  figures = {
      'auirc_boxplots': score_boxplots(runs, 'auirc', 'Per-query AUIRC per CNN and metric'),
      f'precision_at_{precision_k}_boxplots': score_boxplots(
          runs, f'precision@{precision_k}', f'Per-query precision@{precision_k}'),
      'auirc_vs_time': auirc_time_scatter(runs),
      'timings': timing_bars(runs),
  }
  paths = []
  for name, fig in figures.items():
    fig.savefig(out_dir / f'{name}.png', dpi=120)
    paths.append(out_dir / f'{name}.png')
  built = [tables.summary_table(runs, precision_k), tables.best_classes_table(runs, top_classes)]
  if untrained is not None:
    built.append(tables.untrained_table(runs, untrained, precision_k))
  for table in built:
    paths += table.write(out_dir)
  return paths


def comparison_report(jobs: Sequence[compare.Job], *, untrained_classes: Sequence[str] = (),
                      imagenet_classes: str | None = None, top_classes: int = 5
                      ) -> list[pathlib.Path]:
  """Reads the jobs' rows from their store and writes ``<out_dir>/comparison/``.

  Args:
    jobs: from :func:`fwjax.similarity.compare.comparison_jobs`.
    untrained_classes: the untrained classes by name (``--untrained_classes``), or
    imagenet_classes: an ``imagenet_class_index.json``: the classes matching none of its names
      are untrained. With neither, no untrained-class table is written.
    top_classes: rows per CNN of the best-classes table.

  Returns:
    The paths written.
  """
  runs, missing = compare.read_comparison(jobs)
  if missing:
    print(f'{len(missing)} comparison rows not complete in the store (left out), e.g. '
          f'{missing[0]}', flush=True)
  untrained = None
  if untrained_classes or imagenet_classes:
    names = compare.imagenet_class_names(imagenet_classes) if imagenet_classes else None
    classes = sorted({c for run in runs for c in run.classes.values()})
    untrained = compare.untrained_classes(classes, listed=untrained_classes, imagenet_names=names)
  config = jobs[0].config
  out_dir = pathlib.Path(config.out_dir).parents[1] / compare.COMPARISON_DIR
  return write_comparison(runs, out_dir, precision_k=config.precision_at[0], untrained=untrained,
                          top_classes=top_classes)
