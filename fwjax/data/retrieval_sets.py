"""Where a similarity run's collection, references and ground truth come from.

Four sources, one shape (:class:`RetrievalSet`): the images to rank, each one's class where known
(the ground truth: an item is relevant to a query when it has the query's class), and the
queries for each reference count R (R reference images fused into one query).

- FID-300 layout (``fid300_dir``, or the synthetic set in that layout): the references of the
  database are the collection, each one its own class; the crime-scene probes are the queries,
  their class the reference they were made by. With R > 1, the probes of one reference are taken R
  at a time (a reference with fewer than R probes gives no query; the count is reported). Probes
  are not collection images, so ``keep_references`` does not apply.
- A folder (``collection_dir``): every image under it. When every image sits in a sub-folder, the
  first sub-folder is its class (an ImageFolder layout: Caltech-256's ``<class>/*.jpg``). Without
  explicit references, each class with more than ``queries_per_class x max(R)`` images gives
  ``queries_per_class`` queries drawn at random (seeded, classes in sorted order); the same
  images are drawn for every R (R = 1 uses the first of the images drawn for the largest R).
- A manifest CSV (``manifest``, fwjax.data.manifest's format): its images, no classes.
- Explicit references (``references``): each file is a query; each folder is one query whose images
  are all fused. A reference inside a class folder of the collection gets that class.

Reference images inside the collection (drawn ones, or explicit ones that lie in it):
``keep_references=True`` (the default, the thesis's setting: its Figure 5.1 shows the reference
image itself at position 1 of a ranking) leaves them in the collection, where they are ranked like
any other item and count as relevant items of their class, so an exact metric finds a query's own
reference at rank 1 and the scores include it. ``keep_references=False`` holds them out: the
collection is what remains, the same for every R. The draw is the same either way.

Class-folder collections as the thesis used them (``collection_dir`` with class sub-folders):

- ``distractor_classes`` (FIRE's ``others``, Caltech-256's ``257.clutter``): their images stay in
  the collection and are ranked, but no query is drawn from them and they are relevant to no
  query (a reference that lies in one gets no class). They are not classes for ``num_classes``.
- ``num_classes`` = N > 0: only the first N other classes in sorted folder-name order are used
  (reproducible, and what a Caltech subset usually means); the images of the other classes are
  not in the collection. Classes are drawn from in that same order, so the queries of the first
  N classes are the ones a run on every class draws for them.
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
  """Images to rank, their classes (or None), and the queries per reference count.

  ``description`` says where the collection came from, what was left out and, when reference
  images lie in the collection, which way they went: "references kept in the collection" or
  "references held out of the collection".
  """
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
  # The folder the path sits in as listed, before links are followed: a class folder of
  # symbolic links (a distractor class linked in from elsewhere) keeps its class. A path spelt
  # differently from the root (relative, or through a link above it) is tried resolved.
  for path_form, root_form in ((path.absolute(), root.absolute()),
                               (path.resolve(), root.resolve())):
    try:
      parts = path_form.relative_to(root_form).parts
    except ValueError:
      continue
    return parts[0] if len(parts) > 1 else None
  return None


def _explicit_queries(references: Sequence[str], root: pathlib.Path | None,
                      targets: set[str]) -> list[Query]:
  """One query per entry; its target is its class folder when that is one of ``targets``."""
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
    if root is not None and targets:
      found = {_class_of(f, root) for f in files}
      target = found.pop() if len(found) == 1 else None
      target = target if target in targets else None  # a distractor or left-out class: none
    queries.append(Query(path.stem if path.is_file() else path.name, tuple(files), target))
  return queries


def _references_note(count: int, keep_references: bool) -> str:
  """What happened to the reference images found in the collection (the description's words)."""
  if not count:
    return 'no reference image in the collection'
  if keep_references:
    return 'references kept in the collection (ranked, relevant to their class)'
  return 'references held out of the collection'


def _select_classes(items: list[pathlib.Path], classes: list[str] | None, num_classes: int,
                    distractor_classes: Sequence[str]
                    ) -> tuple[list[pathlib.Path], list[str] | None, set[str], str]:
  """``--num_classes`` and ``--distractor_classes`` applied to a class-folder collection.

  Returns:
    (items, classes, the classes queries can have, what the description adds).
  """
  if classes is None:
    if num_classes or distractor_classes:
      flag = '--num_classes' if num_classes else '--distractor_classes'
      raise ValueError(f'{flag} needs a --collection_dir whose images all sit in class '
                       'sub-folders (<class>/*.jpg)')
    return items, classes, set(), ''
  names = sorted(set(classes))
  missing = [c for c in distractor_classes if c not in names]
  if missing:
    raise ValueError(f'--distractor_classes: no class folder {", ".join(missing)} in the '
                     f'collection; its {len(names)} classes: {", ".join(names[:10])}'
                     + (' ...' if len(names) > 10 else ''))
  distractors = set(distractor_classes)
  queried = [c for c in names if c not in distractors]
  if num_classes > len(queried):
    raise ValueError(f'--num_classes={num_classes} but the collection has {len(queried)} '
                     'classes' + (' besides --distractor_classes' if distractors else ''))
  chosen = set(queried[:num_classes] if num_classes else queried)
  keep = [i for i, c in enumerate(classes) if c in chosen or c in distractors]
  note = ''
  if num_classes:
    note += (f'; the first {num_classes} of {len(queried)} classes in sorted order '
             f'({len(items) - len(keep)} images of the others left out)')
  if distractors:
    count = sum(classes[i] in distractors for i in keep)
    note += (f'; distractor classes {", ".join(sorted(distractors))} ({count} images): ranked, '
             'never queried or relevant')
  return [items[i] for i in keep], [classes[i] for i in keep], chosen, note


def load_retrieval_set(work_dir: pathlib.Path, *, collection_dir: str | None = None,
                       manifest_path: str | None = None, fid300_dir: str | None = None,
                       synthetic: int = 0, synthetic_probes_per_model: int = 2,
                       references: Sequence[str] = (), num_references: Sequence[int] = (1,),
                       queries_per_class: int = 1, seed: int = 0,
                       max_pixels: int = images.MAX_PIXELS, keep_references: bool = True,
                       num_classes: int = 0, distractor_classes: Sequence[str] = ()
                       ) -> RetrievalSet:
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
    keep_references: reference images that lie in the collection stay in it, ranked and relevant
      to their class (the thesis); False holds them out. Without effect on FID-300 and the
      synthetic set, whose probes are not collection images.
    num_classes: use only the first N classes (sorted, distractor classes not counted) of a
      class-folder collection; 0 uses all.
    distractor_classes: class folders whose images are ranked but never queried or relevant.

  Returns:
    The retrieval set with its queries for every R in ``num_references``.

  Raises:
    ValueError: no source or several sources, references that do not fit the source, or
      class settings that do not fit the collection (named by their flag).
    FileNotFoundError: a folder, manifest or reference that does not exist.
  """
  sources = {name: value for name, value in (
      ('collection_dir', collection_dir), ('manifest', manifest_path),
      ('fid300_dir', fid300_dir), ('synthetic', synthetic)) if value}
  if len(sources) != 1:
    raise ValueError('give exactly one collection source: --collection_dir, --manifest, '
                     f'--fid300_dir or --synthetic (got {sorted(sources) or "none"})')
  (source, value), = sources.items()
  if num_classes < 0:
    raise ValueError(f'--num_classes={num_classes}: give 0 (every class) or a class count')
  if source != 'collection_dir' and (num_classes or distractor_classes):
    flag = '--num_classes' if num_classes else '--distractor_classes'
    raise ValueError(f'{flag} applies to a class-folder --collection_dir, not to --{source}')
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

  note = ''
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
    root, classes, other, targets, listed = None, None, 0, set(), len(items)
  else:
    root = pathlib.Path(value).expanduser()
    if not root.is_dir():
      raise FileNotFoundError(f'--collection_dir: no such folder: {root}')
    items, other = list_images(root)
    found = [_class_of(p, root) for p in items]
    classes = None if not items or None in found else found
    listed = len(items)
    items, classes, targets, note = _select_classes(items, classes, num_classes,
                                                    distractor_classes)
  description = f'{source} {value}: {len(items)} images' + (
      f' of {listed}' if len(items) != listed else '') + (
      f' ({other} non-image files ignored)' if other else '') + (
          f' ({len(skipped)} manifest rows left out)' if source == 'manifest' and skipped else '')
  description += note

  if source != 'manifest':
    skipped = []
  if references:
    if tuple(num_references) != (1,):
      raise ValueError('--num_references applies to queries drawn from a collection; with '
                       '--references, give a folder to fuse all of its images into one query')
    queries = _explicit_queries(references, root, targets)
    given = {f.resolve() for q in queries for f in q.references}
    inside = [i for i, p in enumerate(items) if p.resolve() in given]
    keep = range(len(items)) if keep_references else sorted(set(range(len(items))) - set(inside))
    return RetrievalSet(items=[items[i] for i in keep],
                        classes=None if classes is None else [classes[i] for i in keep],
                        query_sets={1: queries},
                        description=description + f', {len(inside)} reference image(s) in the '
                        f'collection: {_references_note(len(inside), keep_references)}',
                        skipped=skipped)
  if classes is None:
    raise ValueError(f'--references is required: {description}, and no class sub-folders to '
                     'draw queries from')
  return _sample_queries(items, classes, num_references, queries_per_class, seed, description,
                         targets, keep_references)


def _sample_queries(items: list[pathlib.Path], classes: list[str], num_references: Sequence[int],
                    queries_per_class: int, seed: int, description: str, targets: set[str],
                    keep_references: bool) -> RetrievalSet:
  """The thesis's setting: per class of ``targets``, queries of R images drawn at random.

  The drawn images stay in the collection or are held out (``keep_references``); either way a
  class needs more images than it gives references, so that a query has a relevant item that is
  not one of its own references, and the draw does not depend on ``keep_references``.
  """
  largest = max(num_references)
  per_class = largest * queries_per_class
  rng = np.random.default_rng(seed)
  by_class: dict[str, list[int]] = {}
  for i, c in enumerate(classes):
    if c in targets:
      by_class.setdefault(c, []).append(i)
  held, groups, too_small = set(), [], []
  for c in sorted(by_class):
    members = by_class[c]
    if len(members) <= per_class:  # at least one image besides the references must be found
      too_small.append(c)
      continue
    drawn = [members[j] for j in rng.permutation(len(members))[:per_class]]
    held.update(drawn)
    groups += [(c, g, drawn[g * largest:(g + 1) * largest]) for g in range(queries_per_class)]
  query_sets = {r: [Query(f'{c}-{g}', tuple(items[i] for i in group[:r]), c)
                    for c, g, group in groups] for r in num_references}
  keep = range(len(items)) if keep_references else [i for i in range(len(items)) if i not in held]
  if too_small:
    description += (f'; {len(too_small)} class(es) with <= {per_class} images not queried: '
                    + ', '.join(too_small[:10]) + (' ...' if len(too_small) > 10 else ''))
  return RetrievalSet(items=[items[i] for i in keep], classes=[classes[i] for i in keep],
                      query_sets=query_sets,
                      description=description + f', {len(held)} drawn as references: '
                      + _references_note(len(held), keep_references))
