"""The HTML an investigator reads after a similarity run: an index of queries, a page per query.

``index.html`` (in the run folder) says what was run (model, weights and their SHA-256, metrics,
reference counts, collection, date), the scores of every (metric, reference count), the timings,
and lists every query with its first-match rank under each metric and a link to its page.
``R<r>/pages/<query>.html`` shows a query's reference image(s) and, side by side, the top
results of every metric, each linked to its full-resolution original.

Thumbnails are inline base64 PNGs, so a page shows its pictures when copied off the machine
that ran the ranking (attached to a case file, opened from a USB stick). Links to originals
are relative for files inside the run folder (they move with it) and ``file://`` URIs for the
others. No JavaScript and no network: the pages are plain, printable HTML.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import math
import os
import pathlib
import urllib.parse
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

# Thumbnails are decoded from the originals (up to 100 Mpx scans): the cap keeps a page with 50
# results in the low megabytes and the decode bounded.
THUMBNAIL_SIZE = 192
INDEX_THUMBNAIL_SIZE = 80


def thumbnail_url(path: str | pathlib.Path, size: int = THUMBNAIL_SIZE) -> str | None:
  """Returns a thumbnail of an image file as a ``data:`` URL, or None when it cannot be read.

  Greyscale images (marks, scans; also colour files whose three channels are equal) become a
  lossless grey PNG; colour photographs keep their colour, as a JPEG (a colour PNG of a photo is
  several times larger, and a seized collection's pages hold hundreds of them).

  Args:
    path: image file.
    size: the longer side of the thumbnail in pixels (aspect ratio kept).

  Returns:
    ``data:image/png;base64,...`` or ``data:image/jpeg;base64,...``, or None for a file Pillow
    cannot decode (the page then says so instead of showing a picture).
  """
  try:
    with Image.open(path) as image:
      # draft() lets the JPEG decoder downscale while decoding: a 15000x7000 scan is not
      # fully decoded just to show 192 pixels of it.
      image.draft(image.mode if image.mode in ('L', 'RGB') else 'RGB', (size, size))
      if image.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F'):
        image = image.convert('L')
      else:
        image = image.convert('RGB')
      image.thumbnail((size, size), Image.Resampling.BILINEAR)
      if image.mode == 'RGB':
        rgb = np.asarray(image)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
          image = image.convert('L')
      buffer = io.BytesIO()
      if image.mode == 'L':
        image.save(buffer, format='PNG', optimize=True)
        kind = 'png'
      else:
        image.save(buffer, format='JPEG', quality=90)
        kind = 'jpeg'
  except (OSError, ValueError, Image.DecompressionBombError):
    return None
  return f'data:image/{kind};base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')


@functools.lru_cache(maxsize=1024)
def _thumbnail_of_version(path: str, size: int, version: tuple[int, int]) -> str | None:
  del version  # part of the cache key only: a file rewritten since gets a new thumbnail
  return thumbnail_url(path, size)


def _thumbnail(path: str | pathlib.Path, size: int) -> str | None:
  """``thumbnail_url``, decoded once per file version: the top items recur over queries."""
  try:
    stat = os.stat(path)
  except OSError:
    return None
  return _thumbnail_of_version(str(path), size, (stat.st_mtime_ns, stat.st_size))


def format_number(value: float, digits: int) -> str:
  """``value`` with at least ``digits`` significant digits, in positional notation if moderate.

  From 1e-5 to 1e15 the number is written without an exponent (``1704``, not ``1.7e+03``),
  keeping trailing zeros so a column shows its precision (``0.500``); the integer part is
  never cut, so a large value may show more digits than asked. Outside that range, and for
  0, NaN and infinities, Python's ``g`` format.
  """
  value = float(value)
  if value == 0 or not math.isfinite(value) or not 1e-5 <= abs(value) < 1e15:
    return f'{value:.{digits}g}'
  exponent = math.floor(math.log10(abs(value)))
  return f'{value:.{max(digits - 1 - exponent, 0)}f}'


def significant_digits(values: Sequence[float], minimum: int = 3, maximum: int = 17) -> int:
  """The fewest significant digits (``minimum`` to ``maximum``) that keep distinct values apart.

  With this many digits (:func:`format_number`), every two values of ``values`` that differ
  print differently (for a sorted list: every consecutive pair of distinct values); equal
  values print equal with any. 17 significant digits tell any two float64 values apart, so
  ``maximum`` 17 always suffices.

  Args:
    values: the numbers of one list (e.g. the distances of one ranking). NaN and infinities
      print as themselves and need no digits.
    minimum: digits used even when fewer would do.
    maximum: digits never exceeded.

  Returns:
    The number of significant digits.
  """
  finite = np.unique([float(v) for v in values if math.isfinite(float(v))])
  for digits in range(minimum, maximum):
    if len({format_number(v, digits) for v in finite}) == len(finite):
      return digits
  return maximum


def format_distances(values: Sequence[float]) -> list[str]:
  """The values as text, all with the :func:`significant_digits` of the list.

  Example: ``format_distances([0.1234567, 0.1234571])`` is ``['0.1234567', '0.1234571']``;
  ``format_distances([0.5, 2.0])`` is ``['0.500', '2.00']``.
  """
  digits = significant_digits(values)
  return [format_number(v, digits) for v in values]


def file_href(path: str | pathlib.Path, page: str | pathlib.Path,
              root: str | pathlib.Path | None = None) -> str:
  """A link from the HTML file ``page`` to the file ``path``.

  Relative (URL-quoted) when ``path`` lies inside ``root`` (the run folder, which is moved or
  copied as a whole); otherwise the absolute ``file://`` URI, which still opens the original
  when the run folder alone is copied elsewhere on the same machine.
  """
  target = os.path.abspath(path)
  if root is not None:
    base = os.path.abspath(root)
    if os.path.commonpath([target, base]) == base:
      relative = os.path.relpath(target, os.path.dirname(os.path.abspath(page)))
      return urllib.parse.quote(pathlib.Path(relative).as_posix())
  return pathlib.Path(target).as_uri()


@dataclasses.dataclass
class MetricResults:
  """The top of one metric's ranking for one query, as a query page shows it.

  Attributes:
    metric: the distance's name.
    paths: the top-ranked collection items, best first.
    distances: their (fused) distances to the query's reference(s).
    relevant: where ground truth is known, whether each item is a correct match.
    scores: where ground truth is known, this query's scores under the metric (precision@k,
      first_match_rank ...).
  """
  metric: str
  paths: Sequence[str | pathlib.Path]
  distances: Sequence[float]
  relevant: Sequence[bool] | None = None
  scores: Mapping[str, float] | None = None

  def __post_init__(self):
    if len(self.paths) != len(self.distances) or (
        self.relevant is not None and len(self.relevant) != len(self.paths)):
      raise ValueError(
          f'{self.metric}: {len(self.paths)} results, {len(self.distances)} distances'
          + ('' if self.relevant is None else f', {len(self.relevant)} relevance flags')
          + ': they must have one entry per result')


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin: 1em 0 0.5em; }
.top { display: flex; flex-wrap: wrap; gap: 40px; align-items: flex-start; }
section { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; }
figure img { max-width: 192px; max-height: 192px; border: 3px solid transparent;
  outline: 1px solid #999; }
figure.relevant img { border-color: #1a8f1a; outline-color: #1a8f1a; }
figcaption { font-size: 12px; word-break: break-all; max-width: 200px; margin: 2px auto 0; }
.missing { width: 192px; height: 96px; background: #eee; line-height: 96px; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results td { text-align: center; width: 210px; }
table.results td.rank { font-weight: bold; vertical-align: middle; width: 3em; }
table.results th { text-align: center; }
.match { color: #1a8f1a; font-weight: bold; }
table.queries td { vertical-align: middle; }
.thumbs img { max-height: 80px; max-width: 80px; border: 1px solid #999; margin: 1px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 14px; }
dt { font-weight: bold; } dd { margin: 0; word-break: break-all; }
.plots img { width: 450px; border: 1px solid #ccc; }
@media print { a { color: inherit; text-decoration: none; } }
"""


