"""The grid: product of configurations, skip-complete restart, tables computed from the store."""

import dataclasses

import pytest

from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import grid
from fwjax import store as store_lib

BASE = descriptor_config.DescriptorConfig(out_dir='unused', synthetic=64, epochs_phase1=1,
                                       epochs_phase2=1, width_multiplier=0.125)


def _fake_prauc(config):
  # A made-up but distinct score per configuration, so the tables can be checked by hand.
  return (0.5 + 0.01 * ['B-B-B', 'B-H-N'].index(config.composition)
          + 0.001 * ['no_tfm', 'inc_d'].index(config.preprocess)
          + (0.02 if config.height == 352 else 0.0) + 0.0001 * config.seed
          - (0.05 if config.loss == 'soft_f1' else 0.0))


def _fake_run(config):
  store = store_lib.ResultsStore(config.results_db)
  run_id = store.start_run('descriptor', config.name,
                           dataclasses.asdict(config),
                           descriptor_config.config_key(config), config.out_dir)
  store.finish_run(run_id, {'macro_prauc': _fake_prauc(config)})


def _configs(tmp_path):
  return grid.grid_configs(BASE, str(tmp_path / 'grid'), compositions=['B-B-B', 'B-H-N'],
                           preprocessing=['no_tfm', 'inc_d'],
                           resolutions=[(352, 144), (224, 224)], losses=['bce', 'soft_f1'],
                           seeds=[0, 1])


def test_grid_product_and_restart(tmp_path):
  configs = _configs(tmp_path)
  assert len(configs) == 2 * 2 * 2 * 2 * 2
  assert len({descriptor_config.config_key(c) for c in configs}) == len(configs)
  assert len({c.out_dir for c in configs}) == len(configs)
  db = str(tmp_path / 'results.sqlite')
  ran = []
  first = grid.run_grid(configs, db, max_runs=5, run=lambda c: (ran.append(c.name), _fake_run(c)),
                        log=lambda _: None)
  assert len(first['done']) == 5 and len(first['left']) == 27 and not first['skipped']
  # Restarted: the five complete ones are skipped, the rest run; a failure is recorded, not fatal.
  def flaky(config):
    if config.name == configs[7].name:
      raise RuntimeError('out of memory')
    _fake_run(config)
  second = grid.run_grid(configs, db, run=flaky, log=lambda _: None)
  assert sorted(second['skipped']) == sorted(first['done'])
  assert second['failed'] == [configs[7].name] and len(second['done']) == 26
  third = grid.run_grid(configs, db, run=_fake_run, log=lambda _: None)
  assert third['done'] == [configs[7].name] and len(third['skipped']) == 31
  with pytest.raises(RuntimeError):
    grid.run_grid(_configs(tmp_path / 'other'), str(tmp_path / 'other.sqlite'),
                  run=lambda c: 1 / 0 if False else (_ for _ in ()).throw(RuntimeError('x')),
                  keep_going=False, log=lambda _: None)


def test_tables_from_the_store(tmp_path):
  configs = _configs(tmp_path)
  db = str(tmp_path / 'results.sqlite')
  grid.run_grid(configs, db, run=_fake_run, log=lambda _: None)
  # A run with another base configuration (other epochs) in the same store is left out.
  _fake_run(dataclasses.replace(configs[0], epochs_phase2=9, results_db=db,
                                name='other', out_dir=str(tmp_path / 'other')))
  text = grid.tables(db, BASE, compositions=['B-B-B', 'B-H-N'], preprocessing=['no_tfm', 'inc_d'])
  assert '32 complete runs' in text
  lines = {line.split('|')[1].strip() + '/' + line.split('|')[2].strip(): line
           for line in text.splitlines() if line.startswith('| B-')}
  # B-H-N / inc_d, bce: 352x144 = 0.5 + 0.01 + 0.001 + 0.02 (+ seed 0 / 0.0001) -> mean 0.53105
  row = [c.strip() for c in lines['B-H-N/inc_d'].split('|')[1:-1]]
  value = lambda cell: float(cell.split(' ± ')[0])
  assert value(row[2]) == pytest.approx(0.53105, abs=6e-5) and row[2].endswith(' ± 0.0001')
  assert value(row[3]) == pytest.approx(0.51105, abs=6e-5)
  assert row[4] == '+0.0200' and row[7] == '+0.0200'
  assert value(row[5]) == pytest.approx(0.48105, abs=6e-5)  # soft_f1 at 352x144
  assert '### Table 4' in text and '### Table 5' in text and '### Table 6' in text
  assert '### Table 7' in text and '### Table 8' in text
  table8 = text.split('### Table 8')[1]
  # bce at 224x224: compositions add 0 / 0.01, preprocessing 0 / 0.001, seeds 0 / 0.0001.
  assert '| 224x224 | 0.5056 ± ' in table8 and '| 352x144 | 0.5256 ± ' in table8


@pytest.mark.slow
def test_small_grid_on_synthetic_data(tmp_path):
  """experiments.grid end to end: runs, restarts without re-running, prints the tables."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  repo = __import__('pathlib').Path(__file__).resolve().parents[2]
  command = [sys.executable, '-m', 'experiments.grid',
             '--flagfile=experiments/flags/grid_small.flags', f'--out_dir={tmp_path}',
             '--compositions=B-B-B,B-H-N', '--preprocessing=cbn_1', '--stage_sizes=1,1,1,1',
             '--noprogress']
  first = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=1200)
  assert first.returncode == 0, first.stderr[-3000:]
  assert '4 run, 0 already complete, 0 failed' in first.stdout
  assert '### Table 3' in first.stdout and '| B-H-N | cbn_1 |' in first.stdout
  again = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
  assert '0 run, 4 already complete' in again.stdout
  runs = store_lib.ResultsStore(tmp_path / 'results.sqlite').runs(status='complete')
  assert len(runs) == 4 and all(0 <= r['summary']['macro_prauc'] <= 1 for r in runs)
