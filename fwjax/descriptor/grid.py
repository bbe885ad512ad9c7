"""The paper's grid of descriptor runs and its tables, read back from the results store.

``grid_configs`` spans compositions x preprocessing x resolutions x losses x seeds around a base
:class:`~fwjax.descriptor.job.DescriptorConfig`; ``run_grid`` runs them one by one, skipping each
configuration already complete in the store (so a stopped grid restarts where it stopped: an
interrupted run resumes from its checkpoint); ``tables`` prints the paper's tables from the store:

- Table 3: macro PRAUC per composition and preprocessing, per loss, 352x144 vs 224x224 with the
  difference;
- Tables 4, 5, 6: averages by composition, by preprocessing, and composition x preprocessing;
- Tables 7, 8: the same layout for the higher resolutions (per configuration, and the mean by
  resolution).

A cell is the mean over seeds (with the standard deviation when there are several); a missing
run shows as '—'.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fwjax import store as store_lib
from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import job as descriptor_job

GRID_AXES = ('composition', 'preprocess', 'resolution', 'loss', 'seed')


def grid_configs(base: descriptor_config.DescriptorConfig, grid_dir: str, *,
                 compositions: Sequence[str], preprocessing: Sequence[str],
                 resolutions: Sequence[tuple[int, int]], losses: Sequence[str],
                 seeds: Sequence[int]) -> list[descriptor_config.DescriptorConfig]:
  """Every configuration of the grid, each with its own run folder under ``grid_dir``."""
  configs = []
  for (h, w), loss, composition, preprocess, seed in itertools.product(
      resolutions, losses, compositions, preprocessing, seeds):
    name = f'{h}x{w}_{loss}_{composition}_{preprocess}_s{seed}'
    configs.append(dataclasses.replace(
        base, height=h, width=w, loss=loss, composition=composition, preprocess=preprocess,
        seed=seed, name=name, out_dir=str(pathlib.Path(grid_dir) / name)))
  for config in configs:
    descriptor_config.validate(config)
  return configs


def run_grid(configs: Sequence[descriptor_config.DescriptorConfig], results_db: str, *,
             max_runs: int | None = None, keep_going: bool = True,
             run: Callable[[descriptor_config.DescriptorConfig], Any] = descriptor_job.run_descriptor,
             log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Runs the configurations not yet complete in the store.

  Args:
    configs: from :func:`grid_configs`.
    results_db: the store every run writes to.
    max_runs: stop after starting this many runs (None: all).
    keep_going: a failed run is recorded and the grid goes on; False re-raises.
    run: the function running one configuration.
    log: where progress lines go.

  Returns:
    Names by outcome: 'skipped' (complete before), 'done', 'failed', 'left' (not started).
  """
  store = store_lib.ResultsStore(results_db)
  outcome: dict[str, list[str]] = {'skipped': [], 'done': [], 'failed': [], 'left': []}
  started = 0
  for i, config in enumerate(configs):
    config = dataclasses.replace(config, results_db=results_db)
    if store.completed('descriptor', descriptor_config.config_key(config)) is not None:
      outcome['skipped'].append(config.name)
      continue
    if max_runs is not None and started >= max_runs:
      outcome['left'].append(config.name)
      continue
    started += 1
    log(f'[{i + 1}/{len(configs)}] {config.name}')
    try:
      run(config)
      outcome['done'].append(config.name)
    except Exception as error:  # recorded in the store by the run itself
      outcome['failed'].append(config.name)
      log(f'FAILED {config.name}: {type(error).__name__}: {error}')
      if not keep_going:
        raise
  log(f'grid: {len(outcome["done"])} run, {len(outcome["skipped"])} already complete, '
      f'{len(outcome["failed"])} failed, {len(outcome["left"])} left')
  return outcome


def _matching_runs(store: store_lib.ResultsStore,
                   base: descriptor_config.DescriptorConfig) -> list[dict[str, Any]]:
  """Complete descriptor runs that differ from ``base`` only along the grid's axes."""
  fixed = {k: v for k, v in dataclasses.asdict(base).items()
           if k not in descriptor_config.UNKEYED + ('height', 'width', 'composition', 'preprocess',
                                                   'loss', 'seed')}
  fixed = _jsonable(fixed)
  rows = []
  for run in store.runs(kind='descriptor', status='complete'):
    flags = run['flags']
    if all(flags.get(k) == v for k, v in fixed.items()):
      rows.append({'composition': flags['composition'], 'preprocess': flags['preprocess'],
                   'resolution': f'{flags["height"]}x{flags["width"]}', 'loss': flags['loss'],
                   'seed': flags['seed'], 'prauc': (run['summary'] or {}).get('macro_prauc')})
  # The latest run of a configuration wins (a re-run replaces an older result).
  latest = {}
  for row in rows:
    latest[tuple(row[a] for a in GRID_AXES)] = row
  return [r for r in latest.values() if r['prauc'] is not None]


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  return value


