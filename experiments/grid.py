r"""The paper's grid of descriptor runs (compositions x preprocessing x resolutions x losses x seeds).

  python -m experiments.grid --flagfile=experiments/flags/grid_small.flags
  python -m experiments.grid ... --tables_only      # print the tables from the store

The paper's Tables 3-8 (Budka et al. 2021), one store for the three grids it reports:

  P="--flagfile=experiments/flags/paper_352x144.flags --manifest=nfrc/manifest.csv \
     --weights=resnet50.pth --out_dir=runs/grid"
  python -m experiments.grid $P --resolutions=352x144,224x224 --losses=bce,soft_f1  # Tables 3-6
  python -m experiments.grid $P --resolutions=464x192 --losses=bce                  # Table 7
  python -m experiments.grid $P --resolutions=928x384 --losses=bce --preprocessing=inc_d  # 8
  python -m experiments.grid $P --resolutions=352x144,224x224 --tables_only

Every descriptor flag sets the base configuration; --out_dir is the grid's folder (one run folder
per configuration, a shared image cache, results.sqlite unless --results_db). Configurations
complete in the store are skipped, so the grid can be stopped and restarted at any time. The
first two --resolutions are Table 3's pair (aspect kept, squished); Tables 7 and 8 read every
higher resolution in the store; add --seeds=0,1,2 for the run-to-run spread under each table.
The logic is in fwjax.descriptor.grid and fwjax.descriptor.tables (what each table holds).
"""

from absl import app
from absl import flags

from experiments import descriptor
from fwjax.descriptor import grid
from fwjax import resample

_COMPOSITIONS = flags.DEFINE_list('compositions', list(resample.COMPOSITIONS),
                                  'Channel compositions to run.')
_PREPROCESSING = flags.DEFINE_list('preprocessing', ['no_tfm', 'cbn_1', 'cbn_3', 'inc', 'inc_d'],
                                   'Preprocessing layers to run.')
_RESOLUTIONS = flags.DEFINE_list('resolutions', ['352x144', '224x224'],
                                 'HEIGHTxWIDTH input sizes (Table 3 compares the first two).')
_LOSSES = flags.DEFINE_list('losses', ['bce', 'soft_f1'], 'Losses to run.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds to run.')
_MAX_RUNS = flags.DEFINE_integer('max_runs', None, 'Stop after starting this many runs.')
_TABLES_ONLY = flags.DEFINE_bool('tables_only', False, 'Only print the tables from the store.')


def _resolution(text: str) -> tuple[int, int]:
  try:
    height, width = (int(v) for v in text.lower().split('x'))
  except ValueError as error:
    raise app.UsageError(f'--resolutions: {text!r} is not HEIGHTxWIDTH') from error
  return height, width


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  base = descriptor.config_from_flags()
  grid_dir = base.out_dir
  results_db = base.results_db or f'{grid_dir}/results.sqlite'
  if base.cache_dir is None:  # one cache for every run of the grid
    base.cache_dir = f'{grid_dir}/cache'
  resolutions = [_resolution(r) for r in _RESOLUTIONS.value]
  if not _TABLES_ONLY.value:
    configs = grid.grid_configs(base, grid_dir, compositions=_COMPOSITIONS.value,
                                preprocessing=_PREPROCESSING.value, resolutions=resolutions,
                                losses=_LOSSES.value, seeds=[int(s) for s in _SEEDS.value])
    grid.run_grid(configs, results_db, max_runs=_MAX_RUNS.value)
  names = [f'{h}x{w}' for h, w in resolutions]
  print(grid.tables(results_db, base, compositions=_COMPOSITIONS.value,
                    preprocessing=_PREPROCESSING.value,
                    base_resolutions=(names[0], names[1] if len(names) > 1 else names[0])))


if __name__ == '__main__':
  app.run(main)
