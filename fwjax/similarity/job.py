"""Similarity ranking of an image collection against reference images (de Bie 2020).

An investigator holds one or a few images of an object of interest and wants a whole collection
ranked by similarity to them, locally, with no trained class for that object. ``run_similarity``
does the whole job: load the collection and the references, extract CNN features (cached by
content, see ``fwjax.similarity.features``), rank with each requested metric and reference
count (fused as in ``fwjax.distances``), score where ground truth is known, time the three
phases the thesis reports, store everything in the SQLite results store and write what a person
reads (CSV, HTML, plots).

Output folder layout::

  flags.txt                       the resolved flags (re-run with --flagfile)
  summary.json                    aggregated scores, timings, skipped images
  skipped.csv                     path, reason of every listed image left out (unusable)
  logs/similarity.log             library logging (JAX ...), kept off the console
  features/collection.npy         collection features (memory-mapped), row i = collection.csv row i
  features/references.npy         reference features, row i = references.csv row i
  collection.csv, references.csv  index, path of every ranked item / reference image
  R<r>/<metric>/<query>.csv       ranked list: rank, path, distance per metric (ordered by <metric>)
  R<r>/pages/<query>.html         the reference(s) and every metric's top results side by side
  index.html                      the run (model, weights, scores, timings) and every query
  cmc.png, inverse_recall.png     curves of every (metric, reference count) with ground truth
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any

import numpy as np

from fwjax import distances
from fwjax import metrics as metrics_lib
from fwjax import runs
from fwjax import store as store_lib
from fwjax.data.retrieval_sets import RetrievalSet, load_retrieval_set
from fwjax.models import feature_model
from fwjax.similarity.config import SimilarityConfig, validate
from fwjax.similarity import features as features_lib
from fwjax.similarity import report as retrieval_report
from fwjax.similarity import spatial

CMC_PERCENTS = (1, 5, 10, 15, 20)
SKIPPED = 'skipped.csv'
# Published CMC on FID-300 (fractions of probes), drawn on the CMC plot of FID-300 runs.
PUBLISHED_FID300 = {
    'Kortylewski et al. 2014': {1: 0.147, 5: 0.307, 10: 0.397, 15: 0.433, 20: 0.467},
    'Kong et al. 2019': {1: 0.727, 5: 0.823},
}


def _rank(queries: np.ndarray, collection: distances.Collection, metric: str, fusion: str,
          k: int) -> tuple[np.ndarray, np.ndarray]:
  """(distances, order), (Q, k or N), best first."""
  if k:
    dist, order = distances.topk(queries, collection, k, metric=metric, fusion=fusion)
  else:
    dist, order = distances.rank(queries, collection, metric=metric, fusion=fusion)
  return np.asarray(dist), np.asarray(order)


def run_similarity(config: SimilarityConfig) -> dict[str, Any]:
  """Ranks, scores, times, stores and reports one similarity configuration.

  A refused run writes no run record (flags.txt, features, rankings, summary, store rows): only
  the feature cache and a synthetic set may have been filled. Images that cannot be used are
  left out, listed in ``skipped.csv`` and counted on the console. Library logging goes to
  ``logs/similarity.log`` in the output folder, not to the console.

  Args:
    config: the run's settings.

  Returns:
    The summary (also written to ``summary.json``).

  Raises:
    ValueError: a bad setting, an empty collection, or ``k`` larger than the collection.
    FileNotFoundError / ReferenceImageError: a reference image that cannot be read.
  """
  with runs.quiet_console(), contextlib.ExitStack() as once_accepted:
    return _run_similarity(config, once_accepted)


def _run_similarity(config: SimilarityConfig, once_accepted: contextlib.ExitStack
                    ) -> dict[str, Any]:
  validate(config)
  out_dir = pathlib.Path(config.out_dir)
  retrieval = _load_retrieval_set(config, out_dir)
  timings: dict[str, dict[str, float]] = {}
  model, extractor, timings['model_build'] = _build_extractor(config)
  maps = None
  if config.matcher == 'mcncc':
    refs, items, maps, timings['feature_extraction'] = _extract_maps(config, model, retrieval)
  else:
    refs, items, timings['feature_extraction'] = _extract(config, out_dir, model, extractor,
                                                          retrieval)
  # Accepted: the run's own files are written from here on.
  once_accepted.enter_context(runs.log_file(out_dir / 'logs' / runs.log_name('similarity')))
  _write_run_files(config, out_dir, retrieval, refs, items)
  if maps is not None:  # one ranking, by MCNCC; flags.txt keeps the flags as given
    config = dataclasses.replace(config, metrics=('mcncc',))
  _write_indexes(out_dir, items, refs)
  item_classes = None
  if retrieval.classes is not None:
    listed = {path: i for i, path in enumerate(retrieval.items)}
    item_classes = np.asarray([retrieval.classes[listed[p]] for p in items.paths])
  # metrics.retrieval_scores leaves out precision@k with k > N: said here, not silently.
  left_out = [f'precision@{k} left out: collection has {len(items.paths)} items'
              for k in config.precision_at if item_classes is not None and k > len(items.paths)]
  for line in left_out:
    print(line, flush=True)
  # Prepared once: every metric and reference count ranks against the same statistics.
  collection = distances.Collection(items.features)
  store = store_lib.ResultsStore(config.results_db or out_dir / 'results.sqlite')
  features_text = (f'{model.identity} stage={config.stage} {config.height}x{config.width}'
                   f' {config.composition} {config.policy} colour={config.colour}')
  if maps is not None:
    features_text = (f'{model.identity} stage={config.stage} maps at scale '
                     f'{config.match_scale:g} colour={config.colour} mcncc margin='
                     f'{config.margin:g} flip={config.flip} rotations={config.rotations} '
                     f'shortlist={config.shortlist}')
  results, curves, rows = [], {}, []
  for num_refs in config.num_references:
    entries, query_rows = _rank_and_report(config, out_dir, store, retrieval, refs, items,
                                           collection, item_classes, num_refs, timings,
                                           features_text, maps)
    rows += query_rows
    for entry in entries:
      if '_curves' in entry:
        metric, r = entry['metric'], entry['num_references']
        curves[f'{metric}, {r} ref' + ('s' if r > 1 else '')] = entry.pop('_curves')
    results += entries
  if curves:
    published = PUBLISHED_FID300 if retrieval.is_fid300 else None
    retrieval_report.plot_cmc(out_dir / 'cmc.png', {k: c for k, (c, _) in curves.items()},
                              published=published)
    retrieval_report.plot_inverse_recall(out_dir / 'inverse_recall.png',
                                         {k: ir for k, (_, ir) in curves.items()})
  summary = dict(results[0])
  summary.update(features=features_text, num_items=len(items.paths), timings=timings,
                 skipped=[{'path': str(p), 'reason': r} for p, r in _skipped(retrieval, items)],
                 collection=retrieval.description, results=results,
                 index=str(out_dir / retrieval_report.INDEX))
  if left_out:
    summary['left_out'] = left_out
  runs.write_atomic(out_dir / 'summary.json', json.dumps(summary, indent=1, default=str))
  retrieval_report.write_index(config, out_dir, summary, rows)
  return summary


def console_summary(summary: dict[str, Any]) -> str:
  """What a run prints when it ends: a line per (metric, reference count), then the index.

  Each line has the queries ranked and, where they were scored, precision@k, inverse recall@q,
  AUIRC and CMC@1%.

  Args:
    summary: what :func:`run_similarity` returns.

  Returns:
    The text (lines joined by newlines, no final newline).
  """
  lines = [f'{summary["features"]}: {summary["num_items"]} items']
  width = max(len(e['metric']) for e in summary['results'])
  for entry in summary['results']:
    r = entry['num_references']
    line = (f'  {entry["metric"]:<{width}} R={r}: {entry["num_queries"]} quer'
            + ('y' if entry['num_queries'] == 1 else 'ies'))
    scores = [f'{name.replace("inverse_recall", "IR").replace("precision", "P")} {value:.3f}'
              for name, value in entry.items()
              if name.startswith(('precision@', 'inverse_recall@'))]
    if 'auirc' in entry:
      scores.append(f'AUIRC {entry["auirc"]:.3f}')
    if 'cmc@1' in entry:
      scores.append(f'CMC@1% {entry["cmc@1"]:.3f}')
    line += (' scored: ' + ', '.join(scores)) if scores else ', not scored (no ground truth)'
    lines.append(line)
  lines.append(f'index: {summary["index"]}')
  return '\n'.join(lines)


def _skipped(retrieval: RetrievalSet, items: features_lib.FeatureSet
             ) -> list[tuple[pathlib.Path, str]]:
  """Every listed collection image left out: unusable manifest rows, then unreadable files."""
  return list(retrieval.skipped) + list(items.skipped)


def _write_run_files(config: SimilarityConfig, out_dir: pathlib.Path, retrieval: RetrievalSet,
                     refs: features_lib.FeatureSet, items: features_lib.FeatureSet) -> None:
  """flags.txt, the features and skipped.csv of an accepted run; says what was skipped."""
  runs.write_atomic(out_dir / 'flags.txt', runs.flags_text(config))
  features = out_dir / 'features'
  features.mkdir(parents=True, exist_ok=True)
  with runs.atomic_open(features / 'references.npy', 'wb') as f:
    np.save(f, refs.features)
  partial = _partial_collection(out_dir)
  if partial.exists():
    # The collection's features were streamed to a partial file: renamed, and mapped again
    # under the new name (distances.Collection reads a memory map's file by its name).
    os.replace(partial, features / 'collection.npy')
    items.features = np.load(features / 'collection.npy', mmap_mode='r')
  else:  # --matcher=mcncc: the pooled maps, computed in memory
    with runs.atomic_open(features / 'collection.npy', 'wb') as f:
      np.save(f, items.features)
  skipped = _skipped(retrieval, items)
  with runs.atomic_open(out_dir / SKIPPED, newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'reason'])
    writer.writerows((str(p), r) for p, r in skipped)
  if skipped:
    listed = len(skipped) + len(items.paths)
    print(f'{len(skipped)} of {listed} collection images skipped (unusable), listed in '
          f'{out_dir / SKIPPED}', flush=True)


def _load_retrieval_set(config: SimilarityConfig, out_dir: pathlib.Path) -> RetrievalSet:
  """The retrieval set, with the cheap checks done before any model is built."""
  retrieval = load_retrieval_set(
      out_dir, collection_dir=config.collection_dir, manifest_path=config.manifest,
      fid300_dir=config.fid300_dir, synthetic=config.synthetic,
      synthetic_probes_per_model=config.synthetic_probes_per_model,
      references=config.references, num_references=config.num_references,
      queries_per_class=config.queries_per_class, seed=config.seed, max_pixels=config.max_pixels,
      keep_references=config.keep_references, num_classes=config.num_classes,
      distractor_classes=config.distractor_classes)
  if not retrieval.items:
    raise ValueError(f'the collection is empty: {retrieval.description}')
  if config.k > len(retrieval.items):
    raise ValueError(f'--k={config.k} is larger than the collection '
                     f'({len(retrieval.items)} images)')
  for num_refs in config.num_references:
    if not retrieval.queries(num_refs):
      raise ValueError(f'no query has {num_refs} reference images ({retrieval.description})')
  return retrieval


def _build_extractor(config: SimilarityConfig
                     ) -> tuple[feature_model.FeatureModel, features_lib.Extractor,
                                dict[str, float]]:
  """The model and its compiled extractor, with the thesis's model-build timing."""
  start = time.perf_counter()
  model = feature_model.build_model(config.weights, arch=config.arch, width=config.random_width,
                                    seed=config.seed)
  loaded = time.perf_counter()
  if config.matcher == 'mcncc':  # maps are computed per image size (spatial.extract_maps)
    return model, None, {'seconds': loaded - start, 'load_seconds': loaded - start,
                         'compile_seconds': 0.0}
  # Compiled once per process for these weights and shapes (a second run in a notebook or grid
  # reports no compile time).
  extractor = features_lib.cached_extractor(model, config.stage, config.height, config.width,
                                            config.batch_size)
  return model, extractor, {'seconds': time.perf_counter() - start,
                            'load_seconds': loaded - start,
                            'compile_seconds': time.perf_counter() - loaded}


