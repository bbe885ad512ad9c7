"""Orbax save/load of model variables: bit-exact round trips and structural checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwjax.models import checkpoint
from fwjax.models import pretrained

PTH = 'fixtures/resnet50_parity/resnet50_w8_torchvision.pth'


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_of_converted_weights(shared_dir, tmp_path):
  variables = pretrained.load_torchvision(shared_dir / PTH)
  path = checkpoint.save_variables(tmp_path / 'resnet50_w8', variables)
  _assert_same(checkpoint.load_variables(path), variables)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  _assert_same(checkpoint.load_variables(path, abstract), variables)


def test_mixed_dtypes_and_overwrite(tmp_path):
  tree = {'params': {'a': jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
                     'b': {'c': np.float32(3.5) * np.ones(4, np.float32)}},
          'batch_stats': {'mean': jnp.zeros((5,), jnp.float32)}}
  path = tmp_path / 'ck'
  checkpoint.save_variables(path, tree)
  _assert_same(checkpoint.load_variables(path),
               jax.tree.map(jnp.asarray, tree))
  with pytest.raises(FileExistsError, match='overwrite=True'):
    checkpoint.save_variables(path, tree)
  changed = jax.tree.map(lambda x: x + 1, tree)
  checkpoint.save_variables(path, changed, overwrite=True)
  _assert_same(checkpoint.load_variables(path), jax.tree.map(jnp.asarray, changed))


def test_mismatched_target_and_missing_path(tmp_path):
  tree = {'params': {'w': jnp.ones((2, 2)), 'v': jnp.ones(3)}}
  path = checkpoint.save_variables(tmp_path / 'ck', tree)
  with pytest.raises(ValueError):
    checkpoint.load_variables(path, {'params': {'w': jax.ShapeDtypeStruct((2, 2), jnp.float32)}})
  with pytest.raises(FileNotFoundError):
    checkpoint.load_variables(tmp_path / 'nothing')
