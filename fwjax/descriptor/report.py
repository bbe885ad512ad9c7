"""What a researcher reads after a descriptor run: tables, plots, predictions and Grad-CAM.

:func:`write_report` writes each output of the final model in its own step and registers it in
the results store; it returns the run's summary.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from typing import Any

import jax
import numpy as np

from fwjax import descriptors, runs
from fwjax import metrics as metrics_lib
from fwjax import store as store_lib
from fwjax.descriptor import data as descriptor_data
from fwjax.descriptor import figures, plots
from fwjax.descriptor.config import DescriptorConfig, config_key
from fwjax.training import train


@dataclasses.dataclass(frozen=True)
class Scores:
  """The final model's validation scores and what the tables derive from them."""
  labels: np.ndarray  # (N, 17) uint8
  scores: np.ndarray  # (N, 17) sigmoid outputs
  per_label: np.ndarray  # (17,) AP, NaN for a label without validation positives
  positives: np.ndarray  # (17,) validation positives per label
  macro: float
  baseline: float  # mean prevalence of the labels that have positives: the AP of random scores

  @classmethod
  def of(cls, labels: np.ndarray, scores: np.ndarray) -> Scores:
    labels = labels.astype(np.uint8)
    per_label = np.asarray(metrics_lib.average_precision(labels, scores, average=None),
                           np.float64)
    positives = labels.sum(axis=0)
    prevalence = positives / max(len(labels), 1)
    defined = positives > 0
    return cls(labels, scores, per_label, positives, metrics_lib.macro_average(per_label),
               float(prevalence[defined].mean()) if defined.any() else float('nan'))

  @property
  def prevalence(self) -> np.ndarray:
    return self.positives / max(len(self.labels), 1)


def summarize(config: DescriptorConfig, data: descriptor_data.DescriptorData,
              result: train.FitResult) -> dict[str, Any]:
  """The summary :func:`write_report` returns, writing nothing (for processes other than 0)."""
  return _summary(config, Scores.of(data.fit_data.valid_labels, result.valid_scores), data,
                  result, gradcams=[])


def write_report(config: DescriptorConfig, out: pathlib.Path,
                 data: descriptor_data.DescriptorData, result: train.FitResult,
                 store: store_lib.ResultsStore, run_id: int) -> dict[str, Any]:
  """Writes tables, plots, predictions and Grad-CAM of the final model; returns the summary."""
  scores = Scores.of(data.fit_data.valid_labels, result.valid_scores)
  write_per_label_tables(scores, out)
  for i, code in enumerate(descriptors.CODES):
    store.log_values(run_id, 'per_label', code,
                     {'ap': scores.per_label[i], 'positives': scores.positives[i]})
  write_confusion(scores, out, config.name)
  plots.pr_curves_png(scores.labels, scores.scores, descriptors.CODES, out / 'pr_curves.png',
                      average_precision=scores.per_label,
                      title=f'{config.name}: macro PRAUC {scores.macro:.4f} '
                            f'(prevalence baseline {scores.baseline:.4f})')
  write_predictions(scores, data.valid_paths, out)
  gradcams = figures.write_gradcam(config, out, data, result.variables, scores.labels,
                                   scores.scores)
  figures.write_data_figures(config, out, data)
  _register_outputs(store, run_id, out, result)
  return _summary(config, scores, data, result, gradcams)


def write_per_label_tables(scores: Scores, out: pathlib.Path) -> None:
  """per_label_ap.csv (full precision) and per_label_ap.md (for reading)."""
  codes, prevalence = descriptors.CODES, scores.prevalence
  with runs.atomic_open(out / 'per_label_ap.csv', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['code', 'name', 'ap', 'positives', 'prevalence'])
    for i, code in enumerate(codes):
      writer.writerow([code, descriptors.NAMES[code], f'{scores.per_label[i]:.6f}',
                       int(scores.positives[i]), f'{prevalence[i]:.6f}'])
  lines = ['| code | name | AP | positives | prevalence |', '| --- | --- | ---: | ---: | ---: |']
  for i, code in enumerate(codes):
    ap = '—' if np.isnan(scores.per_label[i]) else f'{scores.per_label[i]:.4f}'
    lines.append(f'| {code} | {descriptors.NAMES[code]} | {ap} | {int(scores.positives[i])} | '
                 f'{prevalence[i]:.3f} |')
  lines.append(f'| **macro** | | **{scores.macro:.4f}** | | baseline {scores.baseline:.4f} |')
  runs.write_atomic(out / 'per_label_ap.md', '\n'.join(lines) + '\n')


def write_confusion(scores: Scores, out: pathlib.Path, name: str) -> np.ndarray:
  """The paper's multilabel confusion matrix as confusion.csv and confusion.png."""
  codes = descriptors.CODES
  confusion = metrics_lib.multilabel_confusion(scores.labels, scores.scores)
  with runs.atomic_open(out / 'confusion.csv', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true\\predicted', *codes])
    for i, code in enumerate(codes):
      writer.writerow([code, *(f'{v:.4f}' for v in confusion[i])])
  plots.confusion_png(confusion, codes, out / 'confusion.png', positives=scores.positives,
                      title=f'{name}: multilabel confusion (validation)')
  return confusion


def write_predictions(scores: Scores, paths: list[str], out: pathlib.Path) -> None:
  """predictions.csv: each validation image's path, true codes and a score per descriptor."""
  with runs.atomic_open(out / 'predictions.csv', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'labels', *descriptors.CODES])
    for path, row, score in zip(paths, scores.labels, scores.scores):
      writer.writerow([path, ' '.join(descriptors.decode(row)), *(f'{s:.6f}' for s in score)])


def _register_outputs(store: store_lib.ResultsStore, run_id: int, out: pathlib.Path,
                      result: train.FitResult) -> None:
  for name, path in (('metrics', 'metrics.jsonl'), ('per_label_ap', 'per_label_ap.csv'),
                     ('confusion', 'confusion.csv'), ('confusion_png', 'confusion.png'),
                     ('pr_curves', 'pr_curves.png'), ('predictions', 'predictions.csv'),
                     ('gradcam', 'gradcam'), ('checkpoint_last', result.last_checkpoint),
                     ('checkpoint_best', result.best_checkpoint), ('summary', 'summary.json')):
    if path:
      store.log_artifact(run_id, name, out / path)


def _summary(config: DescriptorConfig, scores: Scores, data: descriptor_data.DescriptorData,
             result: train.FitResult, gradcams: list[str]) -> dict[str, Any]:
  codes = descriptors.CODES
  last = result.history[-1] if result.history else {}
  return {
      'name': config.name,
      'macro_prauc': scores.macro,
      'prevalence_baseline': scores.baseline,
      'per_label_ap': dict(zip(codes, map(float, scores.per_label))),
      'labels_without_validation_positives': [
          c for c, n in zip(codes, scores.positives) if n == 0],
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
      'pretrained': bool(config.weights),
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'gradcam': gradcams,
      'config_key': config_key(config),
  }


def finite(obj: Any) -> Any:
  """``obj`` with NaN/inf floats as None, so summary.json is strict JSON."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite(v) for v in obj]
  return obj


