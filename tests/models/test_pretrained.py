"""Torch-free checkpoint reading: safety of the unpickler, name/shape checks, layouts."""

import io
import os
import pickle
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from fwjax.models import pretrained
from fwjax.models import _torch_pickle

PTH = 'fixtures/resnet50_parity/resnet50_w8_torchvision.pth'
SAFETENSORS = 'fixtures/resnet50_parity/resnet50_w8_torchvision.safetensors'


def _write_archive(path, data_pkl: bytes, storages=None, byteorder='little'):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', data_pkl)
    z.writestr('archive/byteorder', byteorder)
    for key, raw in (storages or {}).items():
      z.writestr(f'archive/data/{key}', raw)


class _RunsCode:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize('make_payload', [
    lambda marker: _RunsCode(f'touch {marker}'),
    lambda marker: {'conv1.weight': _RunsCode(f'touch {marker}')},
])
def test_hostile_pickle_is_refused_without_running(tmp_path, make_payload):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  _write_archive(path, pickle.dumps(make_payload(marker), protocol=2))
  with pytest.raises(pretrained.UnsafeCheckpointError, match=r'posix\.system|os\.system'):
    pretrained.load_torchvision(path)
  assert not marker.exists()


def test_hostile_builtins_and_persistent_ids_are_refused(tmp_path):
  path = tmp_path / 'evil.pth'
  _write_archive(path, pickle.dumps(eval, protocol=2))
  with pytest.raises(pretrained.UnsafeCheckpointError, match=r'(__builtin__|builtins)\.eval'):
    pretrained.read_state_dict(path)

  class _Pid(pickle.Pickler):
    def persistent_id(self, obj):
      return ('module', 'os') if obj == 'x' else None

  buf = io.BytesIO()
  _Pid(buf, protocol=2).dump(['x'])
  _write_archive(path, buf.getvalue())
  with pytest.raises(pretrained.UnsafeCheckpointError, match='persistent id'):
    pretrained.read_state_dict(path)