def _head(title: str) -> list[str]:
  return ['<!DOCTYPE html><html><head><meta charset="utf-8">',
          f'<title>{html.escape(title)}</title>', f'<style>{_STYLE}</style></head><body>']


def _img(path: str | pathlib.Path, size: int) -> str:
  encoded = _thumbnail(path, size)
  if encoded is None:
    return '<div class="missing">image not readable</div>'
  return f'<img src="{encoded}" alt="{html.escape(str(path))}">'


def _figure(path: str | pathlib.Path, caption: str, href: str, relevant: bool = False) -> str:
  """One thumbnail, linked to its original, with a caption."""
  cls = ' class="relevant"' if relevant else ''
  return (f'<figure{cls}><a href="{html.escape(href)}">{_img(path, THUMBNAIL_SIZE)}</a>'
          f'<figcaption>{caption}</figcaption></figure>')


def _score_text(name: str, value: float) -> str:
  if name == 'first_match_rank':
    return f'{value:g}'
  return f'{value:.4f}'


def _best(name: str, values: Sequence[float]) -> float | None:
  """The best of one score's values (precision and CMC are higher-better, the rest lower).

  None when all are equal: bold on every cell would mark nothing.
  """
  finite = [v for v in values if math.isfinite(v)]
  if len(set(finite)) < 2:
    return None
  return max(finite) if name.startswith(('precision@', 'cmc@')) else min(finite)


