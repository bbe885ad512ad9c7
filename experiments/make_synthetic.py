"""Writes synthetic shoeprints: a labelled manifest folder, or a retrieval set in FID-300 layout.

  python -m experiments.make_synthetic --out=data/synthetic --n=600
  python -m experiments.make_synthetic --out=data/retrieval --mode=retrieval --n=50 --probes=2
  python -m experiments.make_synthetic --out=data/photos --mode=photo_folders --n=20 \
      --photos=../shared/data/imagenet_samples --distractors=../shared/data/fid300_dev/references

photo_folders: a class-folder collection (de Bie 2020's Caltech/FIRE layout) of seeded variants of
every photograph in --photos (one class per photograph, --n variants each), with the first
--num_distractors images of --distractors linked in as the distractor class ``others``
(fwjax.data.photo_variants).
"""

import pathlib

from absl import app
from absl import flags
from absl import logging

from fwjax.data import photo_variants
from fwjax.data import retrieval_sets
from fwjax.data import synthetic

_OUT = flags.DEFINE_string('out', None, 'Folder to write.')
_N = flags.DEFINE_integer('n', 600, 'Impressions (descriptors mode) or shoe models (retrieval).')
_MODE = flags.DEFINE_enum('mode', 'descriptors', ['descriptors', 'retrieval', 'photo_folders'],
                          'descriptors: images + manifest.csv; retrieval: FID-300 layout; '
                          'photo_folders: class folders of photograph variants.')
_PROBES = flags.DEFINE_integer('probes', 2, 'Probes per shoe model (retrieval mode).')
_HEIGHT = flags.DEFINE_integer('height', 704, 'Image height in pixels.')
_WIDTH = flags.DEFINE_integer('width', 288, 'Image width in pixels (about height / 2.4).')
_SEED = flags.DEFINE_integer('seed', 0, 'Everything is a function of the seed.')
_PHOTOS = flags.DEFINE_string('photos', None, 'photo_folders: folder of photographs (one class '
                              'per file, named by its file name).')
_DISTRACTORS = flags.DEFINE_string('distractors', None, 'photo_folders: folder of images linked '
                                   'in as the distractor class "others".')
_NUM_DISTRACTORS = flags.DEFINE_integer('num_distractors', 100, 'photo_folders: distractor images '
                                        'linked (the first ones in sorted order).')


def main(argv):
  del argv
  if _MODE.value == 'descriptors':
    path = synthetic.make_descriptor_set(_OUT.value, _N.value, seed=_SEED.value,
                                         height=_HEIGHT.value, width=_WIDTH.value)
  elif _MODE.value == 'photo_folders':
    if not _PHOTOS.value:
      raise app.UsageError('--mode=photo_folders needs --photos (a folder of photographs)')
    photos, _ = retrieval_sets.list_images(pathlib.Path(_PHOTOS.value))
    if not photos:
      raise app.UsageError(f'--photos: no images in {_PHOTOS.value}')
    stems = [p.stem for p in photos]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:  # a class per file name: two files of one name would silently become one class
      raise app.UsageError(f'--photos: several files named {", ".join(twins)} (one class per '
                           'name); rename them')
    distractors = []
    if _DISTRACTORS.value:
      distractors, _ = retrieval_sets.list_images(pathlib.Path(_DISTRACTORS.value))
      distractors = distractors[:_NUM_DISTRACTORS.value]
    path = photo_variants.make_variant_folders(_OUT.value, {p.stem: p for p in photos}, _N.value,
                                               distractors=distractors, seed=_SEED.value)
  else:
    path = synthetic.make_retrieval_set(_OUT.value, _N.value, _PROBES.value, seed=_SEED.value,
                                        height=_HEIGHT.value, width=_WIDTH.value)
  logging.info('wrote %s', path)
  print(path)


if __name__ == '__main__':
  flags.mark_flag_as_required('out')
  app.run(main)
