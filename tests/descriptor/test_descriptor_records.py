"""A descriptor run is refused before it writes anything, and refuses what it cannot trust.

Issue 16: finding 1 (a refused run rewrote a finished run's flags.txt and config.json), the
manifest part of finding 4 (an empty labels field silently meant "no descriptor"), and the
descriptor side of finding 3 (--max_pixels, named by the error, is a flag that works).
"""

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from fwjax import runs
from fwjax import store as store_lib
from fwjax.data import manifest as manifest_lib
from fwjax.descriptor import config as descriptor_config
from fwjax.descriptor import data as descriptor_data
from fwjax.descriptor import job as descriptor_job
from fwjax.training import checkpoints as checkpoints_lib
from fwjax.training import train


def _config(tmp_path, **kwargs):
  fields = dict(out_dir=str(tmp_path / 'run'), synthetic=40, valid_fraction=0.3, height=64,
                width=32, preprocess='cbn_1', epochs_phase1=1, epochs_phase2=1, phase1_lr=1e-2,
                batch_size=8, width_multiplier=0.125, stage_sizes=(1, 1, 1, 1), num_gradcam=0,
                progress=False, cache_dir=str(tmp_path / 'cache'))
  fields.update(kwargs)
  return descriptor_config.DescriptorConfig(**fields)


def _snapshot(folder):
  """Every file under ``folder``, name -> sha256 of its bytes."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _finished_run(config):
  """A run folder as a finished run of ``config`` leaves it (its checkpoint holds little)."""
  out = pathlib.Path(config.out_dir)
  out.mkdir(parents=True)
  key = descriptor_config.config_key(config)
  (out / 'flags.txt').write_text(runs.flags_text(config))
  (out / 'config.json').write_text(json.dumps(
      dict(dataclasses.asdict(config), config_key=key), indent=2, default=str))
  (out / 'summary.json').write_text(json.dumps({'macro_prauc': 0.5}))
  checkpoints = checkpoints_lib.RunCheckpoints(str(out / 'checkpoints'))
  meta = {'fingerprint': key + ':model-and-data', 'phase': 2, 'history': [],
          'best': {'epoch': 2, 'macro_prauc': 0.5}}
  checkpoints.save_last(2, {'w': np.zeros(3, np.float32)}, meta)
  checkpoints.close()
  store = store_lib.ResultsStore(out / 'results.sqlite')
  run_id = store.start_run('descriptor', config.name, dataclasses.asdict(config), key, str(out))
  store.finish_run(run_id, {'macro_prauc': 0.5})
  store.close()
  return out


def test_refused_run_changes_nothing_on_disk(tmp_path):
  finished = _config(tmp_path, phase1_lr=0.01)
  out = _finished_run(finished)
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError) as info:  # train.ResumeMismatchError
    descriptor_job.run_descriptor(dataclasses.replace(finished, phase1_lr=0.02))
  message = str(info.value)
  assert str(out) in message and '--phase1_lr=0.01 there, 0.02 here' in message
  assert '--out_dir' in message and '--noresume' in message and 'resume=False' not in message
  assert isinstance(info.value, train.ResumeMismatchError)
  assert _snapshot(tmp_path) == before  # flags.txt, config.json, store, cache: all untouched
  (run,) = store_lib.ResultsStore(out / 'results.sqlite').runs()
  assert run['status'] == 'complete'


def _manifest(folder, rows):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name, _ in rows:
    Image.fromarray(rng.integers(0, 256, (40, 20), dtype=np.uint8), 'L').save(folder / name)
  path = folder / 'manifest.csv'
  path.write_text('path,labels\n' + ''.join(f'{name},{labels}\n' for name, labels in rows))
  return path


def test_empty_labels_are_refused_unless_a_flag_says_they_mean_none(tmp_path):
  rows = [(f'{i}.png', 'D01;D04' if i % 3 else '') for i in range(12)]
  csv_path = _manifest(tmp_path / 'data', rows)
  config = _config(tmp_path, synthetic=0, manifest=str(csv_path), valid_fraction=0.25,
                   batch_size=4)
  with pytest.raises(manifest_lib.ManifestError) as info:
    descriptor_job.run_descriptor(config)
  message = str(info.value)
  assert str(csv_path) in message and '4 row(s)' in message and 'rows 2, 5, 8, 11' in message
  assert 'D14' in message and '--allow_empty_labels' in message
  assert not (tmp_path / 'run').exists()  # refused before anything was written
  plan = descriptor_data.plan(dataclasses.replace(config, allow_empty_labels=True),
                              tmp_path / 'run')
  assert sorted(len(e.labels) for e in plan.examples)[:4] == [0, 0, 0, 0]
  assert len(plan.examples) == 12 and not (tmp_path / 'run').exists()


def test_max_pixels_flag_admits_a_genuine_large_scan(tmp_path):
  csv_path = _manifest(tmp_path / 'data', [(f'{i}.png', 'D01') for i in range(12)])
  Image.fromarray(np.zeros((300, 200), np.uint8), 'L').save(tmp_path / 'data' / '0.png')
  config = _config(tmp_path, synthetic=0, manifest=str(csv_path), batch_size=4,
                   valid_fraction=0.25, max_pixels=50_000)
  plan = descriptor_data.plan(config, tmp_path / 'run')
  (skipped,) = plan.skipped
  assert skipped.path == '0.png' and 'over the limit of 50,000' in skipped.reason
  assert '--max_pixels' in skipped.reason
  admitted = descriptor_data.plan(dataclasses.replace(config, max_pixels=60_000),
                                  tmp_path / 'run')
  assert len(admitted.examples) == 12 and not admitted.skipped
  # At their defaults the new flags leave the config key as it was before they existed (the
  # hash of the other keyed fields), so a grid still skips the runs stored before.
  default = dataclasses.replace(config, max_pixels=250_000_000)
  before = {k: v for k, v in dataclasses.asdict(default).items()
            if k not in descriptor_config.UNKEYED + tuple(descriptor_config.KEYED_WHEN_SET)}
  assert descriptor_config.config_key(default) == hashlib.sha256(
      json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()
  assert descriptor_config.config_key(config) != descriptor_config.config_key(default)