def query_page(
    out_path: str | pathlib.Path,
    *,
    query_id: str,
    references: Sequence[str | pathlib.Path],
    results: Sequence[MetricResults],
    target: str | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    title: str = 'Similarity ranking',
    root: str | pathlib.Path | None = None,
    index: str | pathlib.Path | None = None,
) -> pathlib.Path:
  """Writes one query's page: its reference image(s) and every metric's top results side by side.

  Args:
    out_path: the .html file to write (parent folders are created).
    query_id: the query's name, shown in the heading.
    references: the reference image(s) the collection was ranked against.
    results: one entry per metric, shown as columns in this order; row r holds every metric's
      result at rank r.
    target: the query's class where known.
    skipped: (path, reason) of collection images that could not be read and were left out of the
      ranking; listed on the page so the investigator knows what was not searched.
    title: page title (the run's name).
    root: the run folder: links to files inside it are relative (see :func:`file_href`).
    index: the run's ``index.html``, linked from the heading when given.

  Returns:
    The path written.
  """
  out_path = pathlib.Path(out_path)
  plural = 's' if len(references) > 1 else ''
  parts = _head(f'{title}: {query_id}')
  if index is not None:
    parts.append(f'<p><a href="{html.escape(file_href(index, out_path, root))}">'
                 '&larr; all queries</a></p>')
  parts.append(f'<h1>{html.escape(title)}: query {html.escape(query_id)}</h1>')
  facts = {'reference images': str(len(references)), 'class': target,
           'metrics': ', '.join(r.metric for r in results)}
  # The query, its facts and its scores side by side: the results start high on the page.
  parts.append('<div class="top"><div>')
  parts.append('<dl>' + ''.join(f'<dt>{n}</dt><dd>{html.escape(v)}</dd>'
                                for n, v in facts.items() if v is not None) + '</dl>')
  parts.append(f'<h2>Reference{plural}</h2><section>')
  for path in references:
    parts.append(_figure(path, html.escape(pathlib.Path(path).name),
                         file_href(path, out_path, root)))
  parts.append('</section></div><div>')
  parts += _scores_table(results)
  parts.append('</div></div>')
  depth = max((len(r.paths) for r in results), default=0)
  parts.append(f'<h2>Top {depth} by each metric</h2><table class="results"><tr><th>rank</th>'
               + ''.join(f'<th>{html.escape(r.metric)}</th>' for r in results) + '</tr>')
  texts = [format_distances(r.distances) for r in results]
  for rank in range(1, depth + 1):
    parts.append(f'<tr><td class="rank">{rank}</td>')
    for result, text in zip(results, texts):
      if rank > len(result.paths):
        parts.append('<td></td>')
        continue
      path = result.paths[rank - 1]
      relevant = result.relevant is not None and bool(result.relevant[rank - 1])
      href = file_href(path, out_path, root)
      caption = (f'#{rank} &middot; <span class="distance">{text[rank - 1]}</span>'
                 + (' &middot; <span class="match">match</span>' if relevant else '')
                 + f'<br><a href="{html.escape(href)}" title="{html.escape(str(path))}">'
                 f'{html.escape(pathlib.Path(path).name)}</a>')
      parts.append(f'<td>{_figure(path, caption, href, relevant)}</td>')
    parts.append('</tr>')
  parts.append('</table>')
  if skipped:
    parts.append(f'<h2>Left out of the ranking: {len(skipped)} unreadable image(s)</h2><ul>')
    for path, reason in skipped:
      parts.append(f'<li>{html.escape(str(path))}: {html.escape(reason)}</li>')
    parts.append('</ul>')
  parts.append('</body></html>')
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text('\n'.join(parts), encoding='utf-8')
  return out_path


