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
