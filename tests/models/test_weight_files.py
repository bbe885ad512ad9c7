"""Damaged and hostile weight files: every refusal names the file and leaves no trace behind.

Issue 16, findings 5 and 7: a refused hostile ``.pth`` used to change a storage type shared by
the whole process (the next, valid load failed), and truncated files were refused without their
name (``.safetensors``) or as the wrong thing (a cut ``.pth`` called a legacy format).
"""

import pickle
import zipfile

import numpy as np
import pytest

from fwjax.models import pretrained

PTH = 'fixtures/resnet50_parity/resnet50_w8_torchvision.pth'
SAFETENSORS = 'fixtures/resnet50_parity/resnet50_w8_torchvision.safetensors'


def _archive(path, data_pkl: bytes):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', data_pkl)
    z.writestr('archive/byteorder', 'little')
  return path


def _build_then_refused(global_line: bytes, state: bytes) -> bytes:
  """A protocol-2 pickle: GLOBAL ``global_line``; BUILD it with ``state``; then GLOBAL os.system.

  BUILD sets attributes of the object the global resolved to; the os.system that follows makes
  the file refused, so whatever BUILD changed must not outlive the refusal.
  """
  return b'\x80\x02c' + global_line + b'\n' + state + b'b0cos\nsystem\n.'


def _dict(key: str, value: bytes) -> bytes:
  """Pickle opcodes pushing ``{key: value}`` (value already as opcodes)."""
  return b'}X' + len(key).to_bytes(4, 'little') + key.encode() + value + b's'


_STR_X = b'X\x01\x00\x00\x00x'  # the string 'x'
_EMPTY_TUPLE = b')'


@pytest.mark.parametrize('global_line, state', [
    # The reported attack: torch.FloatStorage's dtype becomes the string 'x'.
    (b'torch\nFloatStorage', _dict('dtype', _STR_X)),
    # The same through a (None, slotstate) pair, which pickle applies with setattr.
    (b'torch\nFloatStorage', b'N' + _dict('dtype', _STR_X) + b'\x86'),
    # A tensor rebuilder given other default arguments.
    (b'torch._utils\n_rebuild_tensor_v2', b'N' + _dict('__defaults__', _EMPTY_TUPLE) + b'\x86'),
    (b'collections\nOrderedDict', _dict('x', _STR_X)),
], ids=['storage_dtype', 'storage_slotstate', 'rebuilder_defaults', 'ordered_dict'])
def test_refused_hostile_file_leaves_the_loader_intact(tmp_path, shared_dir, global_line, state):
  evil = _archive(tmp_path / 'evil.pth', _build_then_refused(global_line, state))
  with pytest.raises(pretrained.UnsafeCheckpointError) as info:
    pretrained.load_torchvision(evil)
  assert str(evil) in str(info.value)
  # The next load in the same process reads a valid file as if nothing had happened.
  variables = pretrained.load_torchvision(shared_dir / PTH)
  state_dict = pretrained.read_state_dict(shared_dir / SAFETENSORS)
  np.testing.assert_array_equal(variables['params']['fc']['bias'], state_dict['fc.bias'])


@pytest.mark.parametrize('name', [PTH, SAFETENSORS])
@pytest.mark.parametrize('keep', [0.999, 0.5, 0.01])
def test_truncated_weight_files_are_named_and_called_truncated(tmp_path, shared_dir, name, keep):
  data = (shared_dir / name).read_bytes()
  cut = tmp_path / ('cut_' + name.rsplit('/', 1)[-1])
  cut.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(ValueError) as info:
    pretrained.load_torchvision(cut)
  message = str(info.value)
  assert str(cut) in message
  assert 'truncated or corrupt' in message
  assert 'legacy' not in message


def test_damaged_member_of_a_pth_is_named(tmp_path, shared_dir):
  data = bytearray((shared_dir / PTH).read_bytes())
  with zipfile.ZipFile(shared_dir / PTH) as archive:
    member = next(i for i in archive.infolist() if i.filename.endswith('/data/0'))
  # Flip bytes inside the first storage (stored uncompressed): its CRC no longer matches.
  header = member.header_offset
  name_length = int.from_bytes(data[header + 26:header + 28], 'little')
  extra_length = int.from_bytes(data[header + 28:header + 30], 'little')
  start = header + 30 + name_length + extra_length + 8
  data[start:start + 4] = bytes(255 - b for b in data[start:start + 4])
  damaged = tmp_path / 'damaged.pth'
  damaged.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='truncated or corrupt') as info:
    pretrained.load_torchvision(damaged)
  assert str(damaged) in str(info.value)


def test_other_files_are_named_for_what_they_are(tmp_path):
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(pickle.dumps({'a': 1}, protocol=2))
  with pytest.raises(ValueError, match=r'legacy\.pth: a pickle, not a zip-format'):
    pretrained.load_torchvision(legacy)
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  with pytest.raises(ValueError, match=r"notes\.pth: not a PyTorch checkpoint .*b'hell'"):
    pretrained.load_torchvision(text)