def _partial_collection(out_dir: pathlib.Path) -> pathlib.Path:
  # One name, not one per process: a killed run's partial file is overwritten by the next run.
  return out_dir / '.collection.npy.partial'


def _extract(config: SimilarityConfig, out_dir: pathlib.Path, model: feature_model.FeatureModel,
             extractor: features_lib.Extractor, retrieval: RetrievalSet
             ) -> tuple[features_lib.FeatureSet, features_lib.FeatureSet, dict[str, float]]:
  """Features of the references and of the collection (from the cache where it has them).

  Nothing of the run's record is written yet: the references' features stay in memory and the
  collection's go to a partial file, renamed by :func:`_write_run_files` once the run is
  accepted (removed if it is refused).
  """
  feature_args = dict(stage=config.stage, height=config.height, width=config.width,
                      composition=config.composition, policy=config.policy,
                      batch_size=config.batch_size, extractor=extractor,
                      cache_dir=config.cache_dir or out_dir / 'feature_cache',
                      progress=config.progress, colour=config.colour,
                      max_pixels=config.max_pixels)
  ref_paths = retrieval.reference_paths()
  refs = features_lib.extract_features(model, ref_paths, out_path=None, **feature_args)
  if refs.skipped:
    path, reason = refs.skipped[0]
    raise ReferenceImageError(f'reference image cannot be read: {path}: {reason} '
                              f'({len(refs.skipped)} unreadable reference(s) in all)')
  partial = _partial_collection(out_dir)
  try:
    items = features_lib.extract_features(model, retrieval.items, out_path=partial,
                                          **feature_args)
    if not items.paths:
      raise ValueError(f'the collection is empty: {len(retrieval.items)} image(s) listed, '
                       f'{len(items.skipped)} unreadable' + (
                           f' (first: {items.skipped[0][0]}: {items.skipped[0][1]})'
                           if items.skipped else ''))
    if config.k > len(items.paths):
      raise ValueError(f'--k={config.k} is larger than the collection '
                       f'({len(items.paths)} readable images)')
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  extracted = refs.num_extracted + items.num_extracted
  seconds = refs.extract_seconds + items.extract_seconds
  return refs, items, {
      'seconds': seconds, 'images_extracted': extracted,
      'images_from_cache': len(ref_paths) + len(items.paths) - extracted,
      'seconds_per_10000_images': seconds / extracted * 1e4 if extracted else math.nan}


