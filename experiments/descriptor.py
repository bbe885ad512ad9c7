r"""Trains and evaluates the descriptor classifier (Budka et al. 2021): the project's main job.

  python -m experiments.descriptor --flagfile=experiments/flags/quickstart.flags
  python -m experiments.descriptor --flagfile=experiments/flags/paper_352x144.flags \
      --manifest=nfrc/manifest.csv --weights=resnet50-0676ba61.pth --out_dir=runs/paper

Several hosts: run the same command on every host with --distributed (jax.distributed.initialize
reads the cluster from SLURM / Open MPI / Cloud TPU, or from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID).

The logic is in fwjax.descriptor.job; this file only turns flags into a DescriptorConfig.
"""

from absl import app
from absl import flags

from fwjax.descriptor import job as descriptor_job
from fwjax.descriptor.config import DescriptorConfig as C

_MANIFEST = flags.DEFINE_string('manifest', None, 'CSV of path,labels (fwjax.data.manifest).')
_DATA_ROOT = flags.DEFINE_string('data_root', None, 'Folder the manifest paths are relative to '
                                 '(default: the manifest\'s folder).')
_SYNTHETIC = flags.DEFINE_integer(
    'synthetic', C.synthetic,
    'Generate this many synthetic impressions (into the cache) instead of reading --manifest.')
_SYNTHETIC_SIZE = flags.DEFINE_list(
    'synthetic_size', list(map(str, C.synthetic_size)),
    'Height,width of the generated originals (0,0: twice the network input).')
_VALID_FRACTION = flags.DEFINE_float(
    'valid_fraction', C.valid_fraction,
    'Share of images held out (unless --valid_count is set).')
_VALID_COUNT = flags.DEFINE_integer(
    'valid_count', C.valid_count,
    'Hold out exactly this many images instead of --valid_fraction (the paper: 1000).')
_SPLIT_SEED = flags.DEFINE_integer(
    'split_seed', C.split_seed,
    'Seed of the split and synthetic data.')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'Resized-image cache (default: '
                                 '<out_dir>/cache; share it between runs of a grid).')
_HEIGHT = flags.DEFINE_integer('height', C.height, 'Network input height.')
_WIDTH = flags.DEFINE_integer('width', C.width, 'Network input width.')
_POLICY = flags.DEFINE_enum('policy', C.policy, ['squish', 'pad'], 'squish stretches each image '
                            'to the input size; pad keeps its aspect ratio.')
_COMPOSITION = flags.DEFINE_string('composition', C.composition, 'Channel composition, e.g. B-H-N.')
_PREPROCESS = flags.DEFINE_enum(
    'preprocess', C.preprocess, ['no_tfm', 'cbn_1', 'cbn_3', 'inc', 'inc_d'],
    'Learnable preprocessing layer.')
_LOSS = flags.DEFINE_enum('loss', C.loss, ['bce', 'soft_f1'], 'Training loss.')
_EPOCHS1 = flags.DEFINE_integer(
    'epochs_phase1', C.epochs_phase1,
    'Epochs with the body frozen (BN trains).')
_EPOCHS2 = flags.DEFINE_integer('epochs_phase2', C.epochs_phase2, 'Epochs training everything.')
_LR1 = flags.DEFINE_float('phase1_lr', C.phase1_lr, 'Phase 1 peak learning rate.')
_LR2 = flags.DEFINE_list(
    'phase2_lrs', list(map(str, C.phase2_lrs)),
    'Phase 2 peak learning rates of the first and last parameter group (geometric in between).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', C.batch_size, 'Global batch size (all devices).')
