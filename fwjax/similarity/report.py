"""What a similarity run writes for people: ranked lists (CSV), HTML pages and plots.

The job hands its arrays to the writers here: :func:`write_rankings` (a CSV per query and
metric), :func:`write_query_pages` (a page per query and reference count, every metric side by
side), :func:`write_index` (the run's ``index.html``) and the two plots. The HTML itself is
built in ``fwjax.similarity.pages``. Plots are ``matplotlib.figure.Figure`` objects (no pyplot:
no display, and the user's matplotlib backend is never changed).
"""

from __future__ import annotations

import csv
import datetime
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fwjax import distances
from fwjax import runs
from fwjax.data.retrieval_sets import Query
from fwjax.similarity import features as features_lib
from fwjax.similarity import pages
from fwjax.similarity.config import SimilarityConfig

PLOTS = ('cmc.png', 'inverse_recall.png')
# Columns of the index's scores table that label a row or time it: never marked best.
SCORE_LABELS = ('metric', 'R', 'queries', 'distance seconds')
INDEX = 'index.html'


def plot_cmc(out_path: str | pathlib.Path,
             curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
             *, published: Mapping[str, Mapping[float, float]] | None = None,
             title: str = 'Cumulative match characteristic') -> pathlib.Path:
  """Draws CMC curves (one per metric / reference count) as a PNG.

  Args:
    out_path: the .png to write.
    curves: label -> (percent, fraction), e.g. from ``fwjax.metrics.cmc_curve``.
    published: optional label -> {percent: fraction} points from the literature, drawn as markers
      so a run can be read against them.
    title: plot title.

  Returns:
    The path written.
  """
  figure = Figure(figsize=(6, 4.5), dpi=100)
  axes = figure.add_subplot()
  for label, (percent, fraction) in curves.items():
    axes.plot(percent, 100 * np.asarray(fraction), label=label)
  for label, points in (published or {}).items():
    xs = sorted(points)
    axes.plot(xs, [100 * points[x] for x in xs], 'o--', label=label)
  axes.set_xlim(0, 20)
  axes.set_ylim(0, 100)
  axes.set_xlabel('top % of the collection')
  axes.set_ylabel('% of queries with a match')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  return _save(figure, out_path)


def plot_inverse_recall(out_path: str | pathlib.Path,
                        curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        *, title: str = 'Inverse recall') -> pathlib.Path:
  """Draws inverse-recall curves as a PNG: share of the collection to inspect vs recall.

  Args:
    out_path: the .png to write.
    curves: label -> (recall levels q in [0, 1], mean inverse recall at q in [0, 1]).
    title: plot title.

  Returns:
    The path written.
  """
  figure = Figure(figsize=(6, 4.5), dpi=100)
  axes = figure.add_subplot()
  for label, (levels, values) in curves.items():
    axes.plot(levels, values, label=label)
  axes.plot([0, 1], [0, 1], color='grey', linestyle=':', label='random order')
  axes.set_xlim(0, 1)
  axes.set_ylim(0, 1)
  axes.set_xlabel('recall q (share of the relevant items found)')
  axes.set_ylabel('share of the collection inspected')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  return _save(figure, out_path)


def _save(figure: Figure, out_path: str | pathlib.Path) -> pathlib.Path:
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  figure.tight_layout()
  figure.savefig(out_path)
  return out_path


def _distances_of(query: np.ndarray, items: np.ndarray, indices: np.ndarray, metric: str,
                  fusion: str) -> np.ndarray:
  """Fused distances of one query to ``items[indices]``, in the order of ``indices``."""
  dist, order = distances.rank(query[None], np.asarray(items[np.sort(indices)]), metric=metric,
                               fusion=fusion)
  by_position = np.empty(len(indices), np.float32)
  by_position[np.asarray(order)[0]] = np.asarray(dist)[0]
  return by_position[np.argsort(np.argsort(indices))]


