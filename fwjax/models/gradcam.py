"""Grad-CAM (Selvaraju et al. 2017) from a ResNet stage, as arrays and as PNG overlays.

For label ``c`` and the activation ``A`` (B, h, w, K) of a body stage (``layer4`` by default):
``alpha_k = mean_{i,j} d logit_c / d A_{ijk}``, ``cam = relu(sum_k alpha_k A_k)``, bilinearly
upsampled to the input's height and width and divided by its maximum (an all-zero map stays 0).

The gradient with respect to the stage's output is taken by adding a zero tensor to that output
through ``flax.linen.intercept_methods`` and differentiating with respect to it, so any model
containing a :class:`~fwjax.models.resnet.ResNetStage` named ``layer4`` (``ResNet50``,
``DescriptorClassifier``) works unchanged, with no extra variable collections.

Example:
  >>> heat = gradcam(model, variables, x, label=fwjax.descriptors.INDEX['D09'],
  ...                return_feats=True)                      # x: (B, H, W, 3)
  >>> overlay_png(grey_uint8, heat[0], 'text_D09.png')
"""

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image

from fwjax.models import resnet


def _forward(model: nn.Module, variables: Any, x: jax.Array, layer: str, delta: jax.Array,
             apply_kwargs: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Logits of ``model`` with ``delta`` added to the output of stage ``layer``; that output."""
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (isinstance(context.module, resnet.ResNetStage) and context.module.name == layer
        and context.method_name == '__call__'):
      captured.append(out)
      out = out + delta.astype(out.dtype)
    return out

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, train=False, **apply_kwargs)
  if len(captured) != 1:
    raise ValueError(f'{type(model).__name__} has {len(captured)} ResNet stages named {layer!r}; '
                     "Grad-CAM needs exactly one (layer is one of 'layer1'..'layer4')")
  logits = out[0] if isinstance(out, tuple) else out
  return logits, captured[0]


def gradcam(model: nn.Module, variables: Any, images: jax.Array, label: int | Sequence[int], *,
            layer: str = 'layer4', batch_size: int | None = None, **apply_kwargs: Any
            ) -> np.ndarray:
  """Grad-CAM heatmaps for one label, or for one label per image.

  Args:
    model: a Flax module whose ``apply(variables, x, train=False, **apply_kwargs)`` returns
      logits (B, L) or a tuple starting with them, and which contains a ``ResNetStage`` named
      ``layer``.
    variables: the model's variables.
    images: (B, H, W, C) or (H, W, C) model inputs (normalised as the model expects).
    label: index of the logit to explain (for a multilabel model, ``descriptors.INDEX[code]``),
      or B indices, one per image (each image explained for its own label, in one compiled
      call: a report explaining many descriptors compiles once).
    layer: the body stage, ``'layer4'`` (the paper) down to ``'layer1'`` (finer, less semantic).
    batch_size: images per device call (None: all at once); the last chunk is padded, so one
      compilation serves every chunk and memory stays bounded for many large images.
    **apply_kwargs: passed to ``model.apply`` (e.g. ``return_feats=True``; not needed).

  Returns:
    float32 heatmaps (B, H, W) in [0, 1], or (H, W) for a single image.

  Raises:
    ValueError: a label outside the logits, a label list that is not one per image, or no
      single stage named ``layer``.
  """
  x = jnp.asarray(images, jnp.float32)
  single = x.ndim == 3
  if single:
    x = x[None]
  if x.ndim != 4:
    raise ValueError(f'images must be (B, H, W, C) or (H, W, C), got shape {images.shape}')
  labels = np.asarray(label)
  if labels.ndim == 0:
    labels = np.full(x.shape[0], int(labels))
  if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'label must be one integer or one per image ({x.shape[0]}), got {label!r}')
  chunk = x.shape[0] if batch_size is None else max(1, min(batch_size, x.shape[0]))
  logits_shape, stage_shape = jax.eval_shape(
      lambda x: _forward(model, variables, x, layer, jnp.zeros(()), apply_kwargs), x[:chunk])
  outside = labels[(labels < 0) | (labels >= logits_shape.shape[-1])]
  if outside.size:
    raise ValueError(f'label {int(outside[0])} is outside the model\'s '
                     f'{logits_shape.shape[-1]} logits')

  @jax.jit
  def heatmaps(variables, x, labels):
    def score(delta):
      logits, activation = _forward(model, variables, x, layer, delta, apply_kwargs)
      # Images are independent at inference (running BatchNorm statistics), so the gradient of
      # the sum is each image's own gradient for its own label.
      chosen = jnp.take_along_axis(logits, labels[:, None], axis=1)
      return jnp.sum(chosen), activation

    grads, activation = jax.grad(score, has_aux=True)(jnp.zeros(stage_shape.shape, jnp.float32))
    alpha = jnp.mean(grads, axis=(1, 2), keepdims=True)
    cam = nn.relu(jnp.sum(alpha * activation.astype(jnp.float32), axis=-1))
    cam = jax.image.resize(cam, (cam.shape[0],) + x.shape[1:3], 'bilinear')
    cam = jnp.maximum(cam, 0.0)  # Bilinear resizing cannot overshoot, but stay exact at 0.
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)

  out = []
  for start in range(0, x.shape[0], chunk):
    rows = np.minimum(np.arange(start, start + chunk), x.shape[0] - 1)  # pad with the last row
    heat = heatmaps(variables, x[rows], jnp.asarray(labels[rows], jnp.int32))
    out.append(np.asarray(heat)[:min(chunk, x.shape[0] - start)])
  out = np.concatenate(out)
  return out[0] if single else out


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
            colormap: str = 'jet') -> np.ndarray:
  """Blends a colour-mapped heatmap over a greyscale impression.

  Args:
    image: (H, W) uint8 greyscale image (the impression at any resolution).
    heatmap: (h, w) values in [0, 1]; resized to (H, W) bilinearly if needed.
    alpha: heatmap opacity.
    colormap: a matplotlib colormap name.

  Returns:
    (H, W, 3) uint8 RGB.

  Raises:
    ValueError: wrong dimensions or dtype, or heatmap values outside [0, 1].
  """
  image = np.asarray(image)
  heatmap = np.asarray(heatmap, np.float32)
  if image.ndim != 2 or image.dtype != np.uint8:
    raise ValueError(f'image must be (H, W) uint8 greyscale, got {image.shape} {image.dtype}')
  if heatmap.ndim != 2:
    raise ValueError(f'heatmap must be (H, W), got shape {heatmap.shape}')
  if not np.all(np.isfinite(heatmap)) or heatmap.min() < 0 or heatmap.max() > 1:
    raise ValueError('heatmap values must be finite and in [0, 1]')
  if heatmap.shape != image.shape:
    heatmap = np.asarray(Image.fromarray(heatmap).resize(
        (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR)).clip(0, 1)
  colours = matplotlib.colormaps[colormap](heatmap)[..., :3]
  grey = (image.astype(np.float32) / 255.0)[..., None]
  blended = (1 - alpha) * grey + alpha * colours
  return np.round(blended * 255).clip(0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, path: str | os.PathLike, *,
                alpha: float = 0.45, colormap: str = 'jet') -> str:
  """Writes :func:`overlay` as a PNG file (parent folders are created).

  Args:
    image: (H, W) uint8 greyscale image.
    heatmap: (h, w) in [0, 1].
    path: output ``.png`` path.
    alpha: heatmap opacity.
    colormap: a matplotlib colormap name.

  Returns:
    The path written, as a string.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(overlay(image, heatmap, alpha=alpha, colormap=colormap)).save(path)
  return path