def _scores_table(results: Sequence[MetricResults]) -> list[str]:
  """This query's scores: a row per score, a column per metric (none without ground truth)."""
  names = list(dict.fromkeys(n for r in results for n in (r.scores or {})))
  if not names:
    return []
  parts = ['<h2>Scores of this query (best in bold)</h2><table><tr><th>score</th>'
           + ''.join(f'<th class="num">{html.escape(r.metric)}</th>' for r in results) + '</tr>']
  for name in names:
    values = [r.scores.get(name) if r.scores else None for r in results]
    best = _best(name, [v for v in values if v is not None])
    cells = []
    for value in values:
      text = '&ndash;' if value is None else _score_text(name, value)
      cells.append(f'<td class="num">{f"<b>{text}</b>" if value == best else text}</td>')
    label = name.replace('_', ' ')
    parts.append(f'<tr><td>{html.escape(label)}</td>{"".join(cells)}</tr>')
  parts.append('</table>')
  return parts


@dataclasses.dataclass
class IndexRow:
  """One query of one reference count, as the index lists it.

  Attributes:
    num_references: the reference count R.
    query_id: the query's name.
    references: its reference image(s).
    target: its class where known.
    first_match: metric -> rank of the first correct match (None: none in the collection, or
      no ground truth).
    page: the query's page.
  """
  num_references: int
  query_id: str
  references: Sequence[str | pathlib.Path]
  target: str | None
  first_match: Mapping[str, int | None]
  page: pathlib.Path


