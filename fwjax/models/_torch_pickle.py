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

A pickle can also *modify* what it is given (the BUILD opcode sets attributes of an object), so
the stand-ins are made fresh for every lookup and refuse to be modified: a refused file leaves
nothing behind that the next load would use.
"""

import collections
import functools
import io
import os
import pickle
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint's pickle names something other than tensors and plain containers."""


class CheckpointFileError(ValueError):
  """A weights file that cannot be read (truncated, damaged, or of another format)."""


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


class _Unmodifiable:
  """Refuses the pickle's BUILD opcode, which would set attributes of a stand-in."""
  __slots__ = ()

  def __setstate__(self, state: Any) -> None:
    raise UnsafeCheckpointError(f'the pickle tries to modify {self!r}; a weights file only '
                                'builds tensors')


class _StorageType(_Unmodifiable):
  """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""
  __slots__ = ('dtype', 'name')

  def __init__(self, name: str):
    object.__setattr__(self, 'name', name)
    object.__setattr__(self, 'dtype', _STORAGE_DTYPES[name])

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafeCheckpointError(f'the pickle tries to modify torch.{self.name}')

  def __repr__(self) -> str:
    return f'torch.{self.name}'


class _Callable(_Unmodifiable):
  """Stand-in for an allowed function or class: calls it, and cannot be modified."""
  __slots__ = ('_function', '_name')

  def __init__(self, name: str, function: Any):
    object.__setattr__(self, '_name', name)
    object.__setattr__(self, '_function', function)

  def __setattr__(self, name: str, value: Any) -> None:
    raise UnsafeCheckpointError(f'the pickle tries to modify {self._name}')

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._function(*args, **kwargs)

  def __repr__(self) -> str:
    return self._name


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


# (module, name) -> a function making a fresh stand-in for each lookup.
_ALLOWED = {
    ('collections', 'OrderedDict'): lambda: _Callable('collections.OrderedDict',
                                                      collections.OrderedDict),
    ('torch._utils', '_rebuild_tensor_v2'): lambda: _Callable('torch._utils._rebuild_tensor_v2',
                                                              _rebuild_tensor_v2),
    ('torch._utils', '_rebuild_parameter'): lambda: _Callable('torch._utils._rebuild_parameter',
                                                              _rebuild_parameter),
    **{('torch', name): functools.partial(_StorageType, name) for name in _STORAGE_DTYPES},
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
      return _ALLOWED[(module, name)]()
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


def _not_a_zip(path: str) -> CheckpointFileError:
  """Why a file that ``zipfile`` cannot open is not a loadable ``.pth``."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(4)
  if head.startswith(b'PK\x03\x04'):  # a zip's first entry header: the end is what is missing
    return CheckpointFileError(
        f'{path}: a zip archive (as torch.save writes) whose directory at the end of the file is '
        f'missing or damaged ({size:,} bytes): the file is truncated or corrupt; copy or '
        'download it again')
  if head[:1] == b'\x80':  # a pickle: torch.save before PyTorch 1.6 wrote a bare pickle stream
    return CheckpointFileError(
        f'{path}: a pickle, not a zip-format PyTorch checkpoint (the PyTorch < 1.6 legacy '
        'format); re-save it with a current PyTorch or export .safetensors')
  return CheckpointFileError(f'{path}: not a PyTorch checkpoint ({size:,} bytes, beginning '
                             f'{head!r}; torch.save writes a zip archive)')


def load_pth(path: str) -> Any:
  """Loads the object pickled in a zip-format ``.pth`` file, tensors as numpy arrays.

  Args:
    path: a file written by ``torch.save`` (PyTorch >= 1.6 zip format).

  Returns:
    The unpickled object (usually an ``OrderedDict`` from names to ``np.ndarray``).

  Raises:
    UnsafeCheckpointError: the pickle names a global other than the tensor rebuilders,
      storage types and ``collections.OrderedDict``, or tries to modify one; nothing it names
      has been called.
    CheckpointFileError: the file is not a zip-format torch checkpoint, or is truncated or
      damaged (the message names the file and what is wrong).
    pickle.UnpicklingError: the pickle inside is damaged (the message names the file).
  """
  if not zipfile.is_zipfile(path):
    raise _not_a_zip(path)
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
      if len(pickles) != 1:
        raise CheckpointFileError(f'{path}: expected one data.pkl in the archive, found '
                                  f'{pickles}')
      prefix = pickles[0][:-len('data.pkl')]
      byteorder = 'little'
      if f'{prefix}byteorder' in archive.namelist():
        byteorder = archive.read(f'{prefix}byteorder').decode().strip()
      if byteorder not in ('little', 'big'):
        raise CheckpointFileError(f'{path}: unknown byteorder record {byteorder!r}')
      stream = io.BytesIO(archive.read(pickles[0]))
      return RestrictedUnpickler(stream, archive, prefix, byteorder, str(path)).load()
  except UnsafeCheckpointError as error:
    if str(path) in str(error):
      raise
    raise UnsafeCheckpointError(f'{path}: {error}') from None
  except CheckpointFileError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
    raise CheckpointFileError(f'{path}: damaged zip archive ({type(error).__name__}: {error}); '
                              'the file is truncated or corrupt') from None
  except Exception as error:  # anything the pickle's own data makes fail, named with the file
    if str(path) in str(error):
      raise
    raise pickle.UnpicklingError(f'{path}: its data.pkl cannot be read ({type(error).__name__}: '
                                 f'{error}); the file is truncated or corrupt') from None
