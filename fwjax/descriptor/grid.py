"""The paper's grid of descriptor runs and its tables, read back from the results store.

``grid_configs`` spans compositions x preprocessing x resolutions x losses x seeds around a base
:class:`~fwjax.descriptor.job.DescriptorConfig`; ``run_grid`` runs them one by one, skipping each
configuration already complete in the store (so a stopped grid restarts where it stopped: an
interrupted run resumes from its checkpoint); ``tables`` prints the paper's Tables 3-8 from the
store in the paper's layout (``fwjax.descriptor.tables`` says what each holds and how it
aggregates). A cell is the mean over seeds (with the standard deviation when there are several);
a missing run shows as '—'.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from fwjax import store as store_lib
from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import job as descriptor_job
from fwjax.descriptor import tables as tables_lib

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


def paper_tables(results_db: str, base: descriptor_config.DescriptorConfig, *,
                 compositions: Sequence[str], preprocessing: Sequence[str],
                 base_resolutions: tuple[str, str] = ('352x144', '224x224'), loss: str = 'bce',
                 top_resolution: str | None = None, top_preprocess: str = 'inc_d'
                 ) -> list[tables_lib.Table]:
  """The paper's Tables 3-8 from the complete runs in the store that match ``base``.

  Args:
    results_db: the grid's results store.
    base: the grid's base configuration (runs differing elsewhere than the grid's axes are left
      out).
    compositions, preprocessing, base_resolutions, loss, top_resolution, top_preprocess: as in
      :func:`fwjax.descriptor.tables.build`, which documents each table.

  Returns:
    The tables, 3 to 8.
  """
  runs = _matching_runs(store_lib.ResultsStore(results_db), base)
  return tables_lib.build(runs, compositions=compositions, preprocessing=preprocessing,
                          base_resolutions=base_resolutions, loss=loss,
                          top_resolution=top_resolution, top_preprocess=top_preprocess)


def tables(results_db: str, base: descriptor_config.DescriptorConfig, *,
           compositions: Sequence[str], preprocessing: Sequence[str],
           base_resolutions: tuple[str, str] = ('352x144', '224x224'), **kwargs: Any) -> str:
  """The paper's Tables 3-8 as markdown (:func:`paper_tables`, with the number of runs read)."""
  runs = _matching_runs(store_lib.ResultsStore(results_db), base)
  built = tables_lib.build(runs, compositions=compositions, preprocessing=preprocessing,
                           base_resolutions=base_resolutions, **kwargs)
  return '\n'.join([f'{len(runs)} complete runs in {results_db}\n']
                   + [table.markdown() for table in built])