def _extract_maps(config: SimilarityConfig, model: feature_model.FeatureModel,
                  retrieval: RetrievalSet
                  ) -> tuple[features_lib.FeatureSet, features_lib.FeatureSet,
                             tuple[spatial.MapSet, spatial.MapSet], dict[str, float]]:
  """Feature maps of the references and the collection, and their pooled features."""
  args = dict(stage=config.stage, scale=config.match_scale, composition=config.composition,
              colour=config.colour, batch_size=config.batch_size, progress=config.progress,
              max_pixels=config.max_pixels)
  ref_maps = spatial.extract_maps(model, retrieval.reference_paths(), **args)
  if ref_maps.skipped:
    path, reason = ref_maps.skipped[0]
    raise ReferenceImageError(f'reference image cannot be read: {path}: {reason} '
                              f'({len(ref_maps.skipped)} unreadable reference(s) in all)')
  item_maps = spatial.extract_maps(model, retrieval.items, **args)
  if not item_maps.paths:
    raise ValueError(f'the collection is empty: {len(retrieval.items)} image(s) listed, '
                     f'{len(item_maps.skipped)} unreadable')
  sets = [features_lib.FeatureSet(m.pooled(), m.paths, m.skipped, len(m.paths), m.seconds)
          for m in (ref_maps, item_maps)]
  count = len(ref_maps.paths) + len(item_maps.paths)
  seconds = ref_maps.seconds + item_maps.seconds
  return sets[0], sets[1], (ref_maps, item_maps), {
      'seconds': seconds, 'images_extracted': count, 'images_from_cache': 0,
      'seconds_per_10000_images': seconds / count * 1e4}


