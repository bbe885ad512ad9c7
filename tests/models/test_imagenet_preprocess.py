"""Each preprocessing mode equals keras.applications' preprocess_input (caffe bit for bit)."""

import jax
import keras
import numpy as np
import pytest
from PIL import Image

from fwjax.models import bodies
from fwjax.models import imagenet

# Keras's own function for each architecture whose weights the thesis used.
KERAS_PREPROCESS = {
    'vgg16': keras.applications.vgg16.preprocess_input,
    'vgg19': keras.applications.vgg19.preprocess_input,
    'keras_resnet50': keras.applications.resnet50.preprocess_input,
    'xception': keras.applications.xception.preprocess_input,
    'inception_resnet_v2': keras.applications.inception_resnet_v2.preprocess_input,
    'nasnet_large': keras.applications.nasnet.preprocess_input,
    'resnet50': lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode='torch'),
}
MODE_OF = {'vgg16': 'caffe', 'vgg19': 'caffe', 'keras_resnet50': 'caffe', 'xception': 'tf',
           'inception_resnet_v2': 'tf', 'nasnet_large': 'tf', 'resnet50': 'torch'}


@pytest.fixture(scope='module')
def images(shared_dir):
  """Random uint8 pixels covering 0..255, and the ImageNet sample photos."""
  rng = np.random.default_rng(0)
  out = {'random': rng.integers(0, 256, (3, 17, 11, 3), dtype=np.uint8)}
  out['random'][0, 0, :3] = [[0, 0, 0], [255, 255, 255], [0, 128, 255]]
  for path in sorted((shared_dir / 'data' / 'imagenet_samples').glob('*.jpg')):
    with Image.open(path) as im:
      out[path.stem] = np.asarray(im.convert('RGB'))[None]
  assert len(out) >= 4
  return out


@pytest.mark.parametrize('arch', sorted(KERAS_PREPROCESS))
def test_equals_keras_preprocess_input(images, arch):
  mode = MODE_OF[arch]
  fn = imagenet.MODES[mode]
  if arch in bodies.PREPROCESSING:
    assert bodies.preprocessing_mode(arch) == mode
    assert imagenet.preprocess_for(arch) is fn
  jitted = jax.jit(fn)
  for name, batch in images.items():
    want = KERAS_PREPROCESS[arch](batch.copy())
    assert want.dtype == np.float32
    for got in (fn(batch), jitted(batch), fn(batch.astype(np.float32))):
      assert got.dtype == np.float32 and got.shape == batch.shape
      if mode == 'caffe':
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f'{arch} on {name}')
      else:
        # XLA's CPU backend divides by a broadcast scalar or vector as a multiplication by
        # its reciprocal, one rounding more than numpy's division: the results differ in the
        # last bits (1 ulp of 1.0 for tf, up to 3 ulps of the largest value for torch).
        error = np.max(np.abs(np.asarray(got, np.float64) - want))
        assert error <= 4 * np.spacing(np.max(np.abs(want))), (arch, name, error)


def test_caffe_is_bgr_minus_mean():
  pixel = np.array([[[[10, 20, 30]]]], np.uint8)
  np.testing.assert_allclose(imagenet.caffe(pixel)[0, 0, 0],
                             [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
  assert imagenet.tf(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)).tolist() == [
      [[[-1.0], [1.0]]]]


def test_dtype_and_unknown_architecture():
  assert imagenet.caffe(np.zeros((1, 2, 2, 3), np.uint8), dtype=np.float16).dtype == np.float16
  with pytest.raises(ValueError, match='keras_resnet50.*vgg16'):
    imagenet.preprocess_for('vgg17')
