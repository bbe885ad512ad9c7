"""The comparison's tables (de Bie 2020), from rows read back by ``compare.read_comparison``.

Scores are means over queries (of the lowest repeat: scores do not depend on the repeat);
timings are the mean and sample standard deviation over repeats ('—' with one repeat).
Lower AUIRC is better (0: every relevant item first).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from fwjax.similarity import compare

ALL_UNTRAINED = '(all untrained)'
OTHER_CLASSES = '(other classes)'


@dataclasses.dataclass
class Table:
  """A table with raw cells (numbers stay numbers in the CSV).

  Attributes:
    name: the file stem (``<name>.csv``, ``<name>.md``).
    title: what the table shows (the Markdown heading).
    header: column names.
    rows: one list of cells per row.
    notes: sentences printed under the Markdown table.
  """
  name: str
  title: str
  header: list[str]
  rows: list[list[Any]]
  notes: list[str] = dataclasses.field(default_factory=list)

  def markdown(self) -> str:
    lines = [f'### {self.title}', '']
    if not self.rows:
      return '\n'.join(lines + ['(no rows: no complete runs in the store)']) + '\n'
    lines += ['| ' + ' | '.join(self.header) + ' |',
              '|' + '|'.join(' --- ' for _ in self.header) + '|']
    lines += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in self.rows]
    return '\n'.join(lines + ([''] + self.notes if self.notes else [])) + '\n'

  def write(self, folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Writes ``<name>.csv`` and ``<name>.md`` into ``folder``; returns their paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f'{self.name}.csv', folder / f'{self.name}.md'
    with open(csv_path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(self.header)
      writer.writerows([_csv_cell(v) for v in row] for row in self.rows)
    md_path.write_text(self.markdown())
    return [csv_path, md_path]


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return '—' if math.isnan(value) else f'{value:.4g}'
  return str(value)


def _csv_cell(value: Any) -> Any:
  return '' if isinstance(value, float) and math.isnan(value) else value


def _mean(values: Sequence[float] | np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else math.nan


def _sd(values: np.ndarray) -> float:
  values = values[~np.isnan(values)]
  return float(values.std(ddof=1)) if values.size > 1 else math.nan


def summary_table(runs: Sequence[compare.StoredRun], precision_k: int) -> Table:
  """Per CNN x metric x R: mean AUIRC, precision@k, and the three timings over repeats."""
  precision = f'precision@{precision_k}'
  header = ['CNN', 'metric', 'R', 'queries', 'AUIRC', precision, 'repeats', 'build s',
            'build sd', 'extraction s/10k', 'extraction sd', 'distance s', 'distance sd']
  rows = []
  chosen = compare.score_runs(runs)
  for label in compare.labels_in_order(runs):
    build = compare.timing_values(runs, label, 'model_build')
    extraction = compare.timing_values(runs, label, 'feature_extraction')
    for metric in compare.metrics_in_order(runs):
      for r in compare.references_in_order(runs):
        run = chosen.get((label, metric, r))
        if run is None:
          continue
        distance = compare.timing_values(runs, label, 'distance', metric, r)
        auirc = compare.per_query(run, 'auirc')
        rows.append([label, metric, r, len(auirc), _mean(auirc),
                     _mean(compare.per_query(run, precision)), len(distance),
                     _mean(build), _sd(build), _mean(extraction), _sd(extraction),
                     _mean(distance), _sd(distance)])
  note = ('AUIRC and precision: means over queries (lower AUIRC is better). Timings: mean and '
          'standard deviation over repeats; build = weights + compile, extraction per 10,000 '
          'images, distance = ranking every query of that R.')
  return Table('summary', 'Summary per CNN, metric and reference count R', header, rows, [note])


def _class_values(runs: Sequence[compare.StoredRun], score: str) -> dict[str, list[float]]:
  """Class -> the score of every query of that class over ``runs``."""
  values: dict[str, list[float]] = {}
  for run in runs:
    for query, scores in run.scores.items():
      if query in run.classes and score in scores:
        values.setdefault(run.classes[query], []).append(scores[score])
  return values


def best_classes_table(runs: Sequence[compare.StoredRun], top: int = 5) -> Table:
  """Per CNN, the ``top`` classes with the lowest mean AUIRC over every metric and R."""
  chosen = compare.score_runs(runs)
  rows = []
  for label in compare.labels_in_order(runs):
    mine = [run for (name, _, _), run in chosen.items() if name == label]
    means = {c: _mean(v) for c, v in _class_values(mine, 'auirc').items()}
    counts = {c: len(v) for c, v in _class_values(mine, 'auirc').items()}
    ranked = sorted(means, key=lambda c: (means[c], c))[:top]
    rows += [[label, i + 1, c, means[c], counts[c]] for i, c in enumerate(ranked)]
  return Table('best_classes', f'Best classes per CNN (lowest mean AUIRC, top {top})',
               ['CNN', 'rank', 'class', 'mean AUIRC', 'queries'], rows,
               ['Means over the queries of the class with every metric and reference count.'])


def untrained_table(runs: Sequence[compare.StoredRun], untrained: Sequence[str],
                    precision_k: int) -> Table:
  """Per CNN x metric (over every R): each untrained class's mean AUIRC and precision@k.

  Two summary rows per CNN x metric compare all untrained classes with all other classes.
  """
  precision = f'precision@{precision_k}'
  chosen = compare.score_runs(runs)
  untrained = list(untrained)
  rows = []
  for label in compare.labels_in_order(runs):
    for metric in compare.metrics_in_order(runs):
      mine = [run for (name, m, _), run in chosen.items() if (name, m) == (label, metric)]
      auirc, prec = _class_values(mine, 'auirc'), _class_values(mine, precision)
      for c in untrained:
        rows.append([label, metric, c, _mean(auirc.get(c, [])), _mean(prec.get(c, [])),
                     len(auirc.get(c, []))])
      groups = {ALL_UNTRAINED: [c for c in auirc if c in untrained],
                OTHER_CLASSES: [c for c in auirc if c not in untrained]}
      for group, members in groups.items():
        a = [v for c in members for v in auirc[c]]
        p = [v for c in members for v in prec.get(c, [])]
        rows.append([label, metric, group, _mean(a), _mean(p), len(a)])
  return Table('untrained_classes', 'Classes not among ImageNet\'s 1,000 (untrained)',
               ['CNN', 'metric', 'class', 'mean AUIRC', f'mean {precision}', 'queries'], rows,
               [(f'{len(untrained)} untrained classes; means over their queries with every '
                 'reference count.')])
