"""The grid: product of configurations, skip-complete restart, tables computed from the store."""

import dataclasses

import pytest

from fwjax import store as store_lib
from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import grid
from fwjax.descriptor import tables as tables_lib

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


# The paper's tables from a small synthetic grid: made-up scores with known effects, so each
# cell can be computed by hand. 3 compositions x 2 preprocessing layers at 352x144 and 224x224
# with both losses and seeds 0, 1 (48 runs); 464x192 with bce, seed 0 (6); 928x384 with bce and
# inc_d, seeds 0, 1 (6).
COMPOSITIONS, PREPROCESSING = ['B-B-B', 'B-H-N', 'N-N-N'], ['no_tfm', 'inc_d']


def _paper_prauc(config):
  resolution = f'{config.height}x{config.width}'
  value = (0.5 + {'B-B-B': 0.0, 'B-H-N': 0.01, 'N-N-N': 0.004}[config.composition]
           + {'no_tfm': 0.0, 'inc_d': 0.002}[config.preprocess]
           + {'352x144': 0.02, '224x224': 0.0, '464x192': 0.03, '928x384': 0.05}[resolution]
           - (0.05 if config.loss == 'soft_f1' else 0.0))
  if config.composition == 'N-N-N' and resolution == '224x224' and config.loss == 'bce':
    value += 0.012  # N-N-N beats B-H-N here only, so the ranks differ between blocks
  seed_step = {'bce': 0.0002, 'soft_f1': 0.0006}[config.loss]
  return value + config.seed * (0.001 if resolution == '928x384' else seed_step)


