"""The thesis's comparison of CNNs and distances (de Bie 2020), run and read back from the store.

``run_comparison`` runs the similarity job (:func:`fwjax.similarity.job.run_similarity`) for every
CNN, with every metric and reference count of the base configuration, ``repeats`` times, into
one results store. Each (CNN, repeat) is one job with its own run folder
``<out_dir>/<arch>/rep<r>/`` and name ``<name>_<arch>_rep<r>`` (the name is part of the store's
config key, so every repeat has its own rows). Jobs whose rows are all complete in the store are
skipped, so a stopped comparison restarts where it stopped.

Repeated timings: the thesis reports the spread of model build, extraction and distance times.
Each repeat therefore starts cold: its features come from a feature cache of its own
(``<out_dir>/feature_cache/rep<r>/``, shared by the CNNs: the cache is keyed by the model), and
the programs compiled in this process are dropped first (the extractor kept by
``features.cached_extractor`` and JAX's jit caches), so every repeat's model build includes
compilation, as a fresh process's would. Only the process start (imports, the XLA backend) is
shared. The distance time is the computation alone: the job ranks once to compile and times a
second call (the first call's time is stored beside it as ``first_call_seconds``). With
``cold=False`` (``--nocold``) compiled programs are kept between jobs: repeat 0 of each CNN pays
the compilation, later repeats' model build is the weights' load only.

An arch without weights is initialised randomly (``base.random_width``, ``base.seed``) and
labelled ``<arch> (random)`` everywhere. The scores do not depend on the repeat (same weights,
seed and images): per-query scores are read from the lowest repeat in the store; timings from
every repeat.

``read_comparison`` reads the complete rows back (not the in-memory results), and the
``*_table`` functions aggregate them; ``fwjax.similarity.compare_figures`` draws the figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fwjax import store as store_lib
from fwjax.models import feature_model
from fwjax.similarity import features as features_lib
from fwjax.similarity import job as job_lib
from fwjax.similarity.config import SimilarityConfig, validate

COMPARISON_DIR = 'comparison'
TIMING_PHASES = ('model_build', 'feature_extraction', 'distance')


@dataclasses.dataclass(frozen=True)
class Job:
  """One similarity job of the comparison: a CNN and a repeat."""
  arch: str
  repeat: int
  config: SimilarityConfig

  @property
  def label(self) -> str:
    return cnn_label(self.arch, self.config.weights)


def cnn_label(arch: str, weights: str | None) -> str:
  """The CNN's name in tables and figures: ``vgg16``, or ``vgg16 (random)`` without weights."""
  return arch if weights else f'{arch} (random)'


def parse_weights(entries: Sequence[str], archs: Sequence[str]) -> dict[str, str]:
  """``['vgg16=a.h5', 'xception=b.h5']`` -> {arch: path}; errors name the ``--weights`` flag."""
  weights = {}
  for entry in entries:
    arch, sep, path = entry.partition('=')
    arch, path = arch.strip(), path.strip()
    if not sep or not arch or not path:
      raise ValueError(f'--weights: {entry!r} is not ARCH=PATH (e.g. vgg16=vgg16_notop.h5)')
    if arch not in archs:
      raise ValueError(f'--weights: {arch!r} is not one of --archs ({", ".join(archs)})')
    if arch in weights:
      raise ValueError(f'--weights: {arch} is given twice')
    if not pathlib.Path(path).expanduser().exists():
      raise FileNotFoundError(f'--weights: {arch}: no such file: {path}')
    weights[arch] = path
  return weights