def index_page(
    out_path: str | pathlib.Path,
    *,
    title: str,
    facts: Mapping[str, str],
    scores: Sequence[Mapping[str, object]],
    compared: Sequence[str] = (),
    timings: Mapping[str, str],
    rows: Sequence[IndexRow],
    metrics: Sequence[str],
    links: Sequence[tuple[str, str]] = (),
    plots: Sequence[str] = (),
) -> pathlib.Path:
  """Writes a run's index: what was run, its scores and timings, and every query.

  Args:
    out_path: the ``index.html`` to write (in the run folder).
    title: the run's name.
    facts: label -> text of the run's identity (model, weights, collection, date ...), in order.
    scores: one row per (metric, reference count): column name -> value (floats get 4 decimals).
    compared: score columns whose best value among the rows of one reference count (the
      column ``'R'``) is bold (precision@k and CMC higher-better, the others lower).
    timings: label -> text.
    rows: every query of every reference count, in order.
    metrics: the metrics, in column order.
    links: (text, href relative to the run folder) of the run's other files.
    plots: file names of plots in the run folder, shown and linked.

  Returns:
    The path written.
  """
  out_path = pathlib.Path(out_path)
  parts = _head(title) + [f'<h1>{html.escape(title)}</h1><dl>']
  parts += [f'<dt>{html.escape(n)}</dt><dd>{html.escape(v)}</dd>' for n, v in facts.items()]
  parts.append('</dl>')
  if links:
    parts.append('<p>' + ' &middot; '.join(
        f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in links) + '</p>')
  if scores:
    columns = list(dict.fromkeys(c for row in scores for c in row))
    parts.append('<h2>Scores' + (' (best of each reference count in bold)' if compared else '')
                 + '</h2><table><tr>'
                 + ''.join(f'<th>{html.escape(c)}</th>' for c in columns) + '</tr>')
    best = {}
    for column in compared:
      for r in {row.get('R') for row in scores}:
        values = [row[column] for row in scores if row.get('R') == r and column in row]
        best[column, r] = _best(column, values)
    for row in scores:
      cells = (_cell(row.get(c), row.get(c) is not None
                     and row.get(c) == best.get((c, row.get('R')))) for c in columns)
      parts.append('<tr>' + ''.join(cells) + '</tr>')
    parts.append('</table>')
  if timings:
    parts.append('<h2>Timings</h2><table>' + ''.join(
        f'<tr><td>{html.escape(n)}</td><td class="num">{html.escape(v)}</td></tr>'
        for n, v in timings.items()) + '</table>')
  if plots:
    parts.append('<h2>Curves</h2><section class="plots">' + ''.join(
        f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" alt="{html.escape(p)}"></a>'
        for p in plots) + '</section>')
  parts += _queries_table(out_path, rows, metrics)
  parts.append('</body></html>')
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text('\n'.join(parts), encoding='utf-8')
  return out_path


def _cell(value: object, bold: bool = False) -> str:
  if value is None:
    return '<td class="num">&ndash;</td>'
  text = f'{value:.4f}' if isinstance(value, float) else html.escape(str(value))
  cls = ' class="num"' if isinstance(value, (int, float)) else ''
  return f'<td{cls}>{f"<b>{text}</b>" if bold else text}</td>'


def _queries_table(out_path: pathlib.Path, rows: Sequence[IndexRow],
                   metrics: Sequence[str]) -> list[str]:
  """Every query: thumbnails, class, first-match rank per metric (best in bold), page link."""
  ranked = any(r is not None for row in rows for r in row.first_match.values())
  parts = [f'<h2>Queries ({len(rows)})</h2>']
  if not ranked:
    parts.append('<p>No ground truth: first-match ranks are not known.</p>')
  span = ' rowspan="2"' if ranked else ''
  header = ''.join(f'<th{span}>{h}</th>' for h in ('R', 'reference(s)', 'query', 'class'))
  if ranked:
    header += (f'<th colspan="{len(metrics)}">rank of the first match (best in bold)</th></tr>'
               '<tr>' + ''.join(f'<th class="num">{html.escape(m)}</th>' for m in metrics))
  parts.append(f'<table class="queries"><tr>{header}</tr>')
  for row in rows:
    page = file_href(row.page, out_path, out_path.parent)
    thumbs = ''.join(f'<a href="{html.escape(page)}">{_img(p, INDEX_THUMBNAIL_SIZE)}</a>'
                     for p in row.references)
    cells = [f'<td class="num">{row.num_references}</td>', f'<td class="thumbs">{thumbs}</td>',
             f'<td><a href="{html.escape(page)}">{html.escape(row.query_id)}</a></td>',
             f'<td>{html.escape(row.target) if row.target is not None else "&ndash;"}</td>']
    if ranked:
      known = [r for r in row.first_match.values() if r is not None]
      best = _best('first_match_rank', known)
      for metric in metrics:
        rank = row.first_match.get(metric)
        text = '&ndash;' if rank is None else (f'<b>{rank}</b>' if rank == best else str(rank))
        cells.append(f'<td class="num">{text}</td>')
    parts.append('<tr>' + ''.join(cells) + '</tr>')
  parts.append('</table>')
  return parts