def _cell(values: list[float]) -> str:
  if not values:
    return '—'
  if len(values) == 1:
    return f'{values[0]:.4f}'
  return f'{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}'


def _mean(values: list[float]) -> float:
  return float(np.mean(values)) if values else math.nan


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(' --- ' for _ in header) + '|']
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def tables(results_db: str, base: descriptor_config.DescriptorConfig, *,
           compositions: Sequence[str], preprocessing: Sequence[str],
           base_resolutions: tuple[str, str] = ('352x144', '224x224')) -> str:
  """The paper's Tables 3-8 (markdown) from the complete runs in the store matching ``base``."""
  runs = _matching_runs(store_lib.ResultsStore(results_db), base)
  by = defaultdict(list)
  for r in runs:
    by[(r['resolution'], r['loss'], r['composition'], r['preprocess'])].append(r['prauc'])
  losses = sorted({r['loss'] for r in runs}) or ['bce']
  resolutions = sorted({r['resolution'] for r in runs},
                       key=lambda s: tuple(int(v) for v in s.split('x')))
  aspect, square = base_resolutions
  out = [f'{len(runs)} complete runs in {results_db}\n']

  # Table 3: per composition x preprocessing, per loss: aspect vs square and the delta.
  header = ['composition', 'preprocess']
  for loss in losses:
    header += [f'{loss} {aspect}', f'{loss} {square}', f'{loss} Δ']
  rows, deltas = [], defaultdict(list)
  for c, p in itertools.product(compositions, preprocessing):
    row = [c, p]
    for loss in losses:
      a, s = by[(aspect, loss, c, p)], by[(square, loss, c, p)]
      delta = _mean(a) - _mean(s)
      if not math.isnan(delta):
        deltas[loss].append(delta)
      row += [_cell(a), _cell(s), '—' if math.isnan(delta) else f'{delta:+.4f}']
    rows.append(row)
  mean_row = ['**mean**', '']
  for loss in losses:
    mean_row += [f'{_mean([v for (r, l, _, _), vs in by.items() if r == aspect and l == loss for v in vs]):.4f}',
                 f'{_mean([v for (r, l, _, _), vs in by.items() if r == square and l == loss for v in vs]):.4f}',
                 f'{_mean(deltas[loss]):+.4f}' if deltas[loss] else '—']
  rows.append(mean_row)
  out.append(_table(f'Table 3: macro PRAUC, {aspect} vs {square} per loss', header, rows))

  columns = [(res, loss) for res in (aspect, square) for loss in losses]
  for number, axis, values in ((4, 2, compositions), (5, 3, preprocessing)):
    rows = []
    for v in values:
      rows.append([v] + [_cell([x for k, xs in by.items() if k[0] == res and k[1] == loss
                                and k[axis] == v for x in xs]) for res, loss in columns])
    name = 'composition' if axis == 2 else 'preprocess'
    out.append(_table(f'Table {number}: mean macro PRAUC by {name}',
                      [name] + [f'{res} {loss}' for res, loss in columns], rows))

  rows = []
  for c in compositions:
    rows.append([c] + [f'{_mean([x for k, xs in by.items() if k[2] == c and k[3] == p for x in xs]):.4f}'
                       if any(k[2] == c and k[3] == p for k in by) else '—'
                       for p in preprocessing])
  out.append(_table('Table 6: mean macro PRAUC, composition x preprocessing (all resolutions '
                    'and losses)', ['composition'] + list(preprocessing), rows))

  higher = [r for r in resolutions if r not in (aspect, square)]
  rows = []
  for c, p in itertools.product(compositions, preprocessing):
    cells = [_cell(by[(res, loss, c, p)]) for res in [aspect] + higher for loss in losses]
    if any(cell != '—' for cell in cells[len(losses):]):
      rows.append([c, p] + cells)
  out.append(_table('Table 7: macro PRAUC at higher resolutions',
                    ['composition', 'preprocess'] + [f'{res} {loss}' for res in [aspect] + higher
                                                     for loss in losses], rows))
  rows = [[res] + [_cell([x for k, xs in by.items() if k[0] == res and k[1] == loss for x in xs])
                   for loss in losses] for res in resolutions]
  out.append(_table('Table 8: mean macro PRAUC by resolution', ['resolution'] + losses, rows))
  return '\n'.join(out)