def _fake_torch(monkeypatch):
  """Importable stand-ins named like torch's globals, so the stdlib pickler can write them."""
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while pickling')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in ('FloatStorage', 'BFloat16Storage'):
    setattr(torch, name, type(name, (), {'__module__': 'torch'}))
  monkeypatch.setitem(sys.modules, 'torch', torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', utils)
  return torch, utils


def _torch_save(path, tensors, monkeypatch, byteorder='little', transpose=()):
  """A minimal torch.save: one storage per tensor; `transpose` keys stored as strided views."""
  torch, utils = _fake_torch(monkeypatch)
  storages = {}

  class Storage:
    def __init__(self, key, dtype):
      self.key, self.dtype = key, dtype

  class Tensor:
    def __init__(self, key, array):
      self.key, self.array = key, array

    def __reduce__(self):
      transposed = self.key in transpose
      stored = np.ascontiguousarray(self.array.T if transposed else self.array)
      flat = stored.ravel()
      storages[self.key] = (flat.byteswap() if byteorder == 'big' else flat).tobytes()
      view = stored.T if transposed else stored  # The tensor as a view of its storage.
      stride = tuple(s // stored.itemsize for s in view.strides)
      return (utils._rebuild_tensor_v2,
              (Storage(self.key, self.array.dtype), 0, self.array.shape, stride, False, {}))

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        kind = torch.BFloat16Storage if obj.dtype == ml_dtypes.bfloat16 else torch.FloatStorage
        return ('storage', kind, obj.key, 'cpu', len(storages[obj.key]) // obj.dtype.itemsize)
      return None

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump({k: Tensor(k, v) for k, v in tensors.items()})
  _write_archive(path, buf.getvalue(), storages, byteorder)


@pytest.mark.parametrize('byteorder', ['little', 'big'])
def test_strided_big_endian_and_bfloat16_tensors(tmp_path, monkeypatch, byteorder):
  rng = np.random.default_rng(0)
  tensors = {'a': rng.normal(size=(3, 5)).astype(np.float32),
             'b': rng.normal(size=(4, 2, 3)).astype(np.float32),
             'c': rng.normal(size=(6,)).astype(ml_dtypes.bfloat16)}
  path = tmp_path / 'w.pth'
  _torch_save(path, tensors, monkeypatch, byteorder=byteorder, transpose=('a', 'b'))
  loaded = _torch_pickle.load_pth(path)
  assert set(loaded) == set(tensors)
  for key, value in tensors.items():
    assert loaded[key].dtype == value.dtype
    np.testing.assert_array_equal(loaded[key], value)


def test_pth_and_safetensors_agree_bit_for_bit(shared_dir):
  a = pretrained.read_state_dict(shared_dir / PTH)
  b = safetensors.numpy.load_file(shared_dir / SAFETENSORS)
  assert set(a) == set(b) and len(a) == 320
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_layouts_of_loaded_variables(shared_dir):
  state = pretrained.read_state_dict(shared_dir / PTH)
  variables = pretrained.load_torchvision(shared_dir / PTH)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['conv1']['kernel'][2, 5, 1, 7],
                                state['conv1.weight'][7, 1, 2, 5])
  conv = params['layer3']['block0']['downsample_conv']['kernel']
  np.testing.assert_array_equal(conv[0, 0], state['layer3.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(params['fc']['kernel'], state['fc.weight'].T)
  np.testing.assert_array_equal(stats['layer4']['block2']['bn3']['var'],
                                state['layer4.2.bn3.running_var'])
  np.testing.assert_array_equal(params['layer4']['block2']['bn3']['scale'],
                                state['layer4.2.bn3.weight'])
  assert pretrained.infer_config(state) == dict(width=8, stage_sizes=(3, 4, 6, 3),
                                                num_classes=1000)


def test_body_only_and_wrapped_checkpoints(shared_dir, tmp_path):
  state = pretrained.read_state_dict(shared_dir / SAFETENSORS)
  body = pretrained.load_torchvision(shared_dir / SAFETENSORS, include_fc=False)
  assert 'fc' not in body['params']
  shapes = pretrained.expected_shapes(width=8, include_fc=False)
  assert ({k: v.shape for k, v in _flat(body).items()}
          == {k: v.shape for k, v in _flat(shapes).items()})
  no_fc = {k: v for k, v in state.items() if not k.startswith('fc.')}
  with pytest.raises(pretrained.CheckpointMismatchError, match='include_fc=False'):
    pretrained.state_dict_to_variables(no_fc)
  # DistributedDataParallel's 'module.' prefix is removed.
  path = tmp_path / 'ddp.safetensors'
  safetensors.numpy.save_file({f'module.{k}': v for k, v in state.items()}, path)
  ddp = pretrained.load_torchvision(path)
  np.testing.assert_array_equal(ddp['params']['fc']['bias'], state['fc.bias'])


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out['/'.join(prefix + (k,))] = v
  return out


def test_mismatches_are_reported_by_name(shared_dir):
  state = pretrained.read_state_dict(shared_dir / PTH)
  broken = dict(state)
  del broken['layer2.1.bn2.running_var']
  broken['layer2.1.bn2.extra'] = np.zeros(3, np.float32)
  broken['layer3.2.conv2.weight'] = np.zeros((32, 32, 1, 1), np.float32)
  with pytest.raises(pretrained.CheckpointMismatchError) as info:
    pretrained.state_dict_to_variables(broken, where='broken.pth')
  message = str(info.value)
  assert 'broken.pth' in message
  assert 'missing keys (1): layer2.1.bn2.running_var' in message
  assert 'unexpected keys (1): layer2.1.bn2.extra' in message
  assert 'layer3.2.conv2.weight: (32, 32, 1, 1)' in message
  with pytest.raises(pretrained.CheckpointMismatchError, match='width is 8, expected 64'):
    pretrained.state_dict_to_variables(state, width=64)
  with pytest.raises(pretrained.CheckpointMismatchError, match='no conv1.weight'):
    pretrained.state_dict_to_variables({'weight': np.zeros(1)})


def test_bad_files_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError):
    pretrained.load_torchvision(tmp_path / 'nope.pth')
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(pickle.dumps({'a': 1}))
  with pytest.raises(ValueError, match='not a zip-format'):
    pretrained.load_torchvision(legacy)
  other = tmp_path / 'weights.h5'
  other.write_bytes(b'')
  with pytest.raises(ValueError, match='unknown checkpoint extension'):
    pretrained.load_torchvision(other)


def test_half_precision_checkpoints_load_as_float32(shared_dir, tmp_path):
  state = pretrained.read_state_dict(shared_dir / SAFETENSORS)
  path = tmp_path / 'half.safetensors'
  safetensors.numpy.save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v
                               for k, v in state.items()}, path)
  variables = pretrained.load_torchvision(path)
  kernel = variables['params']['layer1']['block0']['conv2']['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, state['layer1.0.conv2.weight'].astype(np.float16).astype(np.float32)
      .transpose(2, 3, 1, 0))
  kept = pretrained.load_torchvision(path, dtype=None)
  assert kept['batch_stats']['bn1']['var'].dtype == np.float16