@pytest.fixture(scope='module')
def paper_tables(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('paper_grid')
  db = str(tmp_path / 'results.sqlite')

  def fake_run(config):
    store = store_lib.ResultsStore(config.results_db)
    run_id = store.start_run('descriptor', config.name, dataclasses.asdict(config),
                             descriptor_config.config_key(config), config.out_dir)
    store.finish_run(run_id, {'macro_prauc': _paper_prauc(config)})

  axes = {'compositions': COMPOSITIONS, 'preprocessing': PREPROCESSING}
  grids = [dict(axes, resolutions=[(352, 144), (224, 224)], losses=['bce', 'soft_f1'],
                seeds=[0, 1]),
           dict(axes, resolutions=[(464, 192)], losses=['bce'], seeds=[0]),
           dict(axes, preprocessing=['inc_d'], resolutions=[(928, 384)], losses=['bce'],
                seeds=[0, 1])]
  for spec in grids:
    grid.run_grid(grid.grid_configs(BASE, str(tmp_path / 'grid'), **spec), db, run=fake_run,
                  log=lambda _: None)
  # A run with another base configuration (other epochs) in the same store is left out.
  other = grid.grid_configs(BASE, str(tmp_path / 'other'), **grids[1])[0]
  fake_run(dataclasses.replace(other, epochs_phase2=9, results_db=db, name='other'))
  text = grid.tables(db, BASE, compositions=COMPOSITIONS, preprocessing=PREPROCESSING)
  assert text.startswith('60 complete runs')
  for number in range(3, 9):
    assert f'### Table {number}: ' in text
  built = grid.paper_tables(db, BASE, compositions=COMPOSITIONS, preprocessing=PREPROCESSING)
  assert [t.number for t in built] == [3, 4, 5, 6, 7, 8]
  for table in built:
    assert all(len(row) == len(table.header) for row in table.rows + table.footer), table.number
  return {t.number: t for t in built}


def _row(table, *first):
  (row,) = [r for r in table.rows + table.footer if r[:len(first)] == list(first)]
  return dict(zip(table.header, row))


def _value(cell):
  return float(cell.strip('*').split(' ± ')[0])


def test_table3_every_configuration_at_both_sizes(paper_tables):
  table = paper_tables[3]
  assert len(table.rows) == 6 and len(table.header) == 2 + 2 * 3
  assert table.header[2:5] == ['bce 352x144', 'bce 224x224', 'bce Δ']
  row = _row(table, 'B-H-N', 'inc_d')
  # bce, 352x144: 0.5 + 0.01 + 0.002 + 0.02, seeds +0 / +0.0002: mean 0.5321, sd 0.00014.
  assert _value(row['bce 352x144']) == pytest.approx(0.5321, abs=6e-5)
  assert row['bce 352x144'].endswith(' ± 0.0001') and row['bce Δ'] == '+0.0200'
  assert _row(table, 'N-N-N', 'no_tfm')['bce Δ'] == '+0.0080'  # 0.524 - (0.504 + 0.012)
  assert _row(table, '**wins**')['bce Δ'] == '6/6'
  # bce: four deltas of 0.02 and two of 0.008 -> 0.016; soft_f1: all 0.02.
  assert _row(table, '**mean**')['bce Δ'] == '+0.0160'
  assert _row(table, '**mean**')['soft_f1 Δ'] == '+0.0200'
  # The paper's "+0.0199" figure: over all 12 configurations, (10 x 0.02 + 2 x 0.008) / 12.
  assert table.notes[0].startswith('352x144 − 224x224 over all 12 configurations with both '
                                   '(bce, soft_f1): mean +0.0180, from +0.0080 to +0.0200; '
                                   '352x144 higher in 12 of 12.')
  # Seeds differ by 0.0002 (bce) or 0.0006 (soft_f1): sd^2 = d^2 / 2, pooled over 24
  # configurations: sqrt((0.02e-6 + 0.18e-6) / 2) = 0.00032.
  assert table.notes[1] == ('Run-to-run spread over seeds: sd 0.0003 (pooled over the 24 '
                            'configurations with several seeds), largest max − min 0.0006.')


def test_table4_ranks_the_compositions(paper_tables):
  table = paper_tables[4]
  assert table.header == ['composition', '352x144 bce', '352x144 soft_f1', '224x224 bce',
                          '224x224 soft_f1', 'mean', 'mean rank', 'Δ best']
  # Ranked within 8 blocks (2 sizes x 2 losses x 2 preprocessing): B-H-N is first in 6 and
  # second in 2 (224x224 bce, where N-N-N gains 0.012): 1.25; N-N-N 1.75; B-B-B 3.
  assert [r[0] for r in table.rows] == ['B-H-N', 'N-N-N', 'B-B-B']
  assert [_row(table, c)['mean rank'] for c in ('B-H-N', 'N-N-N', 'B-B-B')] == [
      '1.25', '1.75', '3.00']
  # N-N-N at 224x224 bce over both layers: 0.5 + 0.004 + 0.012 + 0.001 + seed mean 0.0001.
  assert _value(_row(table, 'N-N-N')['224x224 bce']) == pytest.approx(0.5171, abs=6e-5)
  # Means over the 8 configurations: N-N-N's 0.012 counts in 2 -> 0.003 behind B-H-N's 0.01 ...
  assert _row(table, 'N-N-N')['Δ best'] == '-0.0030'
  assert _row(table, 'B-B-B')['Δ best'] == '-0.0100'
  assert _row(table, '**max difference**')['224x224 bce'] == '0.0160'  # 0.5171 - 0.5011
  assert _row(table, '**max difference**')['mean'] == '0.0100'
  assert 'each of the 8 configurations' in table.notes[0]


def test_table5_ranks_the_preprocessing_layers(paper_tables):
  table = paper_tables[5]
  assert [r[0] for r in table.rows] == ['inc_d', 'no_tfm'] and len(table.header) == 8
  assert _row(table, 'inc_d')['mean rank'] == '1.00' and _row(table, 'no_tfm')['mean rank'] == (
      '2.00')
  # inc_d at 352x144 bce, over the compositions: 0.5 + 0.02 + 0.002 + 0.0001 + 0.014 / 3.
  assert _value(_row(table, 'inc_d')['352x144 bce']) == pytest.approx(0.526767, abs=6e-5)
  assert _row(table, 'no_tfm')['Δ best'] == '-0.0020'
  assert _row(table, '**max difference**')['352x144 soft_f1'] == '0.0020'
  assert 'each of the 12 configurations' in table.notes[0]


def test_table6_is_352x144_with_bce_only(paper_tables):
  table = paper_tables[6]
  assert table.title == 'macro PRAUC at 352x144 with bce, composition x preprocessing'
  assert table.header == ['composition', 'no_tfm', 'inc_d', 'mean', 'max difference']
  assert [r[0] for r in table.rows] == COMPOSITIONS
  row = _row(table, 'B-H-N')
  assert row['inc_d'] == '**0.5321 ± 0.0001**'  # the best cell, in bold
  assert row['mean'] == '0.5311' and row['max difference'] == '0.0020'
  # Column mean of inc_d: 0.5221, 0.5321, 0.5261.
  assert _value(_row(table, '**mean**')['inc_d']) == pytest.approx(0.526767, abs=6e-5)
  assert _row(table, '**max difference**')['mean'] == '0.0100'  # composition means 0.5211-0.5311
  assert 'pooled over the 6 configurations' in table.notes[1]


def test_table7_ranks_each_configuration_at_the_higher_resolutions(paper_tables):
  table = paper_tables[7]
  assert table.header == ['composition', 'preprocess', '352x144', 'rank', '464x192', 'rank',
                          'Δ 464x192 − 352x144', '928x384', 'rank', 'Δ 928x384 − 352x144']
  assert len(table.rows) == 6
  cells = table.rows[[r[:2] for r in table.rows].index(['B-H-N', 'inc_d'])]
  # 464x192: 0.542 (one seed), rank 1, gain 0.542 - 0.5321; 928x384: seeds 0.562 / 0.563.
  assert cells[4:7] == ['0.5420', '1', '+0.0099']
  assert cells[7] == '0.5625 ± 0.0007' and cells[8] == '1' and cells[9] == '+0.0304'
  cells = table.rows[[r[:2] for r in table.rows].index(['B-B-B', 'no_tfm'])]
  assert cells[2:4] == ['0.5201 ± 0.0001', '6'] and cells[7:] == ['—', '—', '—']
  mean = table.footer[0]
  assert mean[0] == '**mean**' and mean[6] == '+0.0099'  # every 464x192 gain: 0.03 - 0.0201
  assert _value(mean[4]) == pytest.approx(0.535667, abs=6e-5)


def test_table8_is_the_top_resolution_with_inc_d(paper_tables):
  table = paper_tables[8]
  assert table.title == '928x384, inc_d, bce: one row per composition'
  assert table.header == ['composition', '928x384', 'rank', 'Δ best', '352x144',
                          'gain over 352x144']
  assert [r[0] for r in table.rows] == COMPOSITIONS
  assert _row(table, 'B-B-B') == {'composition': 'B-B-B', '928x384': '0.5525 ± 0.0007',
                                  'rank': '3', 'Δ best': '-0.0100', '352x144': '0.5221 ± 0.0001',
                                  'gain over 352x144': '+0.0304'}
  assert _value(_row(table, '**mean**')['928x384']) == pytest.approx(0.557167, abs=6e-5)
  assert _row(table, '**max difference**')['928x384'] == '0.0100'
  # Seeds 0.001 apart in each of 3 configurations: sd 0.001 / sqrt(2).
  assert table.notes[0] == ('Run-to-run spread over seeds: sd 0.0007 (pooled over the 3 '
                            'configurations with several seeds), largest max − min 0.0010.')


def test_tables_say_when_a_table_has_no_runs():
  tables = tables_lib.build([{'composition': 'B-H-N', 'preprocess': 'no_tfm',
                              'resolution': '352x144', 'loss': 'bce', 'seed': 0, 'prauc': 0.6}],
                            compositions=['B-H-N'], preprocessing=['no_tfm'])
  assert not tables[4].rows and '(no complete runs for this table' in tables[4].markdown()
  assert '--resolutions=928x384 --preprocessing=inc_d' in tables[5].markdown()  # Table 8
  assert 'one seed' not in tables[5].markdown()  # no notes under an empty table
  assert '| B-H-N | **0.6000** | 0.6000 | — |' in tables[3].markdown()
  assert 'one seed per configuration' in tables[3].notes[-1]


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