def comparison_jobs(base: SimilarityConfig, archs: Sequence[str], *, repeats: int,
                    weights: Mapping[str, str] | None = None,
                    results_db: str | None = None) -> list[Job]:
  """Every job of the comparison, CNN by CNN, repeat by repeat (see the module docstring).

  Args:
    base: every setting but the CNN (``arch``, ``weights``, ``name`` and the folders are set
      here); its ``out_dir`` is the comparison's folder.
    archs: names in :data:`fwjax.models.feature_model.ARCHS`.
    repeats: jobs per CNN (>= 1).
    weights: arch -> weights file; an arch not in it is initialised randomly.
    results_db: the store every job writes to (default ``<out_dir>/results.sqlite``).

  Raises:
    ValueError: an unknown or repeated arch, repeats < 1, or a setting a job refuses.
  """
  weights = dict(weights or {})
  if not archs:
    raise ValueError('--archs: give at least one CNN')
  for arch in archs:
    if arch not in feature_model.ARCHS:
      raise ValueError(f'--archs: unknown {arch!r}; valid: {", ".join(feature_model.ARCHS)}')
  if len(set(archs)) != len(archs):
    raise ValueError(f'--archs: a CNN is listed twice: {", ".join(archs)}')
  if repeats < 1:
    raise ValueError(f'--repeats={repeats}: give 1 or more')
  out_dir = pathlib.Path(base.out_dir)
  results_db = str(results_db or base.results_db or out_dir / 'results.sqlite')
  jobs = []
  for arch in archs:
    for repeat in range(repeats):
      config = dataclasses.replace(
          base, arch=arch, weights=weights.get(arch), name=f'{base.name}_{arch}_rep{repeat}',
          out_dir=str(out_dir / arch / f'rep{repeat}'), results_db=results_db,
          cache_dir=str(out_dir / 'feature_cache' / f'rep{repeat}'))
      validate(config)
      jobs.append(Job(arch, repeat, config))
  return jobs


def _run_keys(config: SimilarityConfig) -> list[tuple[str, int, str]]:
  """(metric, R, config key) of every run row one job writes."""
  return [(metric, r, job_lib.run_key(config, metric, r)[1])
          for r in config.num_references for metric in config.metrics]


