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
  summary.json              macro_prauc, prevalence_baseline, per_label_ap, best epoch, ...
"""

from __future__ import annotations

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
from fwjax.descriptor.config import DescriptorConfig, augment, build_model, config_key, validate
from fwjax.models import classifier
from fwjax.models import pretrained as pretrained_lib
from fwjax.training import losses as losses_lib
from fwjax.training import steps, train


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
  print(message, flush=True)


def run_descriptor(config: DescriptorConfig) -> dict[str, Any]:
  """Trains, evaluates, reports and records one descriptor configuration.

  Args:
    config: the run's configuration.

  Returns:
    The summary (also written to ``out_dir/summary.json``).

  Raises:
    ValueError / FileNotFoundError: a configuration that cannot run (flag named).
    fwjax.training.train.NonFiniteLossError: training diverged (the store records the failure).
  """
  validate(config)
  if config.distributed:
    steps.initialize_distributed()
  out = pathlib.Path(config.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  key = config_key(config)
  (out / 'flags.txt').write_text(runs.flags_text(config))
  (out / 'config.json').write_text(json.dumps(
      dict(dataclasses.asdict(config), config_key=key), indent=2, default=str) + '\n')
  store = store_lib.ResultsStore(config.results_db or out / 'results.sqlite')
  run_id = store.start_run('descriptor', config.name, dataclasses.asdict(config), key, str(out))
  try:
    summary = _run(config, out, store, run_id)
  except BaseException as error:
    store.fail_run(run_id, f'{type(error).__name__}: {error}')
    raise
  store.finish_run(run_id, summary)
  return summary


def _run(config: DescriptorConfig, out: pathlib.Path, store: store_lib.ResultsStore,
         run_id: int) -> dict[str, Any]:
  started = time.perf_counter()
  timings: dict[str, float] = {}

  t = time.perf_counter()
  data = descriptor_data.load(config, out)
  timings['data_seconds'] = time.perf_counter() - t
  _log(f'data: {data.num_train} training / {data.num_valid} validation images at '
       f'{config.height}x{config.width} ({config.policy}, {config.composition}); '
       f'{data.fit_data.steps_per_epoch} steps of {config.batch_size} per epoch')
  train_labels = data.train_labels
  absent = [c for c, n in zip(descriptors.CODES, train_labels.sum(axis=0)) if n == 0]
  weights = None
  if config.loss == 'bce':
    weights = losses_lib.label_weights(train_labels, missing='max')
    if absent:
      _log(f'WARNING: no training image has {", ".join(absent)}; their BCE weight is the '
           'largest of the others (every training image pushes their scores down)')

  t = time.perf_counter()
  model = build_model(config)
  variables = init_variables(model, config)
  timings['model_seconds'] = time.perf_counter() - t
  if not config.weights:
    _log('=' * 78 + '\nNO PRETRAINED WEIGHTS (--weights unset): the ResNet-50 body starts from '
         'RANDOM\nINITIALISATION. Phase 1 trains only BatchNorm in the body. Results are not\n'
         'comparable with the paper, which fine-tunes ImageNet weights.\n' + '=' * 78)
  else:
    _log(f'pretrained body: {config.weights}')

  metrics_path = out / 'metrics.jsonl'

  def on_epoch(record: dict[str, Any]) -> None:
    with open(metrics_path, 'a') as f:
      f.write(json.dumps(record, default=float) + '\n')
    scalars = {k: float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and k != 'epoch'}
    store.log_metrics(run_id, record['epoch'], scalars)

  fit_config = train.FitConfig(
      epochs_phase1=config.epochs_phase1, epochs_phase2=config.epochs_phase2,
      phase1_lr=config.phase1_lr, phase2_lrs=tuple(config.phase2_lrs), seed=config.seed,
      checkpoint_dir=str(out / 'checkpoints'), resume=config.resume, fingerprint=config_key(config),
      progress=config.progress, augment=augment(config))
  if not config.resume and metrics_path.exists():
    metrics_path.unlink()
  t = time.perf_counter()
  result = train.fit(model, variables, data.fit_data, losses_lib.make_loss(config.loss, weights),
                     fit_config, on_epoch=on_epoch)
  timings['train_seconds'] = time.perf_counter() - t
  # A resumed run only appended its own epochs: rewrite the file from the full history.
  with open(metrics_path, 'w') as f:
    for record in result.history:
      f.write(json.dumps(record, default=float) + '\n')

  t = time.perf_counter()
  summary = report.write_report(config, out, data, result, store, run_id)
  timings['report_seconds'] = time.perf_counter() - t
  timings['total_seconds'] = time.perf_counter() - started
  summary['timings'] = timings
  for name, value in timings.items():
    store.log_values(run_id, 'timing', name, {'seconds': value})
  (out / 'summary.json').write_text(json.dumps(report.finite(summary), indent=2) + '\n')
  _log(f'macro PRAUC {summary["macro_prauc"]:.4f} vs prevalence baseline '
       f'{summary["prevalence_baseline"]:.4f} (mean label prevalence in validation, the AP of '
       f'random scores) after {summary["epochs"]} epochs; {out / "summary.json"}')
  return summary


