r"""The thesis's comparison of CNNs and distances (de Bie 2020): runs, figures and tables.

  python -m experiments.compare --flagfile=experiments/flags/compare_synthetic.flags
  python -m experiments.compare ... --report_only     # figures and tables from the store

With the thesis's six Keras networks (their ImageNet weights, *_notop.h5) on a class-folder
collection of photographs:

  python -m experiments.compare --collection_dir=photos/ --queries_per_class=2 \
      --archs=vgg16,vgg19,keras_resnet50,xception,inception_resnet_v2,nasnet_large \
      --weights=vgg16=vgg16_notop.h5,vgg19=vgg19_notop.h5,... --height=224 --width=224 \
      --metrics=euclidean,manhattan,cosine,modified --num_references=1,2,3 --repeats=3 \
      --imagenet_classes=../shared/data/imagenet_samples/imagenet_class_index.json \
      --out_dir=runs/compare

Every flag of experiments.similarity sets the base configuration, except --arch (see --archs)
and --weights, which here is a list ARCH=PATH (an arch without weights is initialised randomly
and labelled "random"). --out_dir is the comparison's folder: one run folder per CNN and repeat
(<out_dir>/<arch>/rep<r>/), a feature cache per repeat shared by the CNNs, results.sqlite unless
--results_db, and the figures and tables in <out_dir>/comparison/. Jobs complete in the store
are skipped, so the comparison can be stopped and restarted at any time. Each repeat starts
cold (its own feature cache, compiled programs dropped), so its timings are its own; --nocold
keeps compiled programs between jobs (later repeats' model build is then the weights' load). The
distance time is always the computation alone (the job compiles on a first call).
The logic is in fwjax.similarity.compare, compare_tables and compare_figures.
"""

from absl import app, flags

from experiments import similarity
from fwjax.models import feature_model
from fwjax.similarity import compare, compare_figures

_ARCHS = flags.DEFINE_list('archs', ['vgg16', 'vgg19', 'keras_resnet50', 'xception',
                                     'inception_resnet_v2', 'nasnet_large'],
                           f'CNNs to compare; valid: {", ".join(feature_model.ARCHS)}.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Jobs per CNN: the spread of the timings.')
_UNTRAINED = flags.DEFINE_list('untrained_classes', [],
                               'Classes not among ImageNet\'s 1,000 (the untrained-class table).')
_IMAGENET_CLASSES = flags.DEFINE_string(
    'imagenet_classes', None, 'imagenet_class_index.json: the classes whose name matches none of '
    'its names (lower case, separators normalised) are untrained.')
_COLD = flags.DEFINE_bool(
    'cold', True, 'Each repeat compiles again (its timings are a fresh process\'s); --nocold keeps '
    'compiled programs between jobs, so repeats after the first build without compiling.')
_TOP_CLASSES = flags.DEFINE_integer('top_classes', 5, 'Best classes listed per CNN.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Only write the figures and tables from the store.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  base = similarity.config_from_flags()
  try:
    weights = compare.parse_weights(flags.FLAGS.weights.split(',') if base.weights else [],
                                    _ARCHS.value)
    if _UNTRAINED.value and _IMAGENET_CLASSES.value:
      raise ValueError('give one of --untrained_classes and --imagenet_classes')
    if _IMAGENET_CLASSES.value:  # checked before hours of runs, not after
      compare.imagenet_class_names(_IMAGENET_CLASSES.value)
  except (ValueError, FileNotFoundError) as error:
    raise app.UsageError(str(error)) from error
  base.weights = None
  if flags.FLAGS['arch'].present:  # e.g. from a similarity flag file: said, not dropped silently
    print(f'--arch={flags.FLAGS.arch} is not used: the comparison runs --archs '
          f'({", ".join(_ARCHS.value)})')
  if not _REPORT_ONLY.value:
    compare.run_comparison(base, _ARCHS.value, _REPEATS.value, weights=weights,
                           cold=_COLD.value)
  jobs = compare.comparison_jobs(base, _ARCHS.value, repeats=_REPEATS.value, weights=weights)
  for path in compare_figures.comparison_report(jobs, untrained_classes=_UNTRAINED.value,
                                                imagenet_classes=_IMAGENET_CLASSES.value,
                                                top_classes=_TOP_CLASSES.value):
    print(path)


if __name__ == '__main__':
  app.run(main)