_SEED = flags.DEFINE_integer('seed', C.seed, 'Seed of initialisation, data order and dropout.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'torchvision/timm ResNet-50 weights (.pth or '
                               '.safetensors); unset: random initialisation (said loudly).')
_WIDTH_MULTIPLIER = flags.DEFINE_float(
    'width_multiplier', C.width_multiplier,
    'Model width relative to ResNet-50 (0.125 = width 8, for CPU runs).')
_STAGE_SIZES = flags.DEFINE_list(
    'stage_sizes', list(map(str, C.stage_sizes)),
    'Bottleneck blocks per stage (ResNet-50: 3,4,6,3; 1,1,1,1 for quick CPU checks).')
_DTYPE = flags.DEFINE_enum('dtype', C.dtype, ['float32', 'bfloat16'],
                           'Compute dtype (parameters stay float32).')
_AUGMENT_FLIP = flags.DEFINE_bool(
    'augment_flip', C.augment_flip,
    'Mirror training images left/right at random (on the device).')
_AUGMENT_ROTATION = flags.DEFINE_float(
    'augment_rotation', C.augment_rotation,
    'Rotate training images by up to this many degrees either way (0: none).')
_AUGMENT_SHIFT = flags.DEFINE_float(
    'augment_shift', C.augment_shift,
    'Shift training images by up to this fraction of their height and width (0: none).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Run folder (outputs, checkpoints).')
_RESULTS_DB = flags.DEFINE_string('results_db', None, 'SQLite results store (default: '
                                  '<out_dir>/results.sqlite).')
_NAME = flags.DEFINE_string('name', C.name, 'Run name in the results store.')
_NUM_GRADCAM = flags.DEFINE_integer(
    'num_gradcam', C.num_gradcam,
    'Grad-CAM figures show this many highest-loss validation images per descriptor.')
_WORKERS = flags.DEFINE_integer('workers', C.workers, 'Threads decoding images into the cache '
                                '(0: the cache\'s default).')
_RESUME = flags.DEFINE_bool('resume', C.resume, 'Continue from the last checkpoint in --out_dir.')
_PROGRESS = flags.DEFINE_bool('progress', C.progress, 'Show a progress bar.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', C.distributed,
    'Call jax.distributed.initialize (several hosts).')
_MAX_PIXELS = flags.DEFINE_integer(
    'max_pixels', C.max_pixels,
    'Refuse images with more pixels than this (a decompression-bomb guard); raise it to admit a '
    'genuine larger scan.')
_ALLOW_EMPTY_LABELS = flags.DEFINE_bool(
    'allow_empty_labels', C.allow_empty_labels,
    'An empty labels field in --manifest means the image has no descriptor (otherwise such rows '
    'are refused: every NFRC impression has at least one; a plain sole is D14).')

flags.mark_flag_as_required('out_dir')


def config_from_flags() -> C:
  """The DescriptorConfig of the parsed flags (experiments.grid builds its base from it too)."""
  return C(
      out_dir=_OUT_DIR.value, manifest=_MANIFEST.value, data_root=_DATA_ROOT.value,
      synthetic=_SYNTHETIC.value, synthetic_size=tuple(int(v) for v in _SYNTHETIC_SIZE.value),
      valid_fraction=_VALID_FRACTION.value, split_seed=_SPLIT_SEED.value,
      cache_dir=_CACHE_DIR.value, height=_HEIGHT.value, width=_WIDTH.value, policy=_POLICY.value,
      composition=_COMPOSITION.value, preprocess=_PREPROCESS.value, loss=_LOSS.value,
      epochs_phase1=_EPOCHS1.value, epochs_phase2=_EPOCHS2.value, phase1_lr=_LR1.value,
      phase2_lrs=tuple(float(v) for v in _LR2.value), batch_size=_BATCH_SIZE.value,
      seed=_SEED.value, weights=_WEIGHTS.value, width_multiplier=_WIDTH_MULTIPLIER.value,
      stage_sizes=tuple(int(v) for v in _STAGE_SIZES.value),
      dtype=_DTYPE.value, augment_flip=_AUGMENT_FLIP.value,
      augment_rotation=_AUGMENT_ROTATION.value, augment_shift=_AUGMENT_SHIFT.value,
      results_db=_RESULTS_DB.value, name=_NAME.value,
      num_gradcam=_NUM_GRADCAM.value, workers=_WORKERS.value, resume=_RESUME.value,
      progress=_PROGRESS.value, distributed=_DISTRIBUTED.value, max_pixels=_MAX_PIXELS.value,
      allow_empty_labels=_ALLOW_EMPTY_LABELS.value, valid_count=_VALID_COUNT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  descriptor_job.run_descriptor(config_from_flags())


if __name__ == '__main__':
  app.run(main)