def _write_indexes(out_dir: pathlib.Path, items: features_lib.FeatureSet,
                   refs: features_lib.FeatureSet) -> None:
  """collection.csv and references.csv: row i names the image of features/<name>.npy row i."""
  for name, paths in (('collection', items.paths), ('references', refs.paths)):
    with open(out_dir / f'{name}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['index', 'path'])
      writer.writerows((i, str(p)) for i, p in enumerate(paths))


def _rank_and_report(config: SimilarityConfig, out_dir: pathlib.Path,
                     store: store_lib.ResultsStore, retrieval: RetrievalSet,
                     refs: features_lib.FeatureSet, items: features_lib.FeatureSet,
                     collection: distances.Collection, item_classes: np.ndarray | None,
                     num_refs: int, timings: dict[str, dict[str, float]],
                     features_text: str, maps: tuple[spatial.MapSet, spatial.MapSet] | None = None
                     ) -> tuple[list[dict[str, Any]], list[Any]]:
  """Ranks the queries of one reference count with every metric; writes their pages.

  Returns a result entry per metric and the index rows of the queries' pages.

  With ``maps`` (``--matcher=mcncc``: the references' and the collection's feature maps) the
  one metric is ``'mcncc'``, its distance ``1 - score``.
  """
  queries = retrieval.queries(num_refs)
  ref_row = {path: i for i, path in enumerate(refs.paths)}
  query_feats = np.stack([refs.features[[ref_row[p] for p in q.references]] for q in queries])
  query_feats = query_feats[:, 0] if num_refs == 1 else query_feats
  # Scores need every relevant item's rank, so with ground truth the full order is computed
  # and --k only shortens the lists written; without it, --k ranks only the top k (cheaper).
  top = 0 if item_classes is not None else config.k
  ranked = {}
  first_call = {}
  for metric in config.metrics:
    start = time.perf_counter()
    if maps is None:
      # The thesis times the distance computation; the first call of a (metric, query shape)
      # also compiles, which on a small collection dwarfs the computation. The ranking is run
      # once to compile and timed on a second call; the first call's time is reported beside it.
      _rank(query_feats, collection, metric, config.fusion, top)
      first_call[metric] = time.perf_counter() - start
      start = time.perf_counter()
      ranked[metric] = _rank(query_feats, collection, metric, config.fusion, top)
    else:
      ref_maps, item_maps = maps
      map_row = {path: i for i, path in enumerate(ref_maps.paths)}
      query_maps = [[ref_maps.maps[map_row[p]] for p in q.references] for q in queries]
      pooled = query_feats if num_refs == 1 else query_feats.mean(axis=1)
      ranked[metric] = spatial.rank(query_maps, item_maps, margin=config.margin,
                                    flip=config.flip, rotations=config.rotations,
                                    fusion=config.fusion, shortlist=config.shortlist,
                                    pooled_queries=pooled, progress=config.progress)
    ranked[metric] += (time.perf_counter() - start,)
  entries = [_report_one(config, out_dir, store, retrieval, queries, query_feats, items,
                         item_classes, ranked, metric, num_refs, timings, features_text,
                         first_call.get(metric))
             for metric in config.metrics]
  query_scores = {e['metric']: e.pop('_query_scores', {}) for e in entries}
  rows = retrieval_report.write_query_pages(config, out_dir, queries, items, item_classes, ranked,
                                            query_scores, num_refs)
  return entries, rows


def run_key(config: SimilarityConfig, metric: str, num_refs: int) -> tuple[dict[str, Any], str]:
  """The stored flags and the config key of one (metric, reference count) run of ``config``.

  Where a run writes (``out_dir``, ``results_db``, ``cache_dir``), ``progress`` and the list of
  ``metrics`` do not change its result, so they are not part of the key.

  Returns:
    ``(flags, key)``: the keyed fields (with ``metric`` and ``num_references``) and their sha256.
  """
  key_fields = dict(dataclasses.asdict(config), metric=metric, num_references=num_refs)
  for unkeyed in ('out_dir', 'progress', 'results_db', 'cache_dir', 'metrics'):
    key_fields.pop(unkeyed)
  digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True, default=str).encode())
  return key_fields, digest.hexdigest()


