"""Writes synthetic shoeprints: a labelled manifest folder, or a retrieval set in FID-300 layout.

  python -m experiments.make_synthetic --out=data/synthetic --n=600
  python -m experiments.make_synthetic --out=data/retrieval --mode=retrieval --n=50 --probes=2
"""

from absl import app
from absl import flags
from absl import logging

from fwjax.data import synthetic

_OUT = flags.DEFINE_string('out', None, 'Folder to write.')
_N = flags.DEFINE_integer('n', 600, 'Impressions (descriptors mode) or shoe models (retrieval).')
_MODE = flags.DEFINE_enum('mode', 'descriptors', ['descriptors', 'retrieval'],
                          'descriptors: images + manifest.csv; retrieval: FID-300 layout.')
_PROBES = flags.DEFINE_integer('probes', 2, 'Probes per shoe model (retrieval mode).')
_HEIGHT = flags.DEFINE_integer('height', 704, 'Image height in pixels.')
_WIDTH = flags.DEFINE_integer('width', 288, 'Image width in pixels (about height / 2.4).')
_SEED = flags.DEFINE_integer('seed', 0, 'Everything is a function of the seed.')


def main(argv):
  del argv
  if _MODE.value == 'descriptors':
    path = synthetic.make_descriptor_set(_OUT.value, _N.value, seed=_SEED.value,
                                         height=_HEIGHT.value, width=_WIDTH.value)
  else:
    path = synthetic.make_retrieval_set(_OUT.value, _N.value, _PROBES.value, seed=_SEED.value,
                                        height=_HEIGHT.value, width=_WIDTH.value)
  logging.info('wrote %s', path)
  print(path)


if __name__ == '__main__':
  flags.mark_flag_as_required('out')
  app.run(main)
