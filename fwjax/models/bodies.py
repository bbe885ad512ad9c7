"""The feature-extraction bodies by name: constructor, stage names and input preprocessing.

Every body is a ``flax.linen`` module called as ``model.apply(variables, x, train=False)`` and
returning ``(logits_or_None, feats)``, with ``feats`` holding the named stages of
:data:`FEATURE_KEYS` (in network order) and ``feats['features']`` the global average of the last
feature map (Keras's ``include_top=False, pooling='avg'`` output), float32.

Plain dictionaries, one entry per architecture: :data:`CONSTRUCTORS` (name -> constructor),
:data:`FEATURE_KEYS` (name -> stage names), :data:`PREPROCESSING` (name -> the mode of
:mod:`fwjax.models.imagenet` the weights expect) and :data:`KERAS_LAYERS` (name -> the
architecture's weighted Keras layers, for :func:`fwjax.models.pretrained.load_keras`).

Example:
  >>> model = build_body('vgg16')
  >>> variables = pretrained.load_keras('vgg16_notop.h5', 'vgg16')
  >>> _, feats = model.apply(variables, imagenet.preprocess_for('vgg16')(images), train=False)
"""

import functools
from typing import Any
from collections.abc import Callable

import flax.linen as nn

from fwjax.models import keras_layers
from fwjax.models import keras_names
from fwjax.models import resnet
from fwjax.models import vgg

CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    'resnet50': functools.partial(resnet.ResNet50, include_top=False),
    'keras_resnet50': functools.partial(resnet.keras_resnet50, include_top=False),
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
}
"""Body constructors; keyword arguments of :func:`build_body` override their defaults."""

FEATURE_KEYS: dict[str, tuple[str, ...]] = {
    'resnet50': resnet.FEATURE_KEYS,
    'keras_resnet50': resnet.FEATURE_KEYS,
    'vgg16': vgg.FEATURE_KEYS,
    'vgg19': vgg.FEATURE_KEYS,
}
"""Names of each body's feature stages, in network order, ending with 'features'."""

PREPROCESSING: dict[str, str] = {
    'resnet50': 'torch',
    'keras_resnet50': 'caffe',
    'vgg16': 'caffe',
    'vgg19': 'caffe',
}
"""The :mod:`fwjax.models.imagenet` mode each architecture's pretrained weights expect."""

KERAS_LAYERS: dict[str, Callable[[], list[keras_layers.KerasLayer]]] = {
    'keras_resnet50': keras_names.keras_resnet50_layers,
    'vgg16': functools.partial(keras_names.vgg_layers, 16),
    'vgg19': functools.partial(keras_names.vgg_layers, 19),
}
"""Each Keras architecture's weighted layers (without top), in ``model.layers`` order."""


def _check(arch: str, table: dict[str, Any], what: str = 'architecture') -> None:
  if arch not in table:
    raise ValueError(f'unknown {what} {arch!r}; known: {", ".join(sorted(table))}')


def build_body(arch: str, **kwargs: Any) -> nn.Module:
  """Builds a body by name.

  Args:
    arch: one of :data:`CONSTRUCTORS` ('resnet50' is torchvision's v1.5, 'keras_resnet50'
      Keras's v1, 'vgg16', 'vgg19').
    **kwargs: attributes of the module, e.g. ``width=8`` for a tiny test model, ``dtype``,
      ``precision='highest'``; ResNets default to ``include_top=False``.

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  _check(arch, CONSTRUCTORS)
  return CONSTRUCTORS[arch](**kwargs)


def feature_keys(arch: str) -> tuple[str, ...]:
  """The stage names of ``arch``'s feature dict, in network order (ValueError if unknown)."""
  _check(arch, FEATURE_KEYS)
  return FEATURE_KEYS[arch]


def preprocessing_mode(arch: str) -> str:
  """'caffe', 'tf' or 'torch': what ``arch``'s weights expect (ValueError if unknown)."""
  _check(arch, PREPROCESSING)
  return PREPROCESSING[arch]


def keras_layers_for(arch: str) -> list[keras_layers.KerasLayer]:
  """``arch``'s weighted Keras layers (ValueError if it has no Keras weights map)."""
  _check(arch, KERAS_LAYERS, 'Keras architecture')
  return KERAS_LAYERS[arch]()