class ReferenceImageError(ValueError):
  """A reference image cannot be read: the run stops, naming it."""


def _report_one(config: SimilarityConfig, out_dir: pathlib.Path, store: Any,
                collection: RetrievalSet, queries: list[Any], query_feats: np.ndarray,
                items: features_lib.FeatureSet, item_classes: np.ndarray | None,
                ranked: dict[str, tuple[np.ndarray, np.ndarray, float]], metric: str,
                num_refs: int, timings: dict[str, dict[str, float]],
                features_text: str, first_call_seconds: float | None = None) -> dict[str, Any]:
  """Scores, stores and writes the outputs of one (metric, reference count).

  ``first_call_seconds``: the time of the ranking's first, compiling call (global matcher);
  ``ranked``'s seconds are those of a second call, the computation alone.
  """
  dist, order, seconds = ranked[metric]
  num_items = len(items.paths)
  entry: dict[str, Any] = {'metric': metric, 'num_references': num_refs,
                           'fusion': config.fusion, 'num_queries': len(queries),
                           'distance_seconds': seconds}
  if first_call_seconds is not None:
    entry['distance_first_call_seconds'] = first_call_seconds
  key_fields, config_key = run_key(config, metric, num_refs)
  run_args = dict(kind='similarity', name=f'{config.name}:{metric}:R{num_refs}',
                  flags=key_fields, config_key=config_key, output_dir=str(out_dir))
  # A re-run after an interruption continues the interrupted run's row instead of adding one.
  run_id = store.continue_run(**run_args) or store.start_run(**run_args)
  entry['skipped_images'] = len(_skipped(collection, items))
  try:
    scored = [i for i, q in enumerate(queries) if q.target is not None]
    per_query: dict[str, np.ndarray] = {}
    if scored and item_classes is not None:
      targets = np.asarray([queries[i].target for i in scored])
      relevance = item_classes[order[scored]] == targets[:, None]
      has_match = relevance.any(axis=1)
      scored = [i for i, ok in zip(scored, has_match) if ok]
      relevance = relevance[has_match]
      if scored:
        per_query, aggregated = metrics_lib.retrieval_scores(relevance, config.precision_at,
                                                             config.recall_levels)
        entry.update(aggregated)
        entry['num_queries'] = len(scored)
        entry['unscored_queries'] = len(queries) - len(scored)
        entry['cmc'] = {f'{p:g}': aggregated[f'cmc@{p:g}'] for p in CMC_PERCENTS}
        levels = np.linspace(0.01, 1.0, 100)
        mean_ir = [float(np.mean(metrics_lib.inverse_recall_at_q(relevance, q))) for q in levels]
        first = metrics_lib.first_relevant_rank(relevance)
        entry['_curves'] = (metrics_lib.cmc_curve(first, num_items),
                            (levels, np.asarray(mean_ir)))
        store.log_metrics(run_id, 0, {n: v for n, v in entry.items() if isinstance(v, float)})
    entry['_query_scores'] = {}
    for row, i in enumerate(scored):
      entry['_query_scores'][i] = {n: float(v[row]) for n, v in per_query.items()}
      store.log_values(run_id, 'query', queries[i].id, entry['_query_scores'][i])
    for phase, values in timings.items():
      store.log_values(run_id, 'timing', phase, values)
    distance = {'seconds': seconds}
    if first_call_seconds is not None:
      distance['first_call_seconds'] = first_call_seconds
    store.log_values(run_id, 'timing', 'distance', distance)
    retrieval_report.write_rankings(config, out_dir, queries, query_feats, items, item_classes,
                                    ranked, metric, num_refs)
    store.log_artifact(run_id, f'rankings_{metric}_R{num_refs}', str(out_dir / f'R{num_refs}'))
    store.log_artifact(run_id, 'skipped', str(out_dir / SKIPPED))
    summary = {n: v for n, v in entry.items() if not n.startswith('_')}
    # Each scored query's class, so per-class scores can be read back from the store alone.
    query_classes = {queries[i].id: queries[i].target for i in scored}
    store.finish_run(run_id, dict(summary, features=features_text, query_classes=query_classes))
  except KeyboardInterrupt:
    store.interrupt_run(run_id, 'interrupted (KeyboardInterrupt); run the same command again')
    raise
  except Exception as error:
    store.fail_run(run_id, f'{type(error).__name__}: {error}')
    raise
  return entry