def _safe(name: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.+' else '_' for c in name)


def write_rankings(config: SimilarityConfig, out_dir: pathlib.Path, queries: list[Query],
                   query_feats: np.ndarray, items: features_lib.FeatureSet,
                   item_classes: np.ndarray | None,
                   ranked: dict[str, tuple[np.ndarray, np.ndarray, float]], metric: str,
                   num_refs: int) -> None:
  """A CSV per query: rank, path, every metric's distance, ordered by ``metric``.

  Distances are written with the shortest text that reads back as the same float (numpy's
  round-trip repr), so two distinct distances never print alike.
  """
  dist, order, _ = ranked[metric]
  dist, order = dist[:, :config.k or None], order[:, :config.k or None]
  num_items = len(items.paths)
  folder = out_dir / f'R{num_refs}'
  for i, query in enumerate(queries):
    columns = {metric: dist[i]}
    for other in config.metrics:
      if other == metric:
        continue
      other_dist, other_order, _ = ranked[other]
      if other_order.shape[1] < num_items:
        columns[other] = _distances_of(query_feats[i], items.features, order[i], other,
                                       config.fusion)
      else:  # the full order of the other metric holds every distance: invert it
        by_item = np.empty(len(items.paths), np.float32)
        by_item[other_order[i]] = other_dist[i]
        columns[other] = by_item[order[i]]
    relevant = None
    if query.target is not None and item_classes is not None:
      relevant = item_classes[order[i]] == query.target
    path = folder / metric / f'{_safe(query.id)}.csv'
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['rank', 'path', *columns] + (['relevant'] if relevant is not None else []))
      for r, index in enumerate(order[i]):
        row = [r + 1, str(items.paths[index])] + [str(columns[m][r]) for m in columns]
        writer.writerow(row + ([int(relevant[r])] if relevant is not None else []))


def query_page_path(out_dir: pathlib.Path, num_refs: int, query_id: str) -> pathlib.Path:
  """Where the page of one query and reference count is written."""
  return out_dir / f'R{num_refs}' / 'pages' / f'{_safe(query_id)}.html'


def write_query_pages(config: SimilarityConfig, out_dir: pathlib.Path, queries: list[Query],
                      items: features_lib.FeatureSet, item_classes: np.ndarray | None,
                      ranked: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                      query_scores: Mapping[str, Mapping[int, Mapping[str, float]]],
                      num_refs: int) -> list[pages.IndexRow]:
  """A page per query of one reference count, every metric's top ``html_top`` side by side.

  Args:
    config: the run's settings (metrics, ``html_top``, ``name``).
    out_dir: the run folder.
    queries: the queries of this reference count.
    items: the ranked collection.
    item_classes: the class of every item, where known.
    ranked: metric -> (distances, order, seconds), rows in ``queries`` order, best first.
    query_scores: metric -> {query index: that query's scores}, for the scored queries.
    num_refs: the reference count.

  Returns:
    The index's row of every query, in order.
  """
  rows = []
  skipped = [(str(p), r) for p, r in items.skipped]
  for i, query in enumerate(queries):
    results, first_match = [], {}
    for metric in config.metrics:
      dist, order, _ = ranked[metric]
      relevant = first = None
      if query.target is not None and item_classes is not None:
        # With ground truth the full order is ranked, so the first match's rank is exact.
        relevant = item_classes[order[i]] == query.target
        first = int(np.argmax(relevant)) + 1 if relevant.any() else None
      top = min(config.html_top, order.shape[1])
      results.append(pages.MetricResults(
          metric, [items.paths[j] for j in order[i][:top]], dist[i][:top],
          None if relevant is None else relevant[:top],
          query_scores.get(metric, {}).get(i)))
      first_match[metric] = first
    page = query_page_path(out_dir, num_refs, query.id)
    pages.query_page(page, query_id=query.id, references=query.references, results=results,
                     target=query.target, skipped=skipped, title=config.name, root=out_dir,
                     index=out_dir / INDEX)
    rows.append(pages.IndexRow(num_refs, query.id, query.references, query.target,
                               first_match, page))
  return rows


