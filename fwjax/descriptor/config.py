"""The configuration of a descriptor run: its fields (the flags), validation and results key.

Field names are the flag names of ``experiments.descriptor``, and the defaults here are the
flags' defaults: a setting's default lives in this one place (the learning rates in
``fwjax.training.optim``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from fwjax import augment as augment_lib
from fwjax import runs
from fwjax.data import images
from fwjax.models import classifier
from fwjax.training import losses as losses_lib
from fwjax.training import optim, steps

STANDARD_WIDTH = 64
"""ResNet-50's base width; pretrained weights need it."""


@dataclasses.dataclass
class DescriptorConfig:
  """Everything a descriptor run depends on (the entry point fills it from flags).

  Exactly one data source: ``manifest`` (CSV of path,labels; paths relative to ``data_root`` or
  to the CSV's folder) or ``synthetic`` (> 0: generate that many synthetic impressions).

  The validation set is ``valid_fraction`` of the images, or exactly ``valid_count`` images when
  that is set (Budka et al. hold out 1,000): :func:`fwjax.data.manifest.split_examples`.
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
  phase1_lr: float = optim.PHASE1_LR
  phase2_lrs: tuple[float, float] = optim.PHASE2_LRS
  batch_size: int = 64
  seed: int = 0
  weights: str | None = None
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
  max_pixels: int = images.MAX_PIXELS
  allow_empty_labels: bool = False
  valid_count: int | None = None  # the paper's split: a fixed number of validation images


# Fields that change where or how a run reports, not its result.
UNKEYED = ('out_dir', 'cache_dir', 'results_db', 'name', 'num_gradcam', 'workers', 'resume',
            'progress', 'distributed')

# Fields added after results were stored under config keys: at these defaults they leave the
# key out, so the runs recorded before the field existed keep their keys (a grid skips them).
KEYED_WHEN_SET = {'max_pixels': images.MAX_PIXELS, 'allow_empty_labels': False,
                  'valid_count': None}


def config_key(config: DescriptorConfig) -> str:
  """The results-store key of a configuration: a hash of every field that shapes the result."""
  fields = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in UNKEYED and not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])}
  if fields['weights']:  # the weights' identity, not where they happen to be stored
    fields['weights'] = runs.weights_identity(fields['weights'])
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def validate(config: DescriptorConfig) -> None:
  """Fails early, naming the flag, on a configuration that cannot run."""
  if (config.manifest is None) == (config.synthetic <= 0):
    raise ValueError('give exactly one data source: --manifest=CSV or --synthetic=N')
  if config.loss not in losses_lib.LOSSES:
    raise ValueError(f'--loss must be one of {losses_lib.LOSSES}, got {config.loss!r}')
  if config.preprocess not in classifier.PREPROCESSING:
    raise ValueError(f'--preprocess must be one of {classifier.PREPROCESSING}, '
                     f'got {config.preprocess!r}')
  runs.compute_dtype(config.dtype)
  if not 0 < config.valid_fraction < 1:
    raise ValueError(f'--valid_fraction must be in (0, 1), got {config.valid_fraction}')
  if config.valid_count is not None and config.valid_count < 1:
    raise ValueError(f'--valid_count must be at least 1 (or unset, to hold out '
                     f'--valid_fraction), got {config.valid_count}')
  if config.epochs_phase1 < 0 or config.epochs_phase2 < 0 or (
      config.epochs_phase1 + config.epochs_phase2 == 0):
    raise ValueError('--epochs_phase1/--epochs_phase2 must be >= 0 and not both 0')
  width = model_width(config)
  augment(config)
  if config.weights and tuple(config.stage_sizes) != (3, 4, 6, 3):
    raise ValueError('--weights ResNet-50 weights need --stage_sizes=3,4,6,3')
  if config.weights and width != STANDARD_WIDTH:
    raise ValueError(f'--weights weights need --width_multiplier=1 (width {STANDARD_WIDTH}), '
                     f'got width {width}')
  if config.weights and not os.path.exists(config.weights):
    raise FileNotFoundError(f'--weights={config.weights}: no such file')
  if config.max_pixels < 1:
    raise ValueError(f'--max_pixels must be a positive pixel count, got {config.max_pixels}')


def build_model(config: DescriptorConfig) -> classifier.DescriptorClassifier:
  """The classifier a configuration describes, with cross-device BatchNorm for training."""
  return classifier.DescriptorClassifier(
      preprocess=config.preprocess, width=model_width(config),
      stage_sizes=tuple(config.stage_sizes), dtype=runs.compute_dtype(config.dtype),
      bn_axis_name=steps.AXIS,
      # From random initialisation, zero-initialised residual BatchNorm trains faster and more
      # stably (Goyal et al. 2017); pretrained weights overwrite it.
      zero_init_residual=not config.weights)


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


