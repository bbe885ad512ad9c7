"""What an investigator looks at after a similarity run: one HTML page per query, and plots.

Each page is self-contained (thumbnails are inline base64 PNGs), so it can be copied off the
machine that ran the ranking, attached to a case file, or opened from a USB stick without the
collection beside it. Plots are built as ``matplotlib.figure.Figure`` objects (no pyplot: no
display, and the user's matplotlib backend is never changed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from fwjax import distances
from fwjax.data.retrieval_sets import RetrievalSet
from fwjax.similarity import features as features_lib
from fwjax.similarity.config import SimilarityConfig

# Thumbnails are decoded from the originals (up to 100 Mpx scans): the cap keeps a page with 50
# results in the low megabytes and the decode bounded.
THUMBNAIL_SIZE = 192


def thumbnail_png(path: str | pathlib.Path, size: int = THUMBNAIL_SIZE) -> str | None:
  """Returns a base64 PNG thumbnail of an image file, or None when the file cannot be read.

  Args:
    path: image file.
    size: the longer side of the thumbnail in pixels (aspect ratio kept).

  Returns:
    The base64 text of a PNG (for a ``data:image/png;base64,`` URL), or None for a file Pillow
    cannot decode (the page then says so instead of showing a picture).
  """
  try:
    with Image.open(path) as image:
      # draft() lets the JPEG decoder downscale while decoding: a 15000x7000 scan is not
      # fully decoded just to show 192 pixels of it.
      image.draft('L', (size, size))
      image = image.convert('L')
      image.thumbnail((size, size), Image.Resampling.BILINEAR)
      buffer = io.BytesIO()
      image.save(buffer, format='PNG', optimize=True)
  except (OSError, ValueError, Image.DecompressionBombError):
    return None
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def _figure(path: str | pathlib.Path | None, label: str) -> str:
  """Returns the HTML of one thumbnail with a caption (path text when no image)."""
  encoded = thumbnail_png(path) if path is not None else None
  if encoded is None:
    picture = '<div class="missing">image not readable</div>'
  else:
    picture = f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(str(path))}">'
  return f'<figure>{picture}<figcaption>{label}</figcaption></figure>'


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
section { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 200px; text-align: center; }
figure img { max-width: 192px; max-height: 192px; border: 1px solid #999; }
figure.relevant img { border: 3px solid #1a8f1a; }
figcaption { font-size: 12px; word-break: break-all; }
.missing { width: 192px; height: 96px; background: #eee; line-height: 96px; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #bbb; padding: 2px 8px; text-align: left; }
"""


def query_page(
    out_path: str | pathlib.Path,
    *,
    query_id: str,
    references: Sequence[str | pathlib.Path],
    results: Sequence[str | pathlib.Path],
    distances: Sequence[float],
    metric: str,
    relevant: Sequence[bool] | None = None,
    scores: Mapping[str, float] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    title: str = 'Similarity ranking',
) -> pathlib.Path:
  """Writes one self-contained HTML page: the reference image(s) and the top results.

  Args:
    out_path: the .html file to write (parent folders are created).
    query_id: the query's name, shown in the heading.
    references: the reference image(s) the collection was ranked against.
    results: the top-ranked collection items, best first.
    distances: their distances to the reference(s), same order as ``results``.
    metric: name of the distance, shown with each distance.
    relevant: where ground truth is known, whether each result is a correct match (outlined in
      green and marked in its caption).
    scores: where ground truth is known, this query's scores (precision@k, ...), shown as a table.
    skipped: (path, reason) of collection images that could not be read and were left out of the
      ranking; listed on the page so the investigator knows what was not searched.
    title: page title.

  Returns:
    The path written.

  Raises:
    ValueError: when ``results``, ``distances`` and ``relevant`` differ in length.
  """
  if len(results) != len(distances) or (relevant is not None and len(relevant) != len(results)):
    raise ValueError(f'query {query_id}: {len(results)} results, {len(distances)} distances'
                     + ('' if relevant is None else f', {len(relevant)} relevance flags')
                     + ': they must have one entry per result')
  parts = [
      '<!DOCTYPE html><html><head><meta charset="utf-8">',
      f'<title>{html.escape(title)}: {html.escape(query_id)}</title>',
      f'<style>{_STYLE}</style></head><body>',
      f'<h1>{html.escape(title)}: query {html.escape(query_id)}</h1>',
      f'<h2>Reference{"s" if len(references) > 1 else ""} ({len(references)})</h2><section>',
  ]
  for path in references:
    parts.append(_figure(path, html.escape(str(path))))
  parts.append('</section>')
  if scores:
    parts.append('<h2>Scores</h2><table><tr><th>score</th><th>value</th></tr>')
    for name, value in scores.items():
      parts.append(f'<tr><td>{html.escape(name)}</td><td>{value:.4f}</td></tr>')
    parts.append('</table>')
  parts.append(f'<h2>Top {len(results)} by {html.escape(metric)} distance</h2><section>')
  for rank, (path, distance) in enumerate(zip(results, distances), start=1):
    is_relevant = relevant is not None and bool(relevant[rank - 1])
    caption = (f'#{rank} &middot; {html.escape(metric)} {float(distance):.4g}'
               + (' &middot; <b>match</b>' if is_relevant else '')
               + f'<br>{html.escape(str(path))}')
    figure = _figure(path, caption)
    if is_relevant:
      figure = figure.replace('<figure>', '<figure class="relevant">', 1)
    parts.append(figure)
  parts.append('</section>')
  if skipped:
    parts.append(f'<h2>Left out of the ranking: {len(skipped)} unreadable image(s)</h2><ul>')
    for path, reason in skipped:
      parts.append(f'<li>{html.escape(str(path))}: {html.escape(reason)}</li>')
    parts.append('</ul>')
  parts.append('</body></html>')
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text('\n'.join(parts), encoding='utf-8')
  return out_path


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


def write_rankings(config: SimilarityConfig, out_dir: pathlib.Path, collection: RetrievalSet,
                    queries: list[Any], query_feats: np.ndarray, items: features_lib.FeatureSet,
                    item_classes: np.ndarray | None,
                    ranked: dict[str, tuple[np.ndarray, np.ndarray, float]], metric: str,
                    num_refs: int, scored_row: dict[int, int],
                    per_query: dict[str, np.ndarray]) -> None:
  """CSV per query (every metric's distance, ordered by ``metric``); HTML for the first metric."""
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
        row = [r + 1, str(items.paths[index])] + [f'{columns[m][r]:.6g}' for m in columns]
        writer.writerow(row + ([int(relevant[r])] if relevant is not None else []))
    if metric == config.metrics[0]:
      top = min(config.html_top, len(order[i]))
      scores = ({n: float(v[scored_row[i]]) for n, v in per_query.items()}
                if i in scored_row else None)
      query_page(
          folder / 'pages' / f'{_safe(query.id)}.html', query_id=query.id,
          references=query.references, results=[items.paths[j] for j in order[i][:top]],
          distances=dist[i][:top], metric=metric,
          relevant=None if relevant is None else relevant[:top], scores=scores,
          skipped=[(str(p), r) for p, r in items.skipped], title=config.name)
