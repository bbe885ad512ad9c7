"""The bridge between Keras weighted layers and Flax variables, shared by every Keras body.

Keras stores a model's weights per layer, in the order of ``model.layers``: the legacy HDF5
format (``keras.applications`` downloads) keys them by layer name, Keras 3's ``.weights.h5`` by
class name and position (``layers/conv2d``, ``layers/conv2d_1``, ...). Neither format knows the
Flax module tree, so each architecture states, explicitly and in ``model.layers`` order, which
Flax module every weighted Keras layer fills: a list of :class:`KerasLayer`. :func:`fill` then
turns the arrays of those layers into ``{'params', 'batch_stats'}``, checking kinds, counts and
shapes against the Flax model's own variables.

Per kind, Keras's weight order and the Flax variables they become:

* ``conv2d``: kernel (HWIO), [bias] -> ``path/kernel``, ``path/bias``.
* ``dense``: kernel (in, out), [bias] -> ``path/kernel``, ``path/bias``.
* ``batch_normalization``: [gamma], [beta], moving_mean, moving_variance -> ``params``
  ``path/scale``, ``path/bias`` and ``batch_stats`` ``path/mean``, ``path/var``. Which of gamma
  and beta exist (Keras's ``scale`` / ``center``) is read from the Flax module: it has
  ``scale`` / ``bias`` exactly when Keras has gamma / beta.
* ``depthwise_conv2d``: depthwise kernel (h, w, C, 1), [bias] -> an ``nn.Conv`` with
  ``feature_group_count=C`` at ``path`` (kernel (h, w, 1, C)).
* ``separable_conv2d``: depthwise kernel (h, w, C, 1), pointwise kernel (1, 1, C, O), [bias]
  -> ``path/depthwise`` (grouped ``nn.Conv``, no bias) and ``path/pointwise`` (1x1 ``nn.Conv``,
  with the bias if any).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ('conv2d', 'dense', 'batch_normalization', 'depthwise_conv2d', 'separable_conv2d')


class KerasWeightsMismatchError(ValueError):
  """A Keras weights file (or model) does not fit the Flax body it should fill."""


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One weighted Keras layer and the Flax module it fills.

  Attributes:
    kind: Keras's class name in snake case, one of :data:`KINDS`.
    path: the Flax module's path in the variable tree, e.g. ``('block1_conv1',)``.
    name: Keras's layer name (``keras.applications`` names most layers, e.g. ``block1_conv1``);
      legacy files are checked against it. None where Keras numbers the layer itself
      (``conv2d_17``): such names depend on what else the session built, so only order counts.
  """
  kind: str
  path: tuple[str, ...]
  name: str | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'unknown Keras layer kind {self.kind!r}; expected one of {KINDS}')


def _node(tree: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any] | None:
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _targets(layer: KerasLayer, params: Mapping[str, Any], stats: Mapping[str, Any]
             ) -> list[tuple[str, tuple[str, ...], Any]]:
  """(collection, leaf path, transform) for each Keras weight of ``layer``, in Keras's order."""
  p = _node(params, layer.path) or {}
  same = lambda w: w
  if layer.kind in ('conv2d', 'dense'):
    out = [('params', layer.path + ('kernel',), same)]
    if 'bias' in p:
      out.append(('params', layer.path + ('bias',), same))
    return out
  if layer.kind == 'batch_normalization':
    out = []
    if 'scale' in p:
      out.append(('params', layer.path + ('scale',), same))
    if 'bias' in p:
      out.append(('params', layer.path + ('bias',), same))
    return out + [('batch_stats', layer.path + ('mean',), same),
                  ('batch_stats', layer.path + ('var',), same)]
  depthwise = lambda w: np.transpose(w, (0, 1, 3, 2)) if w.ndim == 4 else w  # (h,w,C,1)->(h,w,1,C)
  if layer.kind == 'depthwise_conv2d':
    out = [('params', layer.path + ('kernel',), depthwise)]
    if 'bias' in p:
      out.append(('params', layer.path + ('bias',), same))
    return out
  out = [('params', layer.path + ('depthwise', 'kernel'), depthwise),
         ('params', layer.path + ('pointwise', 'kernel'), same)]
  if 'bias' in (_node(params, layer.path + ('pointwise',)) or {}):
    out.append(('params', layer.path + ('pointwise', 'bias'), same))
  return out


