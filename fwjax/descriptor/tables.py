"""Budka et al.'s Tables 3-8 from the grid's runs: rows, columns, aggregation and statistics.

:func:`build` turns complete runs (one dict per run: composition, preprocess, resolution
``'HxW'``, loss, seed, prauc) into :class:`Table` objects; ``fwjax.descriptor.grid.tables``
reads the runs from the results store and prints them as markdown.

Aggregation, the same in every table:

- a *configuration* is (resolution, loss, composition, preprocess); its cell is the mean macro
  PRAUC over its seeds, shown ``mean ± sd`` (sample sd) when it has several;
- a mean over configurations gives each configuration equal weight (the mean of their
  seed-means), whatever its number of seeds;
- a *rank* is 1 for the highest PRAUC among the rows compared, ties sharing their mean rank;
- a *max difference* is the best minus the worst of the values compared (the margin by which
  the choice along that axis matters);
- the *run-to-run spread* under each table (the paper's "0.0051 / 0.0206" figures) is the
  pooled sample sd over seeds of the table's configurations that ran with several seeds, and
  the largest max - min between the seeds of one configuration.

The tables (the paper states the content of Tables 3, 6 and 8; for 4, 5 and 7 the layout below
is our reading of "ranks, means and max-difference margins"):

- Table 3: every configuration at the aspect-preserving size (352x144) against the squished
  square (224x224): rows composition x preprocessing, per loss both sizes and their difference;
  footer means and wins; below, the mean difference over every configuration of both losses
  (the paper: +0.0199) with its range.
- Table 4: the channel compositions ranked over the 352x144 / 224x224 grid: per (resolution,
  loss) the mean over preprocessing layers, then the mean over every configuration, the mean
  rank (compositions ranked within each resolution x loss x preprocessing), the difference to
  the best; rows by mean rank; footer max differences.
- Table 5: the same for the preprocessing layers (ranked within resolution x loss x composition).
- Table 6: 352x144 with BCE only: composition x preprocessing, with row and column means and
  max differences; the best cell in bold.
- Table 7: the higher resolutions (more pixels than 352x144; the paper's 464x192 and 928x384),
  BCE: one row per composition x preprocessing run there, each resolution's PRAUC with its rank
  among the rows, and its gain over the same configuration at 352x144; footer means and max
  differences.
- Table 8: the highest resolution above 352x144 (the paper's 928x384) with ``inc_d`` and BCE,
  one row per composition with its rank and difference to the best, and the same composition
  at 352x144 for the gain; footer mean and max difference.

A table without runs says which grid to run for it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Key = tuple[str, str, str, str]  # (resolution, loss, composition, preprocess)

MISSING = '—'


@dataclasses.dataclass
class Table:
  """One of the paper's tables: cells as printed.

  Attributes:
    number: the paper's table number.
    title: what the table shows.
    header: column names.
    rows: body rows, one list of cells per row (``len(header)`` cells each).
    footer: summary rows (means, max differences), the same width.
    notes: sentences printed under the table (differences over all rows, run-to-run spread).
    missing: what to run when the table has no rows.
  """
  number: int
  title: str
  header: list[str]
  rows: list[list[str]]
  footer: list[list[str]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  missing: str = 'run the grid for it'

  def markdown(self) -> str:
    """The table as a markdown section (``### Table N: ...``)."""
    lines = [f'### Table {self.number}: {self.title}', '']
    if not self.rows:
      lines.append(f'(no complete runs for this table in the store: {self.missing})')
      return '\n'.join(lines) + '\n'
    lines += ['| ' + ' | '.join(self.header) + ' |',
              '|' + '|'.join(' --- ' for _ in self.header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in self.rows + self.footer]
    if self.notes:
      lines += [''] + self.notes
    return '\n'.join(lines) + '\n'


def pixels(resolution: str) -> int:
  """``'352x144'`` -> 50688."""
  height, width = (int(v) for v in resolution.lower().split('x'))
  return height * width


def ranks(values: Mapping[Any, float]) -> dict[Any, float]:
  """Rank 1 for the highest value; tied values share the mean of their ranks."""
  out = {}
  for key, value in values.items():
    higher = sum(v > value for v in values.values())
    ties = sum(v == value for v in values.values())
    out[key] = higher + (ties + 1) / 2
  return out


def spread(groups: Iterable[Sequence[float]]) -> tuple[int, float, float]:
  """Run-to-run spread of configurations over seeds.

  Args:
    groups: the per-seed PRAUCs of each configuration.

  Returns:
    (number of configurations with two or more seeds, their pooled sample sd
    ``sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))``, the largest max - min of one configuration);
    (0, nan, nan) when no configuration has two seeds.
  """
  repeated = [np.asarray(g, np.float64) for g in groups if len(g) >= 2]
  if not repeated:
    return 0, math.nan, math.nan
  squares = sum(float(((g - g.mean()) ** 2).sum()) for g in repeated)
  dof = sum(len(g) - 1 for g in repeated)
  return (len(repeated), math.sqrt(squares / dof),
          max(float(g.max() - g.min()) for g in repeated))


def _mean(values: Iterable[float]) -> float:
  values = list(values)
  return float(np.mean(values)) if values else math.nan


def _num(value: float, signed: bool = False) -> str:
  if math.isnan(value):
    return MISSING
  return f'{value:+.4f}' if signed else f'{value:.4f}'


def _cell(values: Sequence[float]) -> str:
  if not values:
    return MISSING
  if len(values) == 1:
    return f'{values[0]:.4f}'
  return f'{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}'


def _rank(value: float) -> str:
  return MISSING if math.isnan(value) else f'{value:g}'


def _max_difference(values: Iterable[float]) -> str:
  values = [v for v in values if not math.isnan(v)]
  return _num(max(values) - min(values)) if len(values) >= 2 else MISSING


def _spread_note(by: Mapping[Key, list[float]], keys: Iterable[Key]) -> str:
  count, sd, largest = spread(by[k] for k in set(keys) if k in by)
  if not count:
    return ('Run-to-run spread: one seed per configuration here; run the grid with several '
            '--seeds to measure it.')
  return (f'Run-to-run spread over seeds: sd {sd:.4f} (pooled over the {count} configurations '
          f'with several seeds), largest max − min {largest:.4f}.')


class _Grid:
  """The runs by configuration, with the seed-mean of each."""

  def __init__(self, runs: Iterable[Mapping[str, Any]]):
    self.by: dict[Key, list[float]] = defaultdict(list)
    for run in runs:
      key = (run['resolution'], run['loss'], run['composition'], run['preprocess'])
      self.by[key].append(float(run['prauc']))

  def mean(self, key: Key) -> float:
    return _mean(self.by.get(key, ()))

  def has(self, key: Key) -> bool:
    return bool(self.by.get(key))

  def values(self, key: Key) -> list[float]:
    return self.by.get(key, [])


def build(runs: Iterable[Mapping[str, Any]], *, compositions: Sequence[str],
          preprocessing: Sequence[str], base_resolutions: tuple[str, str] = ('352x144', '224x224'),
          loss: str = 'bce', top_resolution: str | None = None, top_preprocess: str = 'inc_d'
          ) -> list[Table]:
  """The paper's Tables 3-8 from complete runs.

  Args:
    runs: one mapping per complete run with ``composition``, ``preprocess``, ``resolution``
      (``'HxW'``), ``loss``, ``seed`` and ``prauc`` (one run per configuration and seed).
    compositions: the compositions to show, in order (rows without runs are left out).
    preprocessing: the preprocessing layers to show, in order.
    base_resolutions: (aspect-preserving, squished) sizes of Table 3; Tables 4 and 5 rank over
      both, Tables 6-8 use the first.
    loss: the loss of Tables 6-8 (the paper: BCE).
    top_resolution: Table 8's resolution; None: the one with the most pixels among the runs
      with ``top_preprocess`` and ``loss``, if it has more than the aspect-preserving size.
    top_preprocess: Table 8's preprocessing layer (the paper: ``inc_d``).

  Returns:
    Tables 3, 4, 5, 6, 7 and 8, in that order.
  """
  runs = list(runs)
  grid = _Grid(runs)
  losses = [loss] + sorted({r['loss'] for r in runs} - {loss})
  aspect, square = base_resolutions
  if top_resolution is None:
    tops = {r['resolution'] for r in runs if r['preprocess'] == top_preprocess
            and r['loss'] == loss and pixels(r['resolution']) > pixels(aspect)}
    top_resolution = max(tops, key=pixels) if tops else None
  return [
      _table3(grid, compositions, preprocessing, aspect, square, losses),
      _ranking(4, 'channel compositions', 'composition', grid, compositions, preprocessing,
               (aspect, square), losses),
      _ranking(5, 'preprocessing layers', 'preprocess', grid, preprocessing, compositions,
               (aspect, square), losses),
      _table6(grid, compositions, preprocessing, aspect, loss),
      _table7(grid, compositions, preprocessing, aspect, square, loss),
      _table8(grid, compositions, aspect, loss, top_resolution, top_preprocess),
  ]


def _table3(grid: _Grid, compositions, preprocessing, aspect, square, losses) -> Table:
  header = ['composition', 'preprocess']
  for loss in losses:
    header += [f'{loss} {aspect}', f'{loss} {square}', f'{loss} Δ']
  rows, deltas, columns = [], defaultdict(list), defaultdict(list)
  for c, p in itertools.product(compositions, preprocessing):
    keys = [(res, loss, c, p) for loss in losses for res in (aspect, square)]
    if not any(grid.has(k) for k in keys):
      continue
    row = [c, p]
    for loss in losses:
      a, s = grid.mean((aspect, loss, c, p)), grid.mean((square, loss, c, p))
      for res, value in ((aspect, a), (square, s)):
        if not math.isnan(value):
          columns[(res, loss)].append(value)
      if not math.isnan(a - s):
        deltas[loss].append(a - s)
      row += [_cell(grid.values((aspect, loss, c, p))), _cell(grid.values((square, loss, c, p))),
              _num(a - s, signed=True)]
    rows.append(row)
  mean_row, wins_row = ['**mean**', ''], ['**wins**', '']
  for loss in losses:
    mean_row += [_num(_mean(columns[(aspect, loss)])), _num(_mean(columns[(square, loss)])),
                 _num(_mean(deltas[loss]), signed=True)]
    wins_row += ['', '', f'{sum(d > 0 for d in deltas[loss])}/{len(deltas[loss])}'
                 if deltas[loss] else MISSING]
  every = [d for loss in losses for d in deltas[loss]]
  notes = []
  if every:
    notes.append(f'{aspect} − {square} over all {len(every)} configurations with both '
                 f'({", ".join(losses)}): mean {_mean(every):+.4f}, from {min(every):+.4f} to '
                 f'{max(every):+.4f}; {aspect} higher in {sum(d > 0 for d in every)} of '
                 f'{len(every)}.')
  notes.append(_spread_note(grid.by, [k for k in grid.by if k[0] in (aspect, square)]))
  return Table(3, f'macro PRAUC, {aspect} (aspect ratio kept) vs {square} (squished), every '
               'configuration', header, rows, [mean_row, wins_row] if rows else [], notes)


def _ranking(number: int, plural: str, axis: str, grid: _Grid, values: Sequence[str],
             others: Sequence[str], resolutions: Sequence[str], losses: Sequence[str]) -> Table:
  """Table 4 (axis 'composition') or 5 (axis 'preprocess'): the axis' values ranked."""

  def key(res: str, loss: str, value: str, other: str) -> Key:
    return (res, loss, value, other) if axis == 'composition' else (res, loss, other, value)

  settings = [(res, loss) for res in resolutions for loss in losses]
  rank_sums, rank_counts = defaultdict(float), defaultdict(int)
  blocks = 0
  for (res, loss), other in itertools.product(settings, others):
    block = {v: grid.mean(key(res, loss, v, other)) for v in values
             if grid.has(key(res, loss, v, other))}
    if len(block) < 2:  # nothing to rank against
      continue
    blocks += 1
    for v, r in ranks(block).items():
      rank_sums[v] += r
      rank_counts[v] += 1
  table_rows = []
  for v in values:
    per_setting = [_mean(grid.mean(key(res, loss, v, o)) for o in others
                         if grid.has(key(res, loss, v, o))) for res, loss in settings]
    overall = _mean(grid.mean(key(res, loss, v, o)) for (res, loss), o in
                    itertools.product(settings, others) if grid.has(key(res, loss, v, o)))
    if math.isnan(overall):
      continue
    mean_rank = rank_sums[v] / rank_counts[v] if rank_counts[v] else math.nan
    table_rows.append((v, per_setting, overall, mean_rank))
  best = max((r[2] for r in table_rows), default=math.nan)
  table_rows.sort(key=lambda r: (math.isnan(r[3]), r[3], -r[2]))
  rows = [[v] + [_num(x) for x in per_setting] + [_num(overall), _rank_mean(mean_rank),
                                                  _num(overall - best, signed=True)]
          for v, per_setting, overall, mean_rank in table_rows]
  footer = [['**max difference**'] + [
      _max_difference(r[1][i] for r in table_rows) for i in range(len(settings))]
            + [_max_difference(r[2] for r in table_rows), '', '']] if rows else []
  other_name = 'preprocessing' if axis == 'composition' else 'composition'
  notes = [(f'Ranks: 1 = the highest PRAUC among the {plural} in each of the {blocks} '
           f'configurations of resolution x loss x {other_name} with two or more of them (ties '
           'share their mean rank), averaged. Means weigh every configuration equally; Δ best: '
           'difference to the best mean; max difference: best − worst of the column.'),
           _spread_note(grid.by, [k for k in grid.by if k[0] in resolutions])]
  return Table(number, f'{plural} ranked ({" and ".join(resolutions)}, every loss and '
               f'{other_name})', [axis] + [f'{res} {loss}' for res, loss in settings]
               + ['mean', 'mean rank', 'Δ best'], rows, footer, notes)


def _rank_mean(value: float) -> str:
  return MISSING if math.isnan(value) else f'{value:.2f}'


def _table6(grid: _Grid, compositions, preprocessing, aspect, loss) -> Table:
  columns = [p for p in preprocessing if any(grid.has((aspect, loss, c, p)) for c in compositions)]
  present = [c for c in compositions if any(grid.has((aspect, loss, c, p)) for p in columns)]
  means = {(c, p): grid.mean((aspect, loss, c, p)) for c in present for p in columns}
  finite = [v for v in means.values() if not math.isnan(v)]
  best = max(finite, default=math.nan)
  rows = []
  for c in present:
    cells = []
    for p in columns:
      cell = _cell(grid.values((aspect, loss, c, p)))
      cells.append(f'**{cell}**' if means[(c, p)] == best else cell)
    row_values = [means[(c, p)] for p in columns]
    rows.append([c] + cells + [_num(_mean(v for v in row_values if not math.isnan(v))),
                               _max_difference(row_values)])
  footer = []
  if rows:
    column_means = [_mean(means[(c, p)] for c in present if not math.isnan(means[(c, p)]))
                    for p in columns]
    row_means = [_mean(means[(c, p)] for p in columns if not math.isnan(means[(c, p)]))
                 for c in present]
    footer = [['**mean**'] + [_num(m) for m in column_means] + [_num(_mean(finite)),
                                                              _max_difference(column_means)],
              ['**max difference**'] + [_max_difference(means[(c, p)] for c in present)
                                        for p in columns] + [_max_difference(row_means), '']]
  notes = [('Cells: mean ± sd over seeds; the best in bold. The mean column and row weigh every '
           'configuration equally; max difference: best − worst of the row or column.'),
           _spread_note(grid.by, [(aspect, loss, c, p) for c in present for p in columns])]
  return Table(6, f'macro PRAUC at {aspect} with {loss}, composition x preprocessing',
               ['composition'] + columns + ['mean', 'max difference'], rows, footer, notes)


def _table7(grid: _Grid, compositions, preprocessing, aspect, square, loss) -> Table:
  higher = sorted({k[0] for k in grid.by if k[1] == loss and k[0] != square
                   and pixels(k[0]) > pixels(aspect)}, key=pixels)
  configs = [(c, p) for c, p in itertools.product(compositions, preprocessing)
             if any(grid.has((res, loss, c, p)) for res in higher)]
  resolutions = [aspect] + higher
  column_ranks = {res: ranks({cp: grid.mean((res, loss, *cp)) for cp in configs
                              if grid.has((res, loss, *cp))}) for res in resolutions}
  header = ['composition', 'preprocess', aspect, 'rank']
  for res in higher:
    header += [res, 'rank', f'Δ {res} − {aspect}']
  rows = []
  for c, p in configs:
    row = [c, p, _cell(grid.values((aspect, loss, c, p))),
           _rank(column_ranks[aspect].get((c, p), math.nan))]
    for res in higher:
      gain = grid.mean((res, loss, c, p)) - grid.mean((aspect, loss, c, p))
      row += [_cell(grid.values((res, loss, c, p))), _rank(column_ranks[res].get((c, p),
                                                                                  math.nan)),
              _num(gain, signed=True)]
    rows.append(row)
  footer = []
  if rows:
    mean_row, diff_row = ['**mean**', ''], ['**max difference**', '']
    for res in resolutions:
      values = [grid.mean((res, loss, c, p)) for c, p in configs if grid.has((res, loss, c, p))]
      mean_row += [_num(_mean(values)), '']
      diff_row += [_max_difference(values), '']
      if res != aspect:
        gains = [grid.mean((res, loss, c, p)) - grid.mean((aspect, loss, c, p))
                 for c, p in configs]
        mean_row.append(_num(_mean(g for g in gains if not math.isnan(g)), signed=True))
        diff_row.append('')
    footer = [mean_row, diff_row]
  notes = [(f'Ranks among the rows at each resolution (1 = highest). Δ: the gain of the same '
           f'configuration over {aspect}.'),
           _spread_note(grid.by, [(res, loss, c, p) for res in resolutions for c, p in configs])]
  return Table(7, f'higher resolutions with {loss}, per configuration', header, rows, footer,
               notes, missing=f'run the grid above {aspect}, e.g. --resolutions=464x192 '
               f'--losses={loss}')


def _table8(grid: _Grid, compositions, aspect, loss, top, preprocess) -> Table:
  missing = (f'run the grid above {aspect} with {preprocess}, e.g. --resolutions=928x384 '
             f'--preprocessing={preprocess} --losses={loss}')
  if top is None:
    return Table(8, f'the highest resolution, {preprocess}, {loss}: one row per composition',
                 [], [], missing=missing)
  present = [c for c in compositions if grid.has((top, loss, c, preprocess))]
  means = {c: grid.mean((top, loss, c, preprocess)) for c in present}
  order = ranks(means)
  best = max(means.values(), default=math.nan)
  header = ['composition', top, 'rank', 'Δ best', aspect, f'gain over {aspect}']
  rows, gains = [], []
  for c in present:
    gain = means[c] - grid.mean((aspect, loss, c, preprocess))
    if not math.isnan(gain):
      gains.append(gain)
    rows.append([c, _cell(grid.values((top, loss, c, preprocess))), _rank(order[c]),
                 _num(means[c] - best, signed=True),
                 _cell(grid.values((aspect, loss, c, preprocess))), _num(gain, signed=True)])
  footer = []
  if rows:
    lower = [grid.mean((aspect, loss, c, preprocess)) for c in present
             if grid.has((aspect, loss, c, preprocess))]
    footer = [['**mean**', _num(_mean(means.values())), '', '', _num(_mean(lower)),
               _num(_mean(gains), signed=True)],
              ['**max difference**', _max_difference(means.values()), '', '',
               _max_difference(lower), '']]
  notes = [_spread_note(grid.by, [(top, loss, c, preprocess) for c in present])]
  return Table(8, f'{top}, {preprocess}, {loss}: one row per composition', header, rows, footer,
               notes, missing=missing)
