"""The configuration of a similarity run: its fields (the flags) and their validation."""

from __future__ import annotations

import dataclasses

from fwjax import distances
from fwjax.data import images
from fwjax.models import feature_model


@dataclasses.dataclass
class SimilarityConfig:
  """Everything a similarity run depends on (the entry point fills it from flags).

  Field names are the flag names of ``experiments.similarity`` and the defaults here are the
  flags' defaults. Exactly one collection source must be set: ``collection_dir``, ``manifest``,
  ``fid300_dir`` or ``synthetic`` (see ``fwjax.data.retrieval_sets.load_retrieval_set``).
  """
  out_dir: str
  collection_dir: str | None = None
  manifest: str | None = None
  fid300_dir: str | None = None
  synthetic: int = 0
  synthetic_probes_per_model: int = 2
  references: tuple[str, ...] = ()
  queries_per_class: int = 1
  keep_references: bool = True
  num_classes: int = 0
  distractor_classes: tuple[str, ...] = ()
  num_references: tuple[int, ...] = (1,)
  weights: str | None = None
  random_width: int = 64
  seed: int = 0
  stage: str = 'features'
  metrics: tuple[str, ...] = ('cosine',)
  fusion: str = 'sum'
  k: int = 0
  height: int = 224
  width: int = 224
  composition: str = 'B-B-B'
  policy: str = 'pad'
  batch_size: int = 32
  cache_dir: str | None = None
  results_db: str | None = None
  precision_at: tuple[int, ...] = (1, 5, 10)
  recall_levels: tuple[float, ...] = (0.5, 1.0)
  html_top: int = 20
  name: str = 'similarity'
  progress: bool = True
  arch: str = 'resnet50'
  colour: str = 'rgb'
  matcher: str = 'global'
  match_scale: float = 0.25
  margin: float = 0.25
  flip: bool = False
  rotations: tuple[float, ...] = ()
  shortlist: int = 0
  max_pixels: int = images.MAX_PIXELS


MATCHERS = ('global', 'mcncc')
"""``global``: distances between pooled features (de Bie 2020); ``mcncc``: spatial matching of
feature maps (Kong et al. 2019, ``fwjax.matching``)."""


def validate(config: SimilarityConfig) -> None:
  """Raises ValueError naming the setting when the configuration cannot run."""
  for metric in config.metrics:
    if metric not in distances.METRICS:
      raise ValueError(f'--metrics: unknown metric {metric!r}; valid: '
                       f'{", ".join(distances.METRICS)}')
  if not config.metrics:
    raise ValueError('--metrics: give at least one metric')
  if config.fusion not in distances.FUSIONS:
    raise ValueError(f'--fusion={config.fusion!r}; valid: {", ".join(distances.FUSIONS)}')
  if not config.num_references or min(config.num_references) < 1:
    raise ValueError(f'--num_references={config.num_references}: give counts >= 1')
  if config.num_classes < 0:
    raise ValueError(f'--num_classes={config.num_classes}: give 0 (every class) or a class count')
  if config.k < 0:
    raise ValueError(f'--k={config.k}: give 0 (full order) or a positive count')
  feature_model.check_stage(config.stage, config.arch)
  if config.matcher not in MATCHERS:
    raise ValueError(f'--matcher={config.matcher!r}; valid: {", ".join(MATCHERS)}')
  if config.matcher == 'mcncc':
    if config.stage == 'features':
      raise ValueError('--matcher=mcncc needs a spatial --stage (e.g. block3 for vgg16); '
                       "'features' is pooled")
    if config.fusion == 'mean_feature':
      raise ValueError("--fusion=mean_feature averages vectors; with --matcher=mcncc use 'sum' "
                       "or 'min'")
    if config.match_scale <= 0 or config.margin < 0 or config.shortlist < 0:
      raise ValueError(f'--match_scale must be > 0, --margin >= 0 and --shortlist >= 0 (got '
                       f'{config.match_scale}, {config.margin}, {config.shortlist})')
  if config.colour not in images.COLOUR_MODES:
    raise ValueError(f'--colour={config.colour!r}; valid: {", ".join(images.COLOUR_MODES)}')
  if config.max_pixels < 1:
    raise ValueError(f'--max_pixels must be a positive pixel count, got {config.max_pixels}')
