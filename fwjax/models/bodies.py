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
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from fwjax.models import (
  inception_resnet_v2,
  keras_layers,
  keras_names,
  nasnet,
  resnet,
  vgg,
  xception,
)

CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    'resnet50': functools.partial(resnet.ResNet50, include_top=False),
    'keras_resnet50': functools.partial(resnet.keras_resnet50, include_top=False),
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
    'xception': xception.Xception,
    'inception_resnet_v2': inception_resnet_v2.InceptionResNetV2,
    'nasnet_large': nasnet.NASNet,  # its defaults are NASNetLarge's configuration
}
"""Body constructors; keyword arguments of :func:`build_body` override their defaults."""

FEATURE_KEYS: dict[str, tuple[str, ...]] = {
    'resnet50': resnet.FEATURE_KEYS,
    'keras_resnet50': resnet.FEATURE_KEYS,
    'vgg16': vgg.FEATURE_KEYS,
    'vgg19': vgg.FEATURE_KEYS,
    'xception': xception.FEATURE_KEYS,
    'inception_resnet_v2': inception_resnet_v2.FEATURE_KEYS,
    'nasnet_large': nasnet.FEATURE_KEYS,
}
"""Names of each body's feature stages, in network order, ending with 'features'."""

PREPROCESSING: dict[str, str] = {
    'resnet50': 'torch',
    'keras_resnet50': 'caffe',
    'vgg16': 'caffe',
    'vgg19': 'caffe',
    'xception': 'tf',
    'inception_resnet_v2': 'tf',
    'nasnet_large': 'tf',
}
"""The :mod:`fwjax.models.imagenet` mode each architecture's pretrained weights expect."""

KERAS_LAYERS: dict[str, Callable[[], list[keras_layers.KerasLayer]]] = {
    'keras_resnet50': keras_names.keras_resnet50_layers,
    'vgg16': functools.partial(keras_names.vgg_layers, 16),
    'vgg19': functools.partial(keras_names.vgg_layers, 19),
    'xception': keras_names.xception_layers,
    'inception_resnet_v2': keras_names.inception_resnet_v2_layers,
    'nasnet_large': keras_names.nasnet_large_layers,
}
"""Each Keras architecture's weighted layers (without top), in ``model.layers`` order."""

TINY: dict[str, dict[str, Any]] = {
    'resnet50': {'width': 8},
    'keras_resnet50': {'width': 8},
    'vgg16': {'width': 8},
    'vgg19': {'width': 8},
    'xception': {'width': 0.125},
    'inception_resnet_v2': {'width': 0.125},
    'nasnet_large': {'num_blocks': 1, 'penultimate_filters': 96, 'stem_block_filters': 8},
}
"""Constructor arguments of a tiny body with the same structure (tests, random baselines)."""

MIN_SIZE: dict[str, int] = {
    'resnet50': 32, 'keras_resnet50': 32, 'vgg16': 32, 'vgg19': 32,
    'xception': xception.MIN_SIZE, 'inception_resnet_v2': inception_resnet_v2.MIN_SIZE,
    'nasnet_large': nasnet.MIN_SIZE,
}
"""The smallest input height and width each body accepts (Keras's own limits)."""


def _check(arch: str, table: dict[str, Any], what: str = 'architecture') -> None:
  if arch not in table:
    raise ValueError(f'unknown {what} {arch!r}; known: {", ".join(sorted(table))}')


def build_body(arch: str, **kwargs: Any) -> nn.Module:
  """Builds a body by name.

  Args:
    arch: one of :data:`CONSTRUCTORS` ('resnet50' is torchvision's v1.5, 'keras_resnet50'
      Keras's v1, 'vgg16', 'vgg19', 'xception', 'inception_resnet_v2', 'nasnet_large').
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
