"""TensorFlow Datasets builders for fwjax's manifest folders and for FID-300.

Needs ``pip install 'fwjax[tfds]'`` (TensorFlow Datasets; TensorFlow itself is not needed).

* :class:`FootwearManifest` (TFDS name ``footwear_manifest``): a manifest folder, i.e. greyscale
  images plus a CSV ``path,labels[,split]`` of NFRC codes (:mod:`fwjax.data.manifest`).
  Splits ``train`` and ``validation``.
* :class:`Fid300` (TFDS name ``fid300``): FID-300 in the database's own layout
  (:mod:`fwjax.data.fid300`). Splits ``references`` and ``probes``.

Both read their source from TFDS's manual-download folder (``manual_dir``): nothing is
downloaded. They write ``array_record`` files by default, read back with
:meth:`~tfds.core.DatasetBuilder.as_data_source` (indexable, with ``len``; examples are dicts of
NumPy arrays, text fields as ``bytes``). Neither step needs TensorFlow.

Building and loading a manifest folder (``/data/nfrc/manifest.csv`` plus its images)::

  import tensorflow_datasets as tfds
  from fwjax.data import tfds_builders

  builder = tfds_builders.FootwearManifest(data_dir='~/tensorflow_datasets')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir='/data/nfrc'))
  train = builder.as_data_source()['train']
  example = train[0]  # {'image': (H, W, 1) uint8, 'labels': (17,) uint8, 'path': bytes}

A CSV with another name, another split or a second manifest dataset under the same ``data_dir``
takes its own :class:`ManifestConfig` (its ``name`` keeps the built datasets apart)::

  config = tfds_builders.ManifestConfig(name='nfrc_full', csv_name='all.csv', seed=3)
  builder = tfds_builders.FootwearManifest(data_dir=..., config=config)

Building and loading FID-300 (``/data/FID-300`` holding ``references/``, ``tracks_cropped/``
and ``label_table.csv``)::

  builder = tfds_builders.Fid300(data_dir='~/tensorflow_datasets')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir='/data/FID-300'))
  sources = builder.as_data_source()
  probe = sources['probes'][0]  # {'image', 'id', 'reference_id', 'filename'}

Once built, ``tfds.builder_from_directory(path)`` (or the classes above with the same
``data_dir``) reopens a dataset without the source folder.

``as_dataset`` (``tf.data``) cannot read ``array_record`` (TFDS raises NotImplementedError). For
a ``tf.data`` pipeline install TensorFlow and build with ``file_format='tfrecord'``; such a
dataset is read with ``as_dataset`` only, not ``as_data_source``::

  builder = tfds_builders.FootwearManifest(data_dir=..., file_format='tfrecord')
  builder.download_and_prepare(download_config=...)
  dataset = builder.as_dataset(split='train')

Images are decoded once with :func:`fwjax.data.images.load_greyscale` (the same refusals and
decompression-bomb guard as the rest of fwjax) and stored as lossless PNG, so what TFDS returns
is pixel for pixel what fwjax's own loaders see, JPEG probes included.

Nothing in fwjax imports this module: the core pipeline never needs TensorFlow Datasets.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

try:
  import tensorflow_datasets as tfds
except ImportError as _error:
  raise ImportError(
      "fwjax.data.tfds_builders needs TensorFlow Datasets; install it with "
      "pip install 'fwjax[tfds]' (TensorFlow itself is not required)") from _error

import numpy as np
from absl import logging
from PIL import Image

from fwjax import descriptors
from fwjax.data import fid300 as fid300_lib
from fwjax.data import images as images_lib
from fwjax.data import manifest as manifest_lib

#: File format written unless the caller names another: it needs no TensorFlow to write, and it
#: is the format ``as_data_source`` (random access, NumPy out) reads.
DEFAULT_FILE_FORMAT = 'array_record'


def _greyscale_image_feature(doc: str) -> tfds.features.Image:
  # PNG is lossless, so decoding gives back exactly what load_greyscale returned.
  return tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format='png',
                             doc=doc)


def _encodable(path: pathlib.Path, max_pixels: int) -> Image.Image:
  """Decodes with fwjax's checks and hands TFDS a Pillow image.

  TFDS encodes a NumPy array with TensorFlow; a Pillow image it saves with Pillow, which is what
  keeps the build free of TensorFlow.
  """
  # A 2-D uint8 array becomes an 8-bit grey ('L') image.
  return Image.fromarray(images_lib.load_greyscale(path, max_pixels=max_pixels))


class _ArrayRecordByDefault(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes array_record unless told otherwise; reading an existing dataset keeps its format."""

  def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)
    # TFDS's own default is tfrecord, whose writer needs TensorFlow. Only a dataset that is not
    # built yet may switch: a built one has its format recorded in dataset_info.json.
    if file_format is None and not self.info.initialized:
      self.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)


