"""The main job: train and evaluate the descriptor classifier, write what a researcher reads.

``run_descriptor(config)`` does the whole run (``experiments/descriptor.py`` only turns flags
into a :class:`DescriptorConfig`):

1. data: a manifest CSV, or a synthetic set generated on the fly; split into training and
   validation; resized once per (resolution, policy) into a cache of uint8 planes, from which
   any channel composition is stacked (``fwjax.data.cache``);
2. model: preprocessing -> ResNet-50 body (pretrained weights, or random initialisation, said
   loudly) -> head, at ``width_multiplier`` x the standard width;
3. training: ``fwjax.training.train.fit`` (two phases, per-epoch validation, checkpoints, resume);
4. outputs in ``out_dir`` and a row in the SQLite results store (``fwjax.store``).

Run folder::

  flags.txt                 the resolved flags (re-run with --flagfile=flags.txt)
  config.json               the same as a JSON object, with the config key of the store
  metrics.jsonl             one JSON object per epoch (losses, macro PRAUC, per-label AP, rates,
                            throughput, data wait)
  per_label_ap.csv / .md    AP, positives and prevalence per descriptor (final model)
  confusion.csv / .png      the paper's multilabel confusion matrix (fwjax.metrics); the figure
                            names the descriptors, colour and numbers are % of each row
  pr_curves.png             precision-recall curve per descriptor
  predictions.csv           validation images: path, true codes, a score per descriptor
  gradcam/<code>.png        Grad-CAM of the --num_gradcam highest-loss validation images of each
  gradcam/overview.png      descriptor, and of the hardest one of every descriptor (Figure 11)
  data_*.png                interpolation samples, class and resolution distributions of the
                            training set (Figures 3-5, 7, 8; fwjax.descriptor.figures)
  checkpoints/last, best    Orbax checkpoints (fwjax.training.train)
  skipped_images.csv        manifest rows left out (unusable images): row, path, reason
  logs/descriptor.log       library logging (Orbax, JAX ...), kept off the console
  summary.json              macro_prauc, prevalence_baseline, per_label_ap, best epoch, ...

A run is refused before it writes anything (see :func:`run_descriptor`), writes its records
atomically, and continues its row in the results store when it resumes after an interruption.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp

from fwjax import descriptors, runs
from fwjax import store as store_lib
from fwjax.descriptor import data as descriptor_data
from fwjax.descriptor import report
from fwjax.descriptor.config import (UNKEYED, DescriptorConfig, augment, build_model, config_key,
                                     validate)
from fwjax.models import classifier
from fwjax.models import pretrained as pretrained_lib
from fwjax.training import checkpoints as checkpoints_lib
from fwjax.training import losses as losses_lib
from fwjax.training import steps, train

SKIPPED_IMAGES = 'skipped_images.csv'


def init_variables(model: classifier.DescriptorClassifier, config: DescriptorConfig
                   ) -> dict[str, Any]:
  """Random initialisation (then the pretrained body if given)."""
  # The 'rbg' generator compiles the initialiser much faster than threefry on CPU; the values
  # are reproducible on a given platform.
  key = jax.random.key(config.seed, impl='rbg')
  shape = jnp.zeros((1, config.height, config.width, 3), jnp.float32)
  variables = jax.jit(model.clone(bn_axis_name=None).init)(key, shape)
  variables = jax.device_get(variables)
  if config.weights:
    body = pretrained_lib.load_torchvision(config.weights, include_fc=False)
    variables = classifier.insert_body(variables, body)
  return variables


def _log(message: str) -> None:
  """A line of the job's own progress on the console (shared outputs are process 0's to tell)."""
  if runs.primary_process():
    print(message, flush=True)


def check_run_folder(config: DescriptorConfig, out: pathlib.Path) -> None:
  """Refuses, reading only, a run folder whose checkpoint another configuration wrote.

  The run would resume that checkpoint, so it is refused before anything is written: a finished
  run's flags.txt, config.json and summary.json stay those of the run that wrote them.

  Raises:
    train.ResumeMismatchError: naming the flags that differ (from the folder's config.json).
  """
  if not config.resume:
    return
  found = checkpoints_lib.read_latest_meta(str(out / 'checkpoints'))
  if found is None or found[1].get('fingerprint', '').split(':')[0] == config_key(config):
    return
  differences = ''
  try:
    written = json.loads((out / 'config.json').read_text())
  except (OSError, ValueError):
    written = None
  if written is not None:
    current = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    changed = [f'--{name}={written.get(name)} there, {value} here'
               for name, value in current.items()
               if name not in UNKEYED and written.get(name) != value]
    differences = f' ({"; ".join(changed)})' if changed else ''
  raise train.ResumeMismatchError(
      f'{out} holds a run of another configuration{differences}, whose checkpoint this run '
      'would resume; nothing was written. Give another --out_dir, or --noresume to start afresh '
      'in this folder (its checkpoints and outputs are then replaced)')


def _fit_config(config: DescriptorConfig, out: pathlib.Path) -> train.FitConfig:
  return train.FitConfig(
      epochs_phase1=config.epochs_phase1, epochs_phase2=config.epochs_phase2,
      phase1_lr=config.phase1_lr, phase2_lrs=tuple(config.phase2_lrs), seed=config.seed,
      checkpoint_dir=str(out / 'checkpoints'), resume=config.resume, fingerprint=config_key(config),
      progress=config.progress and runs.primary_process(), augment=augment(config))


def _epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
  """The numbers of an epoch record that the results store keeps as its time series."""
  return {k: float(v) for k, v in record.items()
          if isinstance(v, (int, float)) and k != 'epoch'}


@dataclasses.dataclass
class _Record:
  """Where process 0 records the run: its row in the results store."""
  store: store_lib.ResultsStore
  run_id: int


def _open_record(config: DescriptorConfig, out: pathlib.Path,
                 resumed: tuple[int, dict[str, Any]] | None) -> _Record | None:
  """The run's first writes (process 0 only): its store row, flags.txt and config.json.

  A resumed run continues its row of the results store (one row per run, however often it
  was interrupted), with the epochs of its checkpoint as the metrics so far.
  """
  if not runs.primary_process():
    return None
  key = config_key(config)
  store = store_lib.ResultsStore(config.results_db or out / 'results.sqlite')
  flags = dataclasses.asdict(config)
  run_id = None
  if config.resume:
    run_id = store.continue_run('descriptor', config.name, flags, key, str(out))
  if run_id is None:
    run_id = store.start_run('descriptor', config.name, flags, key, str(out))
  try:
    if resumed is not None:
      store.replace_metrics(run_id,
                            [(r['epoch'], _epoch_scalars(r)) for r in resumed[1]['history']])
    out.mkdir(parents=True, exist_ok=True)
    runs.write_atomic(out / 'flags.txt', runs.flags_text(config))
    runs.write_atomic(out / 'config.json', json.dumps(
        dict(dataclasses.asdict(config), config_key=key), indent=2, default=str) + '\n')
  except BaseException as error:
    store.fail_run(run_id, f'{type(error).__name__}: {error}')
    raise
  return _Record(store, run_id)


def run_descriptor(config: DescriptorConfig) -> dict[str, Any]:
  """Trains, evaluates, reports and records one descriptor configuration.

  Everything that can refuse the run (flags, the run folder's checkpoint, the data, the weights)
  is checked before anything is written, so a refused run leaves the folder and the results
  store as they were. With several processes (``distributed``) process 0 writes the shared
  outputs (reports, plots, summary, store row); each process logs to its own file in ``logs/``.

  Args:
    config: the run's configuration.

  Returns:
    The summary (also written to ``out_dir/summary.json``).

  Raises:
    ValueError / FileNotFoundError: a configuration that cannot run (flag named).
    train.ResumeMismatchError: ``out_dir`` holds a checkpoint of another configuration.
    fwjax.data.manifest.ManifestError: a manifest that cannot be used (rows named).
    fwjax.store.RunInProgressError: another live process is running this run.
    fwjax.training.train.NonFiniteLossError: training diverged (the store records the failure).
  """
  validate(config)
  if config.distributed:
    steps.initialize_distributed()
  out = pathlib.Path(config.out_dir)
  with runs.quiet_console():
    check_run_folder(config, out)
    data_plan = descriptor_data.plan(config, out)
    model = build_model(config)
    fit_config = _fit_config(config, out)
    try:
      resumed = train.check_resume(model, fit_config, steps_per_epoch=data_plan.steps_per_epoch,
                                   batch_size=config.batch_size)
    except train.ResumeMismatchError:
      raise train.ResumeMismatchError(
          f'{out} holds a checkpoint written with these flags but other data or another fwjax '
          f'version ({data_plan.steps_per_epoch} steps per epoch now); nothing was written. Give '
          'another --out_dir, or --noresume to start afresh in this folder') from None
    t = time.perf_counter()
    variables = init_variables(model, config)  # a weights file that cannot be read stops here
    timings = {'model_seconds': time.perf_counter() - t}
    # Accepted: from here on the run writes.
    record = _open_record(config, out, resumed)
    with runs.log_file(out / 'logs' / runs.log_name('descriptor')) as log_path:
      if not runs.primary_process():
        print(f'process {jax.process_index()} of {jax.process_count()}: process 0 writes the '
              f'shared outputs; library log: {log_path}', flush=True)
      try:
        summary = _run(config, out, record, data_plan, model, variables, fit_config, timings)
      except KeyboardInterrupt:
        if record is not None:
          record.store.interrupt_run(record.run_id, 'interrupted (KeyboardInterrupt); resume it '
                                     'with the same command')
        raise
      except BaseException as error:
        if record is not None:
          record.store.fail_run(record.run_id, f'{type(error).__name__}: {error}')
        raise
  if record is not None:
    record.store.finish_run(record.run_id, summary)
  return summary


def _run(config: DescriptorConfig, out: pathlib.Path, record: _Record | None,
         data_plan: descriptor_data.DataPlan, model: classifier.DescriptorClassifier,
         variables: dict[str, Any], fit_config: train.FitConfig,
         timings: dict[str, float]) -> dict[str, Any]:
  started = time.perf_counter() - sum(timings.values())

  t = time.perf_counter()
  data = descriptor_data.load(config, out, data_plan)
  timings['data_seconds'] = time.perf_counter() - t
  skipped = _record_skipped(out, record, data_plan)
  _log(f'data: {data.num_train} training / {data.num_valid} validation images at '
       f'{config.height}x{config.width} ({config.policy}, {config.composition}); '
       f'{data.fit_data.steps_per_epoch} steps of {config.batch_size} per epoch' + skipped)
  train_labels = data.train_labels
  absent = [c for c, n in zip(descriptors.CODES, train_labels.sum(axis=0)) if n == 0]
  weights = None
  if config.loss == 'bce':
    weights = losses_lib.label_weights(train_labels, missing='max')
    if absent:
      _log(f'WARNING: no training image has {", ".join(absent)}; their BCE weight is the '
           'largest of the others (every training image pushes their scores down)')
  if not config.weights:
    _log('=' * 78 + '\nNO PRETRAINED WEIGHTS (--weights unset): the ResNet-50 body starts from '
         'RANDOM\nINITIALISATION. Phase 1 trains only BatchNorm in the body. Results are not\n'
         'comparable with the paper, which fine-tunes ImageNet weights.\n' + '=' * 78)
  else:
    _log(f'pretrained body: {config.weights}')

  metrics_path = out / 'metrics.jsonl'

  def on_epoch(epoch_record: dict[str, Any]) -> None:
    if record is None:
      return
    with open(metrics_path, 'a') as f:
      f.write(json.dumps(epoch_record, default=float) + '\n')
    record.store.log_metrics(record.run_id, epoch_record['epoch'], _epoch_scalars(epoch_record))

  if record is not None and not config.resume and metrics_path.exists():
    metrics_path.unlink()
  t = time.perf_counter()
  result = train.fit(model, variables, data.fit_data, losses_lib.make_loss(config.loss, weights),
                     fit_config, on_epoch=on_epoch)
  timings['train_seconds'] = time.perf_counter() - t
  if record is not None:
    # A resumed run only appended its own epochs (and a killed one may have missed one): the
    # file and the store's series are rewritten from the full history.
    runs.write_atomic(metrics_path, ''.join(json.dumps(r, default=float) + '\n'
                                            for r in result.history))
    record.store.replace_metrics(record.run_id,
                                 [(r['epoch'], _epoch_scalars(r)) for r in result.history])

  t = time.perf_counter()
  if record is not None:
    summary = report.write_report(config, out, data, result, record.store, record.run_id)
  else:
    summary = report.summarize(config, data, result)
  timings['report_seconds'] = time.perf_counter() - t
  timings['total_seconds'] = time.perf_counter() - started
  summary['skipped_images'] = len(data_plan.skipped)
  summary['timings'] = timings
  if record is not None:
    for name, value in timings.items():
      record.store.log_values(record.run_id, 'timing', name, {'seconds': value})
    runs.write_atomic(out / 'summary.json', json.dumps(report.finite(summary), indent=2) + '\n')
  _log(f'macro PRAUC {summary["macro_prauc"]:.4f} vs prevalence baseline '
       f'{summary["prevalence_baseline"]:.4f} (mean label prevalence in validation, the AP of '
       f'random scores) after {summary["epochs"]} epochs; {out / "summary.json"}' + skipped)
  return summary


def _record_skipped(out: pathlib.Path, record: _Record | None,
                    data_plan: descriptor_data.DataPlan) -> str:
  """Writes skipped_images.csv (process 0) and returns the console's words about it."""
  path = out / SKIPPED_IMAGES
  if record is not None:
    with runs.atomic_open(path, newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['row', 'path', 'reason'])
      writer.writerows((s.row, s.path, s.reason) for s in data_plan.skipped)
    record.store.log_artifact(record.run_id, 'skipped_images', path)
  if not data_plan.skipped:
    return ''
  listed = len(data_plan.skipped) + len(data_plan.examples)
  return f'; {len(data_plan.skipped)} of {listed} images skipped (unusable), listed in {path}'
