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
  confusion.csv / .png      the paper's multilabel confusion matrix (fwjax.metrics)
  pr_curves.png             precision-recall curve per descriptor
  predictions.csv           validation images: path, true codes, a score per descriptor
  gradcam/*.png             Grad-CAM overlays of a few validation images (top predicted label)
  checkpoints/last, best    Orbax checkpoints (fwjax.training.train)
  summary.json              macro_prauc, prevalence_baseline, per_label_ap, best epoch, ...
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fwjax import augment as augment_lib
from fwjax.descriptor import data as descriptor_data
from fwjax import descriptors
from fwjax.training import losses as losses_lib
from fwjax import metrics as metrics_lib
from fwjax.descriptor import plots
from fwjax.training import steps
from fwjax import store as store_lib
from fwjax.training import train
from fwjax.models import classifier
from fwjax.models import gradcam as gradcam_lib
from fwjax.models import pretrained as pretrained_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
STANDARD_WIDTH = 64


@dataclasses.dataclass
class DescriptorConfig:
  """Everything a descriptor run depends on (the entry point fills it from flags).

  Exactly one data source: ``manifest`` (CSV of path,labels; paths relative to ``data_root`` or
  to the CSV's folder) or ``synthetic`` (> 0: generate that many synthetic impressions).
  """
  out_dir: str
  manifest: str | None = None
  data_root: str | None = None
  synthetic: int = 0
  synthetic_size: tuple[int, int] = (0, 0)
  valid_fraction: float = 0.2
  split_seed: int = 0
  cache_dir: str | None = None
  height: int = 352
  width: int = 144
  policy: str = 'squish'
  composition: str = 'B-H-N'
  preprocess: str = 'inc_d'
  loss: str = 'bce'
  epochs_phase1: int = 10
  epochs_phase2: int = 40
  phase1_lr: float = 1e-3
  phase2_lrs: tuple[float, float] = (1e-6, 1e-4)
  batch_size: int = 64
  seed: int = 0
  pretrained: str | None = None
  width_multiplier: float = 1.0
  stage_sizes: tuple[int, int, int, int] = (3, 4, 6, 3)
  dtype: str = 'float32'
  augment_flip: bool = False
  augment_rotation: float = 0.0
  augment_shift: float = 0.0
  results_db: str | None = None
  name: str = 'descriptor'
  num_gradcam: int = 4
  workers: int = 0
  resume: bool = True
  progress: bool = True
  distributed: bool = False
  flags_text: str = ''


# Fields that change where or how a run reports, not its result.
_UNKEYED = ('out_dir', 'cache_dir', 'results_db', 'name', 'num_gradcam', 'workers', 'resume',
            'progress', 'distributed', 'flags_text')


def config_key(config: DescriptorConfig) -> str:
  """The results-store key of a configuration: a hash of every field that shapes the result."""
  fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _UNKEYED}
  if fields['pretrained']:  # the weights' identity, not where they happen to be stored
    fields['pretrained'] = _file_digest(fields['pretrained'])
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: str) -> str:
  path = pathlib.Path(path)
  if path.is_dir():
    return 'dir:' + path.name
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def validate(config: DescriptorConfig) -> None:
  """Fails early, naming the flag, on a configuration that cannot run."""
  if (config.manifest is None) == (config.synthetic <= 0):
    raise ValueError('give exactly one data source: --manifest=CSV or --synthetic=N')
  if config.loss not in losses_lib.LOSSES:
    raise ValueError(f'--loss must be one of {losses_lib.LOSSES}, got {config.loss!r}')
  if config.preprocess not in classifier.PREPROCESSING:
    raise ValueError(f'--preprocess must be one of {classifier.PREPROCESSING}, '
                     f'got {config.preprocess!r}')
  if config.dtype not in DTYPES:
    raise ValueError(f'--dtype must be one of {tuple(DTYPES)}, got {config.dtype!r}')
  if not 0 < config.valid_fraction < 1:
    raise ValueError(f'--valid_fraction must be in (0, 1), got {config.valid_fraction}')
  if config.epochs_phase1 < 0 or config.epochs_phase2 < 0 or (
      config.epochs_phase1 + config.epochs_phase2 == 0):
    raise ValueError('--epochs_phase1/--epochs_phase2 must be >= 0 and not both 0')
  width = model_width(config)
  augment(config)
  if config.pretrained and tuple(config.stage_sizes) != (3, 4, 6, 3):
    raise ValueError('--pretrained ResNet-50 weights need --stage_sizes=3,4,6,3')
  if config.pretrained and width != STANDARD_WIDTH:
    raise ValueError(f'--pretrained weights need --width_multiplier=1 (width {STANDARD_WIDTH}), '
                     f'got width {width}')
  if config.pretrained and not os.path.exists(config.pretrained):
    raise FileNotFoundError(f'--pretrained={config.pretrained}: no such file')


def augment(config: DescriptorConfig) -> augment_lib.Augment | None:
  """The training augmentation of a configuration (None when it asks for none)."""
  try:
    aug = augment_lib.Augment(flip=config.augment_flip, max_rotation=config.augment_rotation,
                              max_shift=config.augment_shift)
  except ValueError as error:
    raise ValueError(f'--augment_rotation/--augment_shift: {error}') from None
  return aug if aug.active else None


def model_width(config: DescriptorConfig) -> int:
  width = int(round(STANDARD_WIDTH * config.width_multiplier))
  if width < 1:
    raise ValueError(f'--width_multiplier={config.width_multiplier} gives width {width}')
  return width


def build_model(config: DescriptorConfig) -> classifier.DescriptorClassifier:
  return classifier.DescriptorClassifier(
      preprocess=config.preprocess, width=model_width(config),
      stage_sizes=tuple(config.stage_sizes), dtype=DTYPES[config.dtype], bn_axis_name=steps.AXIS,
      # From random initialisation, zero-initialised residual BatchNorm trains faster and more
      # stably (Goyal et al. 2017); pretrained weights overwrite it.
      zero_init_residual=not config.pretrained)


def init_variables(model: classifier.DescriptorClassifier, config: DescriptorConfig
                   ) -> dict[str, Any]:
  """Random initialisation (then the pretrained body if given)."""
  # The 'rbg' generator compiles the initialiser about 3x faster than threefry on CPU; the
  # values are reproducible on a given platform.
  key = jax.random.key(config.seed, impl='rbg')
  shape = jnp.zeros((1, config.height, config.width, 3), jnp.float32)
  variables = jax.jit(model.clone(bn_axis_name=None).init)(key, shape)
  variables = jax.device_get(variables)
  if config.pretrained:
    body = pretrained_lib.load_torchvision(config.pretrained, include_fc=False)
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
  (out / 'flags.txt').write_text(config.flags_text or _flags_text(config))
  (out / 'config.json').write_text(json.dumps(
      dict(dataclasses.asdict(config), config_key=key), indent=2, default=str) + '\n')
  store = store_lib.ResultsStore(config.results_db or out / 'results.sqlite')
  flags = {k: v for k, v in dataclasses.asdict(config).items() if k != 'flags_text'}
  run_id = store.start_run('descriptor', config.name, flags, key, str(out))
  try:
    summary = _run(config, out, store, run_id)
  except BaseException as error:
    store.fail_run(run_id, f'{type(error).__name__}: {error}')
    raise
  store.finish_run(run_id, summary)
  return summary


def _flags_text(config: DescriptorConfig) -> str:
  lines = []
  for name, value in dataclasses.asdict(config).items():
    if name in ('flags_text',) or value is None:
      continue
    if isinstance(value, (tuple, list)):
      value = ','.join(map(str, value))
    lines.append(f'--{name}={value}')
  return '\n'.join(lines) + '\n'


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
  if not config.pretrained:
    _log('=' * 78 + '\nNO PRETRAINED WEIGHTS (--pretrained unset): the ResNet-50 body starts from '
         'RANDOM\nINITIALISATION. Phase 1 trains only BatchNorm in the body. Results are not\n'
         'comparable with the paper, which fine-tunes ImageNet weights.\n' + '=' * 78)
  else:
    _log(f'pretrained body: {config.pretrained}')

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
  summary = _report(config, out, data, result, store, run_id)
  timings['report_seconds'] = time.perf_counter() - t
  timings['total_seconds'] = time.perf_counter() - started
  summary['timings'] = timings
  for name, value in timings.items():
    store.log_values(run_id, 'timing', name, {'seconds': value})
  (out / 'summary.json').write_text(json.dumps(_finite(summary), indent=2) + '\n')
  _log(f'macro PRAUC {summary["macro_prauc"]:.4f} vs prevalence baseline '
       f'{summary["prevalence_baseline"]:.4f} (mean label prevalence in validation, the AP of '
       f'random scores) after {summary["epochs"]} epochs; {out / "summary.json"}')
  return summary


def _finite(obj: Any) -> Any:
  """NaN/inf as null, so summary.json is strict JSON."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _report(config: DescriptorConfig, out: pathlib.Path, data: descriptor_data.DescriptorData,
            result: train.FitResult, store: store_lib.ResultsStore, run_id: int
            ) -> dict[str, Any]:
  """Writes tables, plots, predictions and Grad-CAM of the final model; returns the summary."""
  labels = data.fit_data.valid_labels.astype(np.uint8)
  scores = result.valid_scores
  per_label = np.asarray(metrics_lib.average_precision(labels, scores, average=None), np.float64)
  positives = labels.sum(axis=0)
  defined = positives > 0
  macro = float(per_label[defined].mean()) if defined.any() else float('nan')
  prevalence = positives / max(len(labels), 1)
  baseline = float(prevalence[defined].mean()) if defined.any() else float('nan')
  codes = descriptors.CODES

  with open(out / 'per_label_ap.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['code', 'name', 'ap', 'positives', 'prevalence'])
    for i, code in enumerate(codes):
      writer.writerow([code, descriptors.NAMES[code], f'{per_label[i]:.6f}', int(positives[i]),
                       f'{prevalence[i]:.6f}'])
  lines = ['| code | name | AP | positives | prevalence |', '| --- | --- | ---: | ---: | ---: |']
  for i, code in enumerate(codes):
    ap = '—' if np.isnan(per_label[i]) else f'{per_label[i]:.4f}'
    lines.append(f'| {code} | {descriptors.NAMES[code]} | {ap} | {int(positives[i])} | '
                 f'{prevalence[i]:.3f} |')
  lines.append(f'| **macro** | | **{macro:.4f}** | | baseline {baseline:.4f} |')
  (out / 'per_label_ap.md').write_text('\n'.join(lines) + '\n')
  for i, code in enumerate(codes):
    store.log_values(run_id, 'per_label', code, {'ap': per_label[i], 'positives': positives[i]})

  confusion = metrics_lib.multilabel_confusion(labels, scores)
  with open(out / 'confusion.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true\\predicted', *codes])
    for i, code in enumerate(codes):
      writer.writerow([code, *(f'{v:.4f}' for v in confusion[i])])
  plots.confusion_png(confusion, codes, out / 'confusion.png',
                      title=f'{config.name}: multilabel confusion (validation)')
  plots.pr_curves_png(labels, scores, codes, out / 'pr_curves.png', average_precision=per_label,
                      title=f'{config.name}: macro PRAUC {macro:.4f} '
                            f'(prevalence baseline {baseline:.4f})')

  with open(out / 'predictions.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels', *codes])
    for path, row, score in zip(data.valid_paths, labels, scores):
      writer.writerow([path, ' '.join(descriptors.decode(row)), *(f'{s:.6f}' for s in score)])

  gradcams = _gradcam(config, out, data, result, scores)
  for name, path in (('metrics', 'metrics.jsonl'), ('per_label_ap', 'per_label_ap.csv'),
                     ('confusion', 'confusion.csv'), ('confusion_png', 'confusion.png'),
                     ('pr_curves', 'pr_curves.png'), ('predictions', 'predictions.csv'),
                     ('gradcam', 'gradcam'), ('checkpoint_last', result.last_checkpoint),
                     ('checkpoint_best', result.best_checkpoint), ('summary', 'summary.json')):
    if path:
      store.log_artifact(run_id, name, out / path)

  last = result.history[-1] if result.history else {}
  return {
      'name': config.name,
      'macro_prauc': macro,
      'prevalence_baseline': baseline,
      'per_label_ap': dict(zip(codes, map(float, per_label))),
      'labels_without_validation_positives': [c for c, d in zip(codes, defined) if not d],
      'best_epoch': result.best_epoch,
      'best_macro_prauc': max((r['macro_prauc'] for r in result.history
                               if not math.isnan(r['macro_prauc'])), default=float('nan')),
      'epochs': len(result.history),
      'final_train_loss': last.get('train_loss'),
      'final_valid_loss': last.get('valid_loss'),
      'images_per_second': last.get('images_per_second'),
      'data_wait_per_step': last.get('data_wait_per_step'),
      'num_train': data.num_train,
      'num_valid': data.num_valid,
      'pretrained': bool(config.pretrained),
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'gradcam': gradcams,
      'config_key': config_key(config),
  }


def _gradcam(config: DescriptorConfig, out: pathlib.Path, data: descriptor_data.DescriptorData,
             result: train.FitResult, scores: np.ndarray) -> list[str]:
  """Grad-CAM overlays of the top predicted label for the first few validation images."""
  count = min(config.num_gradcam, data.num_valid)
  if count == 0:
    return []
  images = data.valid_images(np.arange(count))  # (n, H, W, 3) uint8, as the model sees them
  model = build_model(config).clone(bn_axis_name=None)
  x = steps.normalize(jnp.asarray(images))
  top = np.argmax(scores[:count], axis=1)
  written = []
  for label in np.unique(top):  # one Grad-CAM call (one compile) per explained label
    rows = np.flatnonzero(top == label)
    heat = gradcam_lib.gradcam(model, result.variables, x[rows], int(label))
    for row, heatmap in zip(rows, heat):
      # Overlay on the greyscale plane the first channel was made from.
      path = out / 'gradcam' / f'{row:03d}_{descriptors.CODES[label]}.png'
      gradcam_lib.overlay_png(images[row, ..., 0], heatmap, path)
      written.append(str(path.relative_to(out)))
  return sorted(written)