@dataclasses.dataclass(eq=False)
class ManifestConfig(tfds.core.BuilderConfig):
  """Where the manifest is in ``manual_dir`` and how rows without a ``split`` are split.

  Attributes:
    csv_name: the manifest CSV, relative to ``manual_dir``; image paths in it are relative to
      the CSV's folder (as :func:`fwjax.data.manifest.read_manifest` reads them).
    valid_fraction: share of the rows without a ``split`` value that go to ``validation``.
    seed: seed of :func:`fwjax.data.manifest.split_examples`. With the defaults (0.2, 0) the
      split is the one fwjax's descriptor job makes with its defaults
      (``--valid_fraction=0.2 --split_seed=0``).
    max_pixels: decompression-bomb guard passed to the decoder.
  """
  csv_name: str = 'manifest.csv'
  valid_fraction: float = 0.2
  seed: int = 0
  max_pixels: int = images_lib.MAX_PIXELS


class FootwearManifest(_ArrayRecordByDefault):
  """A manifest folder of greyscale impressions with NFRC descriptor labels.

  Features:
    image: (H, W, 1) uint8, the impression at its own size.
    labels: (17,) uint8 multi-hot vector in :data:`fwjax.descriptors.CODES` order, parents
      included (a Target, D02-01, also sets Circular, D02). This is what fwjax's losses and
      metrics take; ``info.metadata['codes']`` and ``['names']`` give the order.
      :func:`fwjax.descriptors.decode` turns a vector back into codes.
    path: the image's path as written in the manifest (relative to the CSV's folder).

  Splits: ``train`` and ``validation``. Rows whose ``split`` column says ``train`` or ``valid``
  keep it; the others are split by :func:`fwjax.data.manifest.split_examples` with the
  config's ``valid_fraction`` and ``seed``. A split with no rows is left out (with a warning).

  Source: ``manual_dir`` holds the CSV (``config.csv_name``, by default ``manifest.csv``) and
  the images. Every row is checked by :func:`fwjax.data.manifest.read_manifest`; an unknown
  code, a missing file or an unusable image stops the build naming the file.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [ManifestConfig(name='default', description='manifest.csv in manual_dir; '
                                    '20% of the unsplit rows to validation, seed 0.')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass the manifest folder as manual_dir:
  download_config=tfds.download.DownloadConfig(manual_dir='/path/to/folder'). It holds the
  manifest CSV (header path,labels[,split]; by default named manifest.csv, else set
  ManifestConfig.csv_name) and the images the CSV names.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Greyscale footwear impressions with their NFRC descriptors (17 labels, '
                    'multi-label), read from an fwjax manifest folder.',
        features=tfds.features.FeaturesDict({
            'image': _greyscale_image_feature('The impression, greyscale, at its own size.'),
            'labels': tfds.features.Tensor(
                shape=(descriptors.NUM_LABELS,), dtype=np.uint8,
                doc='Multi-hot NFRC descriptors, parents included, in fwjax.descriptors.CODES '
                    'order: ' + ' '.join(descriptors.CODES)),
            'path': tfds.features.Text(doc='Image path as written in the manifest.'),
        }),
        supervised_keys=('image', 'labels'),
        metadata=tfds.core.MetadataDict(
            codes=list(descriptors.CODES),
            names=[descriptors.NAMES[c] for c in descriptors.CODES]),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager
                        ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    config: ManifestConfig = self.builder_config
    csv_path = pathlib.Path(dl_manager.manual_dir) / config.csv_name
    # The images are decoded once, while writing; read_manifest still checks that each exists.
    examples = manifest_lib.read_manifest(csv_path, check_images=False,
                                          max_pixels=config.max_pixels)
    if not examples:
      raise manifest_lib.ManifestError(f'{csv_path}: no rows')
    train, valid = manifest_lib.split_examples(examples, config.valid_fraction, config.seed)
    splits = {}
    for name, members in (('train', train), ('validation', valid)):
      if members:
        splits[name] = self._generate_examples(members, csv_path.parent, config.max_pixels)
      else:
        logging.warning('%s: the %s split is empty and is left out', csv_path, name)
    return splits

  def _generate_examples(self, examples: list[manifest_lib.Example], root: pathlib.Path,
                         max_pixels: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for example in examples:
      try:
        path = example.path.relative_to(root).as_posix()
      except ValueError:  # an absolute path outside the folder
        path = example.path.as_posix()
      yield path, {'image': _encodable(example.path, max_pixels),
                   'labels': descriptors.encode(example.labels),
                   'path': path}


class Fid300(_ArrayRecordByDefault):
  """FID-300 (Kortylewski, Albrecht & Vetter 2014) in the database's own layout.

  Features:
    image: (H, W, 1) uint8. Probes (JPEG in the database) are stored as decoded by Pillow, in
      lossless PNG, so no second JPEG decoder can disagree with fwjax's.
    id: the number in the file name (``00042.png`` is 42).
    reference_id: the id of the matching reference. For a probe, its ground truth; for a
      reference, its own id, so ``probe['reference_id'] == reference['reference_id']`` is the
      match for either split.
    filename: path within the FID-300 folder (``references/00042.png``, ``probes/00001.jpg``).

  Splits: ``references`` (sorted by id, so ``references[i]`` is the i-th smallest id) and
  ``probes`` (the probes the ground truth covers, sorted by id). Written in that order: the
  examples are not shuffled.

  Source: ``manual_dir`` is the FID-300 folder, read by :func:`fwjax.data.fid300.load_fid300`:
  ``references/*.png``, ``tracks_cropped/`` or ``probes/``, and ``label_table.csv`` or
  ``labels.csv``.

  Non-commercial research use only; cite Kortylewski et al., ACCV 2014 workshops.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Obtain FID-300 from its publishers (University of Basel; non-commercial research use) and
  pass its folder as manual_dir:
  download_config=tfds.download.DownloadConfig(manual_dir='/path/to/FID-300'). It holds
  references/*.png, tracks_cropped/ (or probes/) and label_table.csv (or labels.csv with a
  probe,reference header).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='FID-300: crime-scene footwear marks (probes) and the laboratory '
                    'reference impressions they were made by.',
        # Written in id order (TFDS would shuffle by key), so references[i] is the i-th id, as in
        # fwjax.data.fid300.load_fid300.
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'image': _greyscale_image_feature('The impression, greyscale, at its own size.'),
            'id': tfds.features.Scalar(dtype=np.int32, doc='Number in the file name.'),
            'reference_id': tfds.features.Scalar(
                dtype=np.int32,
                doc='Id of the matching reference (a reference: its own id).'),
            'filename': tfds.features.Text(doc='Path within the FID-300 folder.'),
        }),
        citation="""@inproceedings{kortylewski2014unsupervised,
  title={Unsupervised Footwear Impression Analysis and Retrieval from Crime Scene Data},
  author={Kortylewski, Adam and Albrecht, Thomas and Vetter, Thomas},
  booktitle={ACCV 2014 Workshops},
  year={2014}
}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager
                        ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    data = fid300_lib.load_fid300(dl_manager.manual_dir)
    references = list(zip(data.references, data.reference_ids, data.reference_ids))
    probes = [(path, pid, data.probe_to_reference[pid])
              for path, pid in zip(data.probes, data.probe_ids)]
    return {'references': self._generate_examples(references, data.root),
            'probes': self._generate_examples(probes, data.root)}

  def _generate_examples(self, items: list[tuple[pathlib.Path, int, int]], root: pathlib.Path
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, file_id, reference_id in items:
      filename = pathlib.Path(path).relative_to(root).as_posix()
      yield filename, {'image': _encodable(path, images_lib.MAX_PIXELS), 'id': file_id,
                       'reference_id': reference_id, 'filename': filename}


__all__ = ['DEFAULT_FILE_FORMAT', 'Fid300', 'FootwearManifest', 'ManifestConfig']
