"""DescriptorClassifier: pretrained body drop-in, parameter groups, cross-device BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from fwjax.models import classifier
from fwjax.models import pretrained
from fwjax.models import resnet

FIXTURE = 'fixtures/resnet50_parity'


def _tiny(**kwargs):
  return classifier.DescriptorClassifier(width=8, stage_sizes=(1, 1, 1, 1), **kwargs)


@pytest.mark.parametrize('name', classifier.PREPROCESSING)
def test_top_level_keys_and_body_matches_resnet(name):
  model = _tiny(preprocess=name)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 64, 48, 3)))
  want = {'body', 'head'} | ({'preprocess'} if name != 'no_tfm' else set())
  assert set(shapes['params']) == want
  body = jax.eval_shape(resnet.ResNet50(width=8, stage_sizes=(1, 1, 1, 1), include_top=False).init,
                        jax.random.key(0), jnp.zeros((2, 64, 48, 3)))
  for collection in ('params', 'batch_stats'):
    assert (jax.tree.map(lambda x: x.shape, shapes[collection]['body'])
            == jax.tree.map(lambda x: x.shape, body[collection]))


def test_pretrained_body_reproduces_torchvision_layer4(shared_dir):
  """With no_tfm and the fixture body inserted, layer4 is PyTorch's layer4."""
  with np.load(shared_dir / FIXTURE / 'activations.npz') as f:
    x, want = f['shoeprint352x144/input_nhwc'], f['shoeprint352x144/layer4']
  model = classifier.DescriptorClassifier(preprocess='no_tfm', width=8, precision='highest')
  # Placeholder variables (only the body matters here) save compiling init.
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype),
                           jax.eval_shape(model.init, jax.random.key(0), x))
  body = pretrained.load_torchvision(shared_dir / FIXTURE / 'resnet50_w8_torchvision.safetensors',
                                     include_fc=False)
  loaded = classifier.insert_body(variables, body)
  assert loaded['params']['head'] is variables['params']['head']  # Only the body changes.
  logits, feats = jax.jit(functools.partial(model.apply, return_feats=True))(loaded, x)
  assert logits.shape == (1, 17) and logits.dtype == jnp.float32
  assert feats['input'].shape == x.shape
  err = np.max(np.abs(np.asarray(feats['layer4']) - want)) / np.max(np.abs(want))
  assert err < 1e-4

  with_fc = pretrained.load_torchvision(shared_dir / FIXTURE / 'resnet50_w8_torchvision.pth')
  with pytest.raises(ValueError, match=r"unexpected \['fc'\]\['bias'\]"):
    classifier.insert_body(variables, with_fc)
  small = jax.eval_shape(_tiny(preprocess='no_tfm').init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"unexpected \['layer1'\]\['block1'\]"):
    classifier.insert_body(small, body)


def test_param_groups():
  params = jax.eval_shape(_tiny().init, jax.random.key(0), jnp.zeros((1, 64, 32, 3)))['params']
  labels = classifier.param_labels(params)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  assert set(jax.tree.leaves(labels['preprocess'])) == {2}
  assert set(jax.tree.leaves(labels['head'])) == {2}
  for part, group in [('conv1', 0), ('bn1', 0), ('layer1', 0), ('layer2', 0), ('layer3', 1),
                      ('layer4', 1)]:
    assert set(jax.tree.leaves(labels['body'][part])) == {group}, part
  assert classifier.param_group(('body', 'layer3', 'block0', 'conv2', 'kernel')) == 1
  with pytest.raises(ValueError, match='fc/kernel is in no parameter group'):
    classifier.param_group(('fc', 'kernel'))
  norm = jax.tree_util.tree_map_with_path(lambda p, _: classifier.is_batch_norm(p), params)
  assert norm['body']['layer2']['block0']['downsample_bn']['scale']
  assert norm['head']['bn2']['bias'] and norm['preprocess']['bn']['scale']
  assert not norm['body']['layer2']['block0']['downsample_conv']['kernel']
  assert not norm['head']['fc1']['kernel'] and not norm['preprocess']['branch1x1']['bias']


def test_cross_device_batch_norm_in_every_part():
  """bn_axis_name='data' under shard_map == the whole batch on one device, in every part."""
  mesh = Mesh(np.array(jax.devices()[:4]), ('data',))
  x = jax.random.normal(jax.random.key(1), (8, 64, 32, 3))
  kwargs = dict(preprocess='cbn_3', head_dropout_rates=(0.0, 0.0), precision='highest')
  local, synced = _tiny(**kwargs), _tiny(bn_axis_name='data', **kwargs)
  # Random variables from the shapes (running variances positive) save compiling init.
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.uniform(0.5, 2, s.shape) if 'var' in str(path[-1])
                                  else rng.normal(0, 0.2, s.shape), s.dtype),
      jax.eval_shape(local.init, jax.random.key(0), x))
  train = lambda m: functools.partial(m.apply, train=True, mutable=['batch_stats'])
  sharded = jax.shard_map(train(synced), mesh=mesh, in_specs=(P(), P('data')),
                          out_specs=(P('data'), P()))
  got_logits, got_stats = jax.jit(sharded)(variables, x)
  want_logits, want_stats = jax.jit(train(local))(variables, x)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_and_unknown_preprocessing():
  model = _tiny(dtype=jnp.bfloat16)
  x = jnp.zeros((2, 64, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {l.dtype for l in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(model.apply, shapes, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 17)
  with pytest.raises(ValueError, match='unknown preprocess'):
    _tiny(preprocess='inception').init(jax.random.key(0), x)
