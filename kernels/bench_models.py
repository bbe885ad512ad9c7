r"""Forward throughput of every feature body, side by side with Keras 3 on the same JAX backend.

  python -m kernels.bench_models --out kernels/results/cpu/models.json
  python -m kernels.bench_models --archs=vgg16,xception --sizes=224x224 --dtypes=float32 --quick

For each architecture of ``fwjax.models.bodies`` that Keras has (all but torchvision's resnet50,
which ``kernels/bench_resnet.py`` times against PyTorch), each input size and dtype: images/s of
``build_body(arch).apply`` under ``jax.jit`` and of the same network built by
``keras.applications`` (``include_top=False, pooling='avg'``, random weights) called through
its compiled ``predict_on_batch``, on the same batch of the same device, each call after
``timing.SETTLE_S``. bfloat16 is fwjax's ``dtype=bfloat16`` (parameters float32) and Keras's
``mixed_bfloat16`` policy. The thesis's per-10,000-image extraction time is 1e4 / images/s.
Compile time is reported apart.
"""

import json
import os
import platform
import statistics
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fwjax.models import bodies, imagenet  # noqa: E402
from kernels import timing  # noqa: E402

_ARCHS = flags.DEFINE_list('archs', ['vgg16', 'vgg19', 'keras_resnet50', 'xception',
                                     'inception_resnet_v2', 'nasnet_large'], 'Bodies to time.')
_SIZES = flags.DEFINE_list('sizes', ['224x224', '352x144'], 'HEIGHTxWIDTH inputs.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per call.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per contender (median reported).')
_QUICK = flags.DEFINE_bool('quick', False, 'Two timed calls, batch 2 (a smoke run).')
_OUT = flags.DEFINE_string('out', None, 'Write the results as JSON here.')

KERAS_NAMES = {'vgg16': 'VGG16', 'vgg19': 'VGG19', 'keras_resnet50': 'ResNet50',
               'xception': 'Xception', 'inception_resnet_v2': 'InceptionResNetV2',
               'nasnet_large': 'NASNetLarge'}


def _fwjax(arch: str, x: np.ndarray, dtype: str, repeats: int) -> dict:
  model = bodies.build_body(arch, dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *x.shape[1:])))
  preprocess = imagenet.preprocess_for(arch)
  forward = jax.jit(lambda v, images: model.apply(v, preprocess(images))[1]['features'])
  start = time.perf_counter()
  forward(variables, x).block_until_ready()
  compile_s = time.perf_counter() - start
  seconds = statistics.median(timing.seconds(lambda: forward(variables, x))
                              for _ in range(repeats))
  return {'compile_seconds': compile_s, 'seconds': seconds, 'images_per_second': len(x) / seconds}


def _keras(arch: str, x: np.ndarray, dtype: str, repeats: int) -> dict:
  import keras  # noqa: PLC0415 (the peer; not a dependency of fwjax)
  keras.config.set_dtype_policy('mixed_bfloat16' if dtype == 'bfloat16' else 'float32')
  try:
    net = getattr(keras.applications, KERAS_NAMES[arch])(
        weights=None, include_top=False, pooling='avg', input_shape=x.shape[1:])
    module = getattr(keras.applications, {'keras_resnet50': 'resnet50', 'vgg16': 'vgg16',
                                          'vgg19': 'vgg19', 'xception': 'xception',
                                          'inception_resnet_v2': 'inception_resnet_v2',
                                          'nasnet_large': 'nasnet'}[arch])
    images = module.preprocess_input(x.astype(np.float32))
    start = time.perf_counter()
    net.predict_on_batch(images)
    compile_s = time.perf_counter() - start
    seconds = statistics.median(timing.seconds(lambda: net.predict_on_batch(images))
                                for _ in range(repeats))
  finally:
    keras.config.set_dtype_policy('float32')
  return {'compile_seconds': compile_s, 'seconds': seconds, 'images_per_second': len(x) / seconds}


def main(argv):
  del argv
  batch = 2 if _QUICK.value else _BATCH.value
  repeats = 2 if _QUICK.value else _REPEATS.value
  rng = np.random.default_rng(0)
  rows = []
  print(f'{"arch":20} {"size":8} {"dtype":8} {"fwjax img/s":>11} {"keras img/s":>11} '
        f'{"ratio":>6} {"s/10k fwjax":>11}', flush=True)
  for arch in _ARCHS.value:
    for size in _SIZES.value:
      height, width = (int(v) for v in size.split('x'))
      height, width = max(height, bodies.MIN_SIZE[arch]), max(width, bodies.MIN_SIZE[arch])
      x = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
      for dtype in _DTYPES.value:
        ours = _fwjax(arch, x, dtype, repeats)
        peer = _keras(arch, x, dtype, repeats)
        ratio = ours['images_per_second'] / peer['images_per_second']
        rows.append({'arch': arch, 'size': f'{height}x{width}', 'dtype': dtype, 'batch': batch,
                     'fwjax': ours, 'keras': peer, 'ratio': ratio})
        print(f'{arch:20} {height}x{width:<4} {dtype:8} {ours["images_per_second"]:11.2f} '
              f'{peer["images_per_second"]:11.2f} {ratio:5.2f}x '
              f'{1e4 / ours["images_per_second"]:11.0f}', flush=True)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump({'device': str(jax.devices()[0]), 'platform': platform.platform(),
                 'jax': jax.__version__, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