def weights_text(config: SimilarityConfig) -> str:
  """The weights file's name and SHA-256, or the random initialisation's seed."""
  if config.weights is None:
    return f'random initialisation (seed {config.seed})'
  path = pathlib.Path(config.weights).expanduser()
  digest = runs.weights_identity(path).removeprefix('sha256:')
  what = 'SHA-256 of its files' if path.is_dir() else 'SHA-256'
  return f'{path.name} ({what} {digest})'


def _seconds(values: Mapping[str, float], name: str) -> str:
  value = values.get(name)
  return '?' if value is None else f'{value:.2f} s'


def _extraction_text(extraction: Mapping[str, float]) -> str:
  extracted = int(extraction.get('images_extracted', 0))
  cached = int(extraction.get('images_from_cache', 0))
  if not extracted:
    return f'all {cached} images from the feature cache'
  return (f'{_seconds(extraction, "seconds")} for {extracted} images '
          f'({extraction["seconds_per_10000_images"]:.1f} s per 10,000)'
          + (f'; {cached} more from the feature cache' if cached else ''))


def write_index(config: SimilarityConfig, out_dir: pathlib.Path, summary: Mapping[str, Any],
                rows: Sequence[pages.IndexRow]) -> pathlib.Path:
  """Writes the run's ``index.html`` from its summary and the rows of every query page.

  Args:
    config: the run's settings (for MCNCC, ``metrics`` is ``('mcncc',)``).
    out_dir: the run folder.
    summary: what :func:`fwjax.similarity.job.run_similarity` returns.
    rows: every query page's row.

  Returns:
    The path written.
  """
  if config.matcher == 'mcncc':
    size = f'feature maps at scale {config.match_scale:g} (each image keeps its aspect)'
  else:
    size = f'{config.height}x{config.width} ({config.policy}, {config.composition})'
  skipped = len(summary.get('skipped', ()))
  facts = {
      'model': f'{config.arch}, stage {config.stage}, input {size}',
      'weights': weights_text(config),
      'features': summary['features'],
      'metrics': ', '.join(config.metrics) + (
          f' (several references fused by {config.fusion})'
          if max(config.num_references) > 1 else ''),
      'reference counts': ', '.join(map(str, config.num_references)),
      'collection': f'{summary["collection"]}; {summary["num_items"]} images ranked'
                    + (f', {skipped} unreadable left out' if skipped else ''),
      'written': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
  }
  scores = []
  for entry in summary['results']:
    row: dict[str, Any] = {'metric': entry['metric'], 'R': entry['num_references'],
                           'queries': entry['num_queries']}
    for name, value in entry.items():
      if name.startswith(('precision@', 'inverse_recall@', 'auirc', 'cmc@')):
        row[name] = value
    if 'first_match_rank' in entry:
      row['mean first match'] = entry['first_match_rank']
    row['distance seconds'] = entry['distance_seconds']
    scores.append(row)
  timings = summary['timings']
  build = timings.get('model_build', {})
  timing_text = {
      'model build': f'{_seconds(build, "seconds")} (load {_seconds(build, "load_seconds")}, '
                     f'compile {_seconds(build, "compile_seconds")})',
      'feature extraction': _extraction_text(timings.get('feature_extraction', {})),
      'distances': f'{sum(e["distance_seconds"] for e in summary["results"]):.2f} s in all '
                   '(per metric and reference count: the scores table)',
  }
  links = [(name, name) for name in ('summary.json', 'flags.txt', 'collection.csv',
                                     'references.csv') if (out_dir / name).exists()]
  if skipped:
    links.append((f'skipped.csv ({skipped} unreadable)', 'skipped.csv'))
  return pages.index_page(
      out_dir / INDEX, title=config.name, facts=facts, scores=scores,
      compared=[c for c in dict.fromkeys(c for row in scores for c in row)
                if c not in SCORE_LABELS],
      timings=timing_text,
      rows=rows, metrics=config.metrics, links=links,
      plots=[p for p in PLOTS if (out_dir / p).exists()])
