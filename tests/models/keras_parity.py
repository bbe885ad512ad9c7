"""Helpers of the Keras parity tests (imported by the test modules beside it; no tests here)."""

import keras
import numpy as np
from keras.src.utils import naming


def randomise_batch_norms(model: keras.Model, seed: int = 0) -> None:
  """Gives every BatchNorm non-trivial gamma (where it has one), beta, moving mean and variance."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      new = []
      for w, v in zip(layer.weights, layer.get_weights(), strict=True):
        if 'variance' in w.path:
          new.append(rng.uniform(0.5, 2.0, v.shape))
        elif 'gamma' in w.path:
          new.append(rng.uniform(0.5, 1.5, v.shape))
        else:  # beta, moving_mean
          new.append(rng.normal(0.0, 0.2, v.shape))
      layer.set_weights([a.astype(np.float32) for a in new])


def keras3_names(weights: list[tuple[str, list[np.ndarray]]], model: keras.Model
                 ) -> list[tuple[str, list[np.ndarray]]]:
  """Renames weights the way Keras 3's ``.weights.h5`` keys them: class name and position."""
  used: dict[str, int] = {}
  names = {}
  for layer in model.layers:
    base = naming.to_snake_case(type(layer).__name__)
    used[base] = used.get(base, -1) + 1
    names[layer.name] = f'layers/{base}' + (f'_{used[base]}' if used[base] else '')
  return [(names[name], arrays) for name, arrays in weights]


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
