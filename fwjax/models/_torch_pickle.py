"""Reads PyTorch ``.pth`` state dicts with numpy only, refusing anything but tensors.

``torch.save`` (since PyTorch 1.6) writes a zip archive ``NAME/data.pkl`` + ``NAME/data/<key>``
(one raw little-endian buffer per storage) + ``NAME/byteorder``. The pickle rebuilds tensors by
calling ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` where ``storage``
is a persistent id ``('storage', torch.FloatStorage, key, location, numel)``.

Unpickling runs whatever callables the pickle names, so a hostile checkpoint could name
``os.system``. :class:`RestrictedUnpickler` resolves only the globals in :data:`_ALLOWED` (tensor
rebuilders, storage types, ``collections.OrderedDict``) to numpy-side stand-ins and raises
:class:`UnsafeCheckpointError` for anything else *before* it can be called; the plain containers
(dict, list, tuple, str, numbers) need no globals at all.
"""

import collections
import io
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint's pickle names something other than tensors and plain containers."""


# torch storage class name -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype(np.float64),
    'FloatStorage': np.dtype(np.float32),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
}


class _StorageType:
  """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
  """numpy version of ``torch._utils._rebuild_tensor_v2``: a strided view, copied."""
  del requires_grad, backward_hooks, metadata  # Autograd state means nothing to a numpy array.
  size, stride = tuple(size), tuple(stride)
  extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
  if extent > storage.size:
    raise pickle.UnpicklingError(
        f'tensor of size {size} stride {stride} at offset {storage_offset} reads past the end of '
        f'its storage ({storage.size} elements): the checkpoint is corrupt')
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False,
                       backward_hooks: Any = None) -> np.ndarray:
  """numpy version of ``torch._utils._rebuild_parameter`` (an ``nn.Parameter`` is its data)."""
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch ``data.pkl``, reading storages from the archive on demand.

  Args:
    file: the pickle stream.
    archive: the open zip archive.
    prefix: the archive's top folder (``NAME/``) holding ``data/<key>``.
    byteorder: ``'little'`` or ``'big'``, from the archive's ``byteorder`` record.
    where: the checkpoint path, for error messages.
  """

  def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, prefix: str,
               byteorder: str, where: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = byteorder
    self._where = where
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f'{self._where}: refusing to load the global {module}.{name}; only tensors, '
          'OrderedDict and plain containers are allowed in a weights file. If you trust this '
          'file, load it with PyTorch and re-save model.state_dict() (or export .safetensors).'
      ) from None

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(f'{self._where}: unexpected persistent id {pid!r}; expected '
                                  "('storage', <torch storage type>, key, location, numel)")
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      entry = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(entry)
      except KeyError:
        raise pickle.UnpicklingError(f'{self._where}: storage {entry} is missing from the '
                                     'archive: the file is truncated or corrupt') from None
      dtype = storage_type.dtype.newbyteorder('<' if self._byteorder == 'little' else '>')
      if len(raw) != numel * dtype.itemsize:
        raise pickle.UnpicklingError(
            f'{self._where}: storage {entry} holds {len(raw)} bytes, expected {numel} x '
            f'{dtype.itemsize}: the file is truncated or corrupt')
      self._storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype)
    return self._storages[key]


def load_pth(path: str) -> Any:
  """Loads the object pickled in a zip-format ``.pth`` file, tensors as numpy arrays.

  Args:
    path: a file written by ``torch.save`` (PyTorch >= 1.6 zip format).

  Returns:
    The unpickled object (usually an ``OrderedDict`` from names to ``np.ndarray``).

  Raises:
    UnsafeCheckpointError: the pickle names a global other than the tensor rebuilders,
      storage types and ``collections.OrderedDict``; nothing it names has been called.
    ValueError: the file is not a zip-format torch checkpoint.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path}: not a zip-format PyTorch checkpoint (PyTorch < 1.6 legacy '
                     'format or not a .pth at all); re-save it with a current PyTorch or '
                     'export .safetensors')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise ValueError(f'{path}: expected one data.pkl in the archive, found {pickles}')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = 'little'
    if f'{prefix}byteorder' in archive.namelist():
      byteorder = archive.read(f'{prefix}byteorder').decode().strip()
    if byteorder not in ('little', 'big'):
      raise ValueError(f'{path}: unknown byteorder record {byteorder!r}')
    stream = io.BytesIO(archive.read(pickles[0]))
    return RestrictedUnpickler(stream, archive, prefix, byteorder, str(path)).load()
