"""Grad-CAM: localisation on a model that reads one half of the image, against the analytic map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fwjax.models import classifier
from fwjax.models import gradcam
from fwjax.models import resnet

H, W = 64, 256


class HalfReader(nn.Module):
  """A ResNet body whose logit 0 reads only the left half of layer4, logit 1 only the right."""

  @nn.compact
  def __call__(self, x, train=False):
    _, feats = resnet.ResNet50(width=8, stage_sizes=(1, 1, 1, 1), include_top=False,
                               precision='highest', name='body')(x, train=train)
    a = feats['layer4']
    half = a.shape[2] // 2
    readout = self.param('readout', nn.initializers.zeros, (a.shape[-1], 2))
    left = jnp.mean(a[:, :, :half], axis=(1, 2)) @ readout[:, 0]
    right = jnp.mean(a[:, :, half:], axis=(1, 2)) @ readout[:, 1]
    return jnp.stack([left, right], axis=-1), feats


@pytest.fixture(scope='module')
def half_reader():
  """The model, its variables and an input; readouts fitted so the logits localise."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, H, W, 3)).astype(np.float32)
  x[:, :, W // 2:] *= 0.3  # Different statistics left and right.
  model = HalfReader()
  # Random variables from the shapes (positive running variances) save compiling init.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.uniform(0.5, 2, s.shape) if 'var' in str(path[-1])
                                  else rng.normal(0, 0.2, s.shape), s.dtype),
      jax.eval_shape(model.init, jax.random.key(0), x))
  _, feats = jax.jit(model.apply)(variables, x)
  a = np.asarray(feats['layer4'][0], np.float64)
  h4, w4, k = a.shape
  # A least-squares linear readout (a "trained" linear probe): +1 on the left positions of
  # layer4, -1 on the right, so label 0's features are those of the left half.
  target = np.tile(np.where(np.arange(w4) < w4 // 2, 1.0, -1.0), (h4, 1)).ravel()
  w, *_ = np.linalg.lstsq(a.reshape(-1, k), target, rcond=None)
  params = dict(variables['params'], readout=jnp.asarray(np.stack([w, -w], -1), jnp.float32))
  return model, dict(variables, params=params), x, np.asarray(feats['layer4'])


def test_mass_is_in_the_region_the_label_reads(half_reader):
  model, variables, x, _ = half_reader
  left = gradcam.gradcam(model, variables, x[0], label=0)
  right = gradcam.gradcam(model, variables, x[0], label=1)
  for heat in (left, right):
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
  assert left[:, :W // 2].sum() / left.sum() > 0.9
  assert right[:, W // 2:].sum() / right.sum() > 0.9


def test_one_label_per_image_in_chunks_equals_one_call_per_label(half_reader):
  model, variables, x, _ = half_reader
  three = np.concatenate([x, x[:1]])
  # Chunks of 2 (the second padded), each image explained for its own label.
  mixed = gradcam.gradcam(model, variables, three, label=[1, 0, 1], batch_size=2)
  ones = gradcam.gradcam(model, variables, three, label=1)
  zeros = gradcam.gradcam(model, variables, three, label=0)
  np.testing.assert_allclose(mixed, np.stack([ones[0], zeros[1], ones[2]]), atol=1e-6)
  with pytest.raises(ValueError, match='one per image'):
    gradcam.gradcam(model, variables, x, label=[0, 1, 0])
  with pytest.raises(ValueError, match='label 2 is outside'):
    gradcam.gradcam(model, variables, x, label=[0, 2])


def test_matches_analytic_grad_cam(half_reader):
  """d logit_0 / dA is readout_0 / n_left on the left half: alpha = readout_0 / (h w)."""
  model, variables, x, layer4 = half_reader
  heat = gradcam.gradcam(model, variables, x, label=0)  # batch of 2
  assert heat.shape == (2, H, W)
  readout = np.asarray(variables['params']['readout'][:, 0], np.float64)
  h4, w4 = layer4.shape[1:3]
  # The gradient is readout / n_left on the n_left = h4 * half left positions and 0 on the
  # right, so its mean over all h4 * w4 positions is readout / (h4 * w4).
  alpha = readout / (h4 * w4)
  cam = np.maximum(np.einsum('bhwk,k->bhw', layer4.astype(np.float64), alpha), 0)
  # Independent bilinear upsampling (half-pixel centres, as PIL and jax.image do).
  want = np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize(
      (W, H), Image.Resampling.BILINEAR)) for c in cam])
  want = want / want.max(axis=(1, 2), keepdims=True)
  # PIL's bilinear upsampling clamps at the borders as jax.image.resize does, up to float32.
  np.testing.assert_allclose(heat, want, atol=2e-3)


def test_any_label_on_the_classifier_and_errors(half_reader):
  model = classifier.DescriptorClassifier(preprocess='cbn_1', width=8, stage_sizes=(1, 1, 1, 1))
  x = np.random.default_rng(1).normal(size=(2, 96, 64, 3)).astype(np.float32)
  rng = np.random.default_rng(2)  # Random variables from the shapes save compiling init.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.uniform(0.5, 2, s.shape) if 'var' in str(path[-1])
                                  else rng.normal(0, 0.2, s.shape), s.dtype),
      jax.eval_shape(model.init, jax.random.key(0), x))
  heat = gradcam.gradcam(model, variables, x, label=16, layer='layer3')
  assert heat.shape == (2, 96, 64)
  assert np.all((heat >= 0) & (heat <= 1))
  single = gradcam.gradcam(model, variables, x[1], label=16, layer='layer3')
  np.testing.assert_allclose(single, heat[1], atol=1e-5)  # Images are explained independently.
  with pytest.raises(ValueError, match='label 17 is outside'):
    gradcam.gradcam(model, variables, x, label=17)
  with pytest.raises(ValueError, match="stages named 'layer9'"):
    gradcam.gradcam(model, variables, x, label=0, layer='layer9')


def test_overlay_png(tmp_path):
  grey = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
  heat = np.zeros((15, 20), np.float32)
  heat[:, 10:] = 1.0  # Hot on the right half, at half resolution (resized to the image).
  path = gradcam.overlay_png(grey, heat, tmp_path / 'sub' / 'cam.png')
  with Image.open(path) as png:
    assert png.mode == 'RGB' and png.size == (40, 30)
    rgb = np.asarray(png).astype(int)
  # 'jet' maps 0 to dark blue and 1 to dark red.
  assert np.all(rgb[:, :15, 2] > rgb[:, :15, 0])
  assert np.all(rgb[:, 25:, 0] > rgb[:, 25:, 2])
  with pytest.raises(ValueError, match='uint8 greyscale'):
    gradcam.overlay(grey.astype(np.float32), heat)
  with pytest.raises(ValueError, match=r'in \[0, 1\]'):
    gradcam.overlay(grey, heat * 2)
