"""Where a similarity run's collection, references and ground truth come from.

Four sources, one shape (:class:`RetrievalSet`): the images to rank, each one's class where known
(the ground truth: an item is relevant to a query when it has the query's class), and the
queries for each reference count R (R reference images fused into one query).

- FID-300 layout (``fid300_dir``, or the synthetic set in that layout): the references of the
  database are the collection, each one its own class; the crime-scene probes are the queries,
  their class the reference they were made by. With R > 1, the probes of one reference are taken R
  at a time (a reference with fewer than R probes gives no query; the count is reported).
- A folder (``collection_dir``): every image under it. When every image sits in a sub-folder, the
  first sub-folder is its class (an ImageFolder layout). Without explicit references, each class
  with enough images gives ``queries_per_class`` queries drawn at random (seeded); the drawn
  images are held out of the collection, the same set for every R so that scores across reference
  counts rank the same collection (the thesis's setting).
- A manifest CSV (``manifest``, fwjax.data.manifest's format): its images, no classes.
- Explicit references (``references``): each file is a query; each folder is one query whose images
  are all fused. A reference inside a class folder of the collection gets that class (and is taken
  out of the collection, so it is not found as its own match).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from fwjax.data import fid300, images, manifest
from fwjax.data import synthetic as synthetic_lib

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.gif', '.webp', '.pgm')


@dataclasses.dataclass(frozen=True)
class Query:
  """One ranking request: reference images of one object, and its class when known."""
  id: str
  references: tuple[pathlib.Path, ...]
  target: str | None = None


@dataclasses.dataclass
class RetrievalSet:
  """Images to rank, their classes (or None), and the queries per reference count."""
  items: list[pathlib.Path]
  classes: list[str] | None
  query_sets: dict[int, list[Query]]
  description: str
  is_fid300: bool = False
  skipped: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
  """Listed images left out before extraction (manifest rows that cannot be used), with why."""

  def queries(self, num_references: int) -> list[Query]:
    return self.query_sets[num_references]

  def reference_paths(self) -> list[pathlib.Path]:
    """Every reference image of every query, once, in first-use order."""
    seen: dict[pathlib.Path, None] = {}
    for queries in self.query_sets.values():
      for query in queries:
        seen.update(dict.fromkeys(query.references))
    return list(seen)


def list_images(folder: pathlib.Path) -> tuple[list[pathlib.Path], int]:
  """Image files under ``folder`` (recursive, sorted) and the count of other files left out."""
  files = sorted(p for p in folder.rglob('*') if p.is_file() and not p.name.startswith('.'))
  images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
  return images, len(files) - len(images)


def _group_probes(probes: Sequence[tuple[str, pathlib.Path, str]],
                  num_references: Sequence[int]) -> tuple[dict[int, list[Query]], dict[int, int]]:
  """Queries of R probes of the same reference; returns (queries per R, probes unused per R)."""
  by_target: dict[str, list[tuple[str, pathlib.Path]]] = {}
  for probe_id, path, target in probes:
    by_target.setdefault(target, []).append((probe_id, path))
  query_sets, unused = {}, {}
  for r in num_references:
    queries = []
    for target, members in by_target.items():
      for start in range(0, len(members) - r + 1, r):
        group = members[start:start + r]
        queries.append(Query('+'.join(i for i, _ in group), tuple(p for _, p in group), target))
    query_sets[r] = queries
    unused[r] = len(probes) - r * len(queries)
  return query_sets, unused


def _fid300(root: pathlib.Path, num_references: Sequence[int], name: str) -> RetrievalSet:
  data = fid300.load_fid300(root)
  # Queries are named by their file (00001 for tracks_cropped/00001.jpg), classes by reference id.
  probes = [(pathlib.Path(path).stem, pathlib.Path(path), str(data.probe_to_reference[pid]))
            for pid, path in zip(data.probe_ids, data.probes)]
  query_sets, unused = _group_probes(probes, num_references)
  left = ''.join(f'; R={r}: {n} probe(s) not in a full group of {r}'
                 for r, n in unused.items() if n)
  return RetrievalSet(items=[pathlib.Path(p) for p in data.references],
                    classes=[str(i) for i in data.reference_ids], query_sets=query_sets,
                    description=f'{name} {root}: {len(data.references)} references, '
                                f'{len(probes)} probes{left}',
                    is_fid300=name == 'FID-300')


def _class_of(path: pathlib.Path, root: pathlib.Path) -> str | None:
  try:
    parts = path.resolve().relative_to(root.resolve()).parts
  except ValueError:
    return None
  return parts[0] if len(parts) > 1 else None


def _explicit_queries(references: Sequence[str], root: pathlib.Path | None,
                      classes_known: bool) -> list[Query]:
  queries = []
  for entry in references:
    path = pathlib.Path(entry).expanduser()
    if path.is_dir():
      files, _ = list_images(path)
      if not files:
        raise FileNotFoundError(f'--references: folder {path} holds no images')
    elif path.is_file():
      files = [path]
    else:
      raise FileNotFoundError(f'--references: reference image not found: {path}')
    target = None
    if root is not None and classes_known:
      found = {_class_of(f, root) for f in files}
      target = found.pop() if len(found) == 1 else None
    queries.append(Query(path.stem if path.is_file() else path.name, tuple(files), target))
  return queries


def load_retrieval_set(work_dir: pathlib.Path, *, collection_dir: str | None = None,
                       manifest_path: str | None = None, fid300_dir: str | None = None,
                       synthetic: int = 0, synthetic_probes_per_model: int = 2,
                       references: Sequence[str] = (), num_references: Sequence[int] = (1,),
                       queries_per_class: int = 1, seed: int = 0,
                       max_pixels: int = images.MAX_PIXELS) -> RetrievalSet:
  """Builds the retrieval set named by a similarity run's settings (the flags of the same names).

  Args:
    work_dir: the run's output folder (the synthetic set is generated under it).
    collection_dir, manifest_path, fid300_dir, synthetic: the source; exactly one is set
      (``manifest_path`` is the ``--manifest`` flag).
    synthetic_probes_per_model: probes per shoe model of the synthetic set.
    references: reference files or folders (each one query).
    num_references: reference counts R to build queries for.
    queries_per_class: queries drawn per class of a class-folder collection.
    seed: seed of the drawing and of the synthetic set.
    max_pixels: a manifest's images with more pixels than this are left out (listed in
      ``skipped``).

  Returns:
    The retrieval set with its queries for every R in ``num_references``.

  Raises:
    ValueError: no source or several sources, or references that do not fit the source.
    FileNotFoundError: a folder, manifest or reference that does not exist.
  """
  sources = {name: value for name, value in (
      ('collection_dir', collection_dir), ('manifest', manifest_path),
      ('fid300_dir', fid300_dir), ('synthetic', synthetic)) if value}
  if len(sources) != 1:
    raise ValueError('give exactly one collection source: --collection_dir, --manifest, '
                     f'--fid300_dir or --synthetic (got {sorted(sources) or "none"})')
  (source, value), = sources.items()
  if source in ('fid300_dir', 'synthetic'):
    if references:
      raise ValueError(f'--references cannot be combined with --{source}: its probes are the '
                       'references (every probe is ranked against the collection)')
    if source == 'fid300_dir':
      root = pathlib.Path(value).expanduser()
      if not root.is_dir():
        raise FileNotFoundError(f'--fid300_dir: no such folder: {root}')
      return _fid300(root, num_references, 'FID-300')
    root = synthetic_lib.make_retrieval_set(work_dir / 'synthetic_retrieval', int(value),
                                            synthetic_probes_per_model, seed=seed)
    return _fid300(pathlib.Path(root), num_references, 'synthetic retrieval set')

  if source == 'manifest':
    csv_path = pathlib.Path(value).expanduser()
    if not csv_path.is_file():
      raise FileNotFoundError(f'--manifest: no such file: {csv_path}')
    # Rows the manifest reader refuses are returned in ``skipped`` (the job lists them with the
    # images that fail to decode later); nothing is written here. The labels are not used to
    # rank, so an empty labels field is no error.
    scan = manifest.scan_manifest(csv_path, on_bad_image='skip', max_pixels=max_pixels,
                                  allow_empty_labels=True)
    items = [pathlib.Path(e.path) for e in scan.examples]
    skipped = [(csv_path.parent / s.path, f'manifest row {s.row}: {s.reason}')
               for s in scan.skipped]
    root, classes, other = None, None, 0
  else:
    root = pathlib.Path(value).expanduser()
    if not root.is_dir():
      raise FileNotFoundError(f'--collection_dir: no such folder: {root}')
    items, other = list_images(root)
    found = [_class_of(p, root) for p in items]
    classes = None if not items or None in found else found
  description = f'{source} {value}: {len(items)} images' + (
      f' ({other} non-image files ignored)' if other else '') + (
          f' ({len(skipped)} manifest rows left out)' if source == 'manifest' and skipped else '')

  if source != 'manifest':
    skipped = []
  if references:
    if tuple(num_references) != (1,):
      raise ValueError('--num_references applies to queries drawn from a collection; with '
                       '--references, give a folder to fuse all of its images into one query')
    queries = _explicit_queries(references, root, classes is not None)
    held = {f.resolve() for q in queries for f in q.references}
    keep = [i for i, p in enumerate(items) if p.resolve() not in held]
    return RetrievalSet(items=[items[i] for i in keep],
                        classes=None if classes is None else [classes[i] for i in keep],
                        query_sets={1: queries},
                        description=description + f', {len(items) - len(keep)} reference(s) '
                                                  'taken out of the collection', skipped=skipped)
  if classes is None:
    raise ValueError(f'--references is required: {description}, and no class sub-folders to '
                     'draw queries from')
  return _sample_queries(items, classes, num_references, queries_per_class, seed, description)


def _sample_queries(items: list[pathlib.Path], classes: list[str], num_references: Sequence[int],
                    queries_per_class: int, seed: int, description: str) -> RetrievalSet:
  """The thesis's setting: per class, queries of R images drawn and held out of the collection."""
  largest = max(num_references)
  per_class = largest * queries_per_class
  rng = np.random.default_rng(seed)
  by_class: dict[str, list[int]] = {}
  for i, c in enumerate(classes):
    by_class.setdefault(c, []).append(i)
  held, groups, too_small = set(), [], []
  for c in sorted(by_class):
    members = by_class[c]
    if len(members) <= per_class:  # at least one image must stay to be found
      too_small.append(c)
      continue
    drawn = [members[j] for j in rng.permutation(len(members))[:per_class]]
    held.update(drawn)
    groups += [(c, g, drawn[g * largest:(g + 1) * largest]) for g in range(queries_per_class)]
  query_sets = {r: [Query(f'{c}-{g}', tuple(items[i] for i in group[:r]), c)
                    for c, g, group in groups] for r in num_references}
  keep = [i for i in range(len(items)) if i not in held]
  if too_small:
    description += (f'; {len(too_small)} class(es) with <= {per_class} images not queried: '
                    + ', '.join(too_small[:10]) + (' ...' if len(too_small) > 10 else ''))
  return RetrievalSet(items=[items[i] for i in keep], classes=[classes[i] for i in keep],
                      query_sets=query_sets,
                      description=description + f', {len(held)} drawn as references')