def fill(target: Mapping[str, Any], layers: Sequence[KerasLayer],
         weights: Sequence[tuple[str, Sequence[np.ndarray]]], *, where: str = 'Keras weights',
         check_names: bool = False, dtype: Any = np.float32) -> dict[str, Any]:
  """Builds Flax variables from Keras layer weights, checking everything against the model.

  Args:
    target: the Flax model's variables or their shapes (``jax.eval_shape`` of ``init``), with
      ``'params'`` and, for bodies with BatchNorm, ``'batch_stats'``.
    layers: the architecture's weighted layers in ``model.layers`` order.
    weights: ``(name, [arrays])`` for each weighted layer in the file, in its order; ``name`` is
      the legacy layer name or Keras 3's ``conv2d_3``-style key.
    where: the file (or model) name for error messages.
    check_names: also require each :attr:`KerasLayer.name` that is not None to equal the
      file's layer name (legacy files, which keep Keras's names).
    dtype: floating arrays are cast to it (None keeps the file's dtype).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of numpy arrays with exactly ``target``'s tree.

  Raises:
    KerasWeightsMismatchError: a different number of weighted layers, or a layer of another
      kind, name, weight count or shape; every problem is listed with the layer's name.
  """
  params, stats = target.get('params', {}), target.get('batch_stats', {})
  problems: list[str] = []
  if len(weights) != len(layers):
    file_names = [n for n, _ in weights]
    problems.append(f'{len(weights)} weighted layers, expected {len(layers)} (first in file: '
                    f'{", ".join(file_names[:4])}; last: {", ".join(file_names[-3:])})')
  out: dict[str, Any] = {}
  filled = set()
  for i, (layer, (name, arrays)) in enumerate(zip(layers, weights)):
    label = f'layer {i} ({name!r} -> {"/".join(layer.path)})'
    if check_names and layer.name is not None and name != layer.name:
      problems.append(f'{label}: file has {name!r} where {layer.name!r} belongs')
      continue
    if not check_names and not name.rsplit('/', 1)[-1].startswith(layer.kind):
      problems.append(f'{label}: a {name.rsplit("/", 1)[-1]} where a {layer.kind} belongs')
      continue
    targets = _targets(layer, params, stats)
    if len(arrays) != len(targets):
      problems.append(f'{label}: {len(arrays)} weights, a {layer.kind} here has {len(targets)}')
      continue
    for array, (collection, path, transform) in zip(arrays, targets):
      want = _node(target.get(collection, {}), path)
      value = transform(np.asarray(array))
      if dtype is not None and np.issubdtype(value.dtype, np.floating):
        value = value.astype(dtype)
      if want is None:
        problems.append(f'{label}: the Flax model has no {collection}/{"/".join(path)}')
        continue
      if tuple(value.shape) != tuple(want.shape):
        problems.append(f'{label}: {"/".join(path)} has shape {tuple(np.shape(array))}, '
                        f'expected {tuple(want.shape)}')
        continue
      node = out.setdefault(collection, {})
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = np.ascontiguousarray(value)
      filled.add((collection, path))
  if not problems:
    leaves = [(c, path) for c in ('params', 'batch_stats') for path in _leaf_paths(target.get(c))]
    unfilled = [f'{c}/{"/".join(p)}' for c, p in leaves if (c, p) not in filled]
    if unfilled:
      problems.append(f'Flax variables with no Keras weight ({len(unfilled)}): '
                      + ', '.join(unfilled[:10]))
  if problems:
    raise KerasWeightsMismatchError(f'{where} does not fit this body: ' + ' | '.join(problems))
  return out


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  if tree is None:
    return []
  if isinstance(tree, Mapping):
    return [p for k in tree for p in _leaf_paths(tree[k], prefix + (k,))]
  return [prefix]


def from_keras_model(model: Any) -> list[tuple[str, list[np.ndarray]]]:
  """``(layer name, [arrays])`` of a live Keras model's weighted layers, for tests and notebooks.

  Keras is not a dependency of fwjax; this only calls ``model.layers`` and
  ``layer.get_weights()`` on an object the caller already has.
  """
  return [(layer.name, [np.asarray(w) for w in layer.get_weights()])
          for layer in model.layers if layer.get_weights()]