def run_comparison(base: SimilarityConfig, archs: Sequence[str], repeats: int,
                   results_db: str | None = None, *, weights: Mapping[str, str] | None = None,
                   cold: bool = True, keep_going: bool = True,
                   run: Callable[[SimilarityConfig], Any] = job_lib.run_similarity,
                   log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Runs every job of the comparison not yet complete in the store.

  Args:
    base, archs, repeats, weights, results_db: as for :func:`comparison_jobs`.
    cold: drop the programs compiled in this process before each job (the module docstring
      says why); False lets later jobs reuse them (their compile time is then about 0).
    keep_going: a failed job is recorded in the store and the comparison goes on; False
      re-raises.
    run: the function running one job.
    log: where progress lines go.

  Returns:
    Job names by outcome: 'skipped' (complete before), 'done', 'failed'.
  """
  jobs = comparison_jobs(base, archs, repeats=repeats, weights=weights, results_db=results_db)
  store = store_lib.ResultsStore(jobs[0].config.results_db)
  outcome: dict[str, list[str]] = {'skipped': [], 'done': [], 'failed': []}
  for i, job in enumerate(jobs):
    name = job.config.name
    if all(store.completed('similarity', key) is not None for _, _, key in _run_keys(job.config)):
      outcome['skipped'].append(name)
      continue
    log(f'[{i + 1}/{len(jobs)}] {job.label}, repeat {job.repeat}')
    if cold:
      features_lib.clear_extractors()
      jax.clear_caches()
    try:
      run(job.config)
      outcome['done'].append(name)
    except Exception as error:  # recorded in the store by the job itself
      outcome['failed'].append(name)
      log(f'FAILED {name}: {type(error).__name__}: {error}')
      if not keep_going:
        raise
  log(f'comparison: {len(outcome["done"])} run, {len(outcome["skipped"])} already complete, '
      f'{len(outcome["failed"])} failed')
  return outcome


# Reading back ------------------------------------------------------------------------------------


@dataclasses.dataclass
class StoredRun:
  """One complete (CNN, repeat, metric, R) row of the store with its values.

  Attributes:
    scores: query id -> score name ('auirc', 'precision@1' ...) -> value.
    classes: query id -> the query's class (its target).
    timings: phase ('model_build', 'feature_extraction', 'distance') -> name -> value.
  """
  label: str
  arch: str
  repeat: int
  metric: str
  num_references: int
  run_id: int
  scores: dict[str, dict[str, float]]
  classes: dict[str, str]
  timings: dict[str, dict[str, float]]


def read_comparison(jobs: Sequence[Job]) -> tuple[list[StoredRun], list[str]]:
  """The complete rows of the comparison's jobs, read from their store.

  Returns:
    ``(runs, missing)``: the rows found (the latest complete row of each config key), and the
    store names of the rows not complete in the store.
  """
  runs, missing = [], []
  if not jobs:
    return runs, missing
  store = store_lib.ResultsStore(jobs[0].config.results_db)
  for job in jobs:
    for metric, r, key in _run_keys(job.config):
      run_id = store.completed('similarity', key)
      if run_id is None:
        missing.append(f'{job.config.name}:{metric}:R{r}')
        continue
      scores: dict[str, dict[str, float]] = {}
      for query, name, value in store.values(run_id, 'query'):
        scores.setdefault(query, {})[name] = value
      timings: dict[str, dict[str, float]] = {}
      for phase, name, value in store.values(run_id, 'timing'):
        timings.setdefault(phase, {})[name] = value
      summary = store.run(run_id)['summary'] or {}
      classes = {q: str(c) for q, c in (summary.get('query_classes') or {}).items()}
      runs.append(StoredRun(job.label, job.arch, job.repeat, metric, r, run_id, scores, classes,
                            timings))
  return runs, missing


def score_runs(runs: Sequence[StoredRun]) -> dict[tuple[str, str, int], StoredRun]:
  """(label, metric, R) -> the row of the lowest repeat (scores do not depend on the repeat)."""
  chosen: dict[tuple[str, str, int], StoredRun] = {}
  for run in sorted(runs, key=lambda r: -r.repeat):
    chosen[(run.label, run.metric, run.num_references)] = run
  return chosen


def per_query(run: StoredRun, score: str) -> np.ndarray:
  """The per-query values of one score, in the store's query order (NaN where absent)."""
  return np.asarray([values.get(score, math.nan) for values in run.scores.values()], np.float64)


def timing_values(runs: Sequence[StoredRun], label: str, phase: str, metric: str | None = None,
                  num_references: int | None = None) -> np.ndarray:
  """One timing per repeat (seconds; extraction per 10,000 images), for one CNN.

  Model build and extraction are per job (every row of a repeat holds the same), the distance
  time per (metric, R): give them for 'distance'.
  """
  name = 'seconds_per_10000_images' if phase == 'feature_extraction' else 'seconds'
  by_repeat = {}
  for run in runs:
    if run.label != label or phase not in run.timings:
      continue
    if phase == 'distance' and (run.metric, run.num_references) != (metric, num_references):
      continue
    by_repeat[run.repeat] = run.timings[phase].get(name, math.nan)
  return np.asarray([by_repeat[r] for r in sorted(by_repeat)], np.float64)


def labels_in_order(runs: Sequence[StoredRun]) -> list[str]:
  return list(dict.fromkeys(r.label for r in runs))


def metrics_in_order(runs: Sequence[StoredRun]) -> list[str]:
  return list(dict.fromkeys(r.metric for r in runs))


def references_in_order(runs: Sequence[StoredRun]) -> list[int]:
  return sorted({r.num_references for r in runs})


# Untrained classes -------------------------------------------------------------------------------


def normalise_class(name: str) -> str:
  """Lower case, with runs of separators (space, '_', '-', ',', '/', '.') as one space."""
  return re.sub(r'[\s_\-,/.]+', ' ', name.lower()).strip()


def imagenet_class_names(path: str | pathlib.Path) -> set[str]:
  """The normalised class names of a Keras ``imagenet_class_index.json`` ({"0": [wnid, name]})."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'--imagenet_classes: no such file: {path}')
  try:
    index = json.loads(path.read_text())
    names = {normalise_class(entry[1]) for entry in index.values()}
  except (ValueError, TypeError, IndexError, AttributeError) as error:
    raise ValueError(f'--imagenet_classes: {path} is not a class index like Keras\'s '
                     '(a JSON object {"0": ["n01440764", "tench"], ...})') from error
  return names


def untrained_classes(classes: Sequence[str], *, listed: Sequence[str] = (),
                      imagenet_names: set[str] | None = None) -> list[str]:
  """The classes of the collection that are not among ImageNet's (sorted).

  Args:
    classes: every query class of the comparison.
    listed: the classes given by ``--untrained_classes`` (each must be a class of the data).
    imagenet_names: from :func:`imagenet_class_names`; a class whose normalised name matches
      none of them is untrained.

  Raises:
    ValueError: both or neither source given, or a listed class the data does not have.
  """
  if bool(listed) == (imagenet_names is not None):
    raise ValueError('give one of --untrained_classes and --imagenet_classes')
  known = set(classes)
  if listed:
    unknown = [c for c in listed if c not in known]
    if unknown:
      raise ValueError(f'--untrained_classes: {", ".join(unknown)} not among the query classes '
                       f'({", ".join(sorted(known)[:10])}{" ..." if len(known) > 10 else ""})')
    return sorted(set(listed))
  return sorted(c for c in known if normalise_class(c) not in imagenet_names)
