"""Test configuration shared by the whole suite.

Four CPU devices are faked before JAX is imported anywhere, so multi-device code (sharded
ranking, data-parallel training steps) runs in every test session without a GPU.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=4'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('KERAS_BACKEND', 'jax')  # the Keras peer runs on JAX, never TensorFlow

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """The project's shared data folder: $FWJAX_SHARED, else ../shared beside the checkout."""
  path = pathlib.Path(os.environ.get('FWJAX_SHARED', REPO.parent / 'shared'))
  if not (path / 'data' / 'fid300_dev').is_dir():
    pytest.fail(f'shared data not found at {path}: set FWJAX_SHARED to the folder that holds '
                'data/fid300_dev and fixtures/resnet50_parity')
  return path


def _assert_picture(path, *, min_size: tuple[int, int] = (64, 64), min_ink: float = 0.01,
                    min_colours: int = 8):
  """Checks that ``path`` is a PNG that shows something: not blank, not one flat colour.

  ``ink`` is the share of pixels that differ clearly from the most common colour (the
  background); a broken plot (an empty axis, a failed colour map) has almost none.
  """
  import numpy as np  # noqa: PLC0415 (kept out of module import: conftest runs before JAX setup)
  from PIL import Image  # noqa: PLC0415
  with Image.open(path) as image:
    assert image.format == 'PNG', f'{path} is {image.format}, not PNG'
    pixels = np.asarray(image.convert('RGB'), np.int16)
  h, w, _ = pixels.shape
  assert h >= min_size[0] and w >= min_size[1], f'{path} is only {w}x{h}'
  flat = pixels.reshape(-1, 3)
  colours, counts = np.unique(flat, axis=0, return_counts=True)
  background = colours[np.argmax(counts)]
  ink = float(np.mean(np.abs(flat - background).max(axis=1) > 32))
  assert len(colours) >= min_colours, f'{path} has only {len(colours)} colours'
  assert ink >= min_ink, f'{path} is nearly blank: {ink:.2%} of its pixels differ from background'
  return pixels


@pytest.fixture
def assert_picture():
  """``assert_picture(path, ...)`` checks a PNG is a real picture (see ``_assert_picture``)."""
  return _assert_picture
