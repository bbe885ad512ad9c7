"""Explicit Keras layer lists for :class:`~fwjax.models.xception.Xception` and
:class:`~fwjax.models.inception_resnet_v2.InceptionResNetV2`.

Each function lists the architecture's weighted Keras layers in ``model.layers`` order as
:class:`~fwjax.models.keras_layers.KerasLayer` (kind, Flax path, Keras name), for
:func:`fwjax.models.keras_layers.fill`. The order must be Keras's exactly: Keras 3's
``.weights.h5`` keys layers by class and position (``layers/conv2d_3`` is the fourth Conv2D of
``model.layers``), and Keras itself loads a legacy ``.h5`` (the ``keras.applications``
downloads) by position too, pairing the file's ``layer_names`` with the model's weighted layers
in order, whatever their names (most InceptionResNetV2 names are session counters).

Keras 3 orders a functional model's layers by depth (the longest path from the layer to the
output, deepest first), and layers of equal depth by when a depth-first walk from the output,
taking each layer's inputs in order, first meets them (``keras/src/ops/function.py``,
``map_graph``). A chain of layers therefore keeps its order, but parallel branches interleave:

* Xception's residual 1x1 convolution and its BatchNorm come after ``blockN_sepconv2_bn``, not
  before ``blockN_sepconv1`` where the Keras source creates them.
* In an Inception block every ``conv2d_bn`` sits at a depth set by how many ``conv2d_bn``s
  follow it in its branch. The layers come out level by level from the block input's side:
  the convolutions of one level (in branch order), then their BatchNorms, then the next level.
  Each block's input is a single tensor every path goes through, so blocks never interleave.
"""

from fwjax.models.keras_layers import KerasLayer


def _top(include_top: bool) -> list[KerasLayer]:
  return [KerasLayer('dense', ('predictions',), 'predictions')] if include_top else []


def xception_layers(include_top: bool = False) -> list[KerasLayer]:
  """Keras's ``Xception`` weighted layers in ``model.layers`` order (80; 81 with the top).

  Args:
    include_top: append the classifier ``predictions`` (Dense 2048 -> classes).

  Returns:
    The layers; Flax path ``('blockI', 'SUB')`` is Keras's ``blockI_SUB``. The residual
    convolutions of blocks 2, 3, 4 and 13 and their BatchNorms are unnamed in Keras
    (``conv2d_N``, ``batch_normalization_N``), so their ``name`` is None.
  """
  layers = [
      KerasLayer('conv2d', ('block1', 'conv1'), 'block1_conv1'),
      KerasLayer('batch_normalization', ('block1', 'conv1_bn'), 'block1_conv1_bn'),
      KerasLayer('conv2d', ('block1', 'conv2'), 'block1_conv2'),
      KerasLayer('batch_normalization', ('block1', 'conv2_bn'), 'block1_conv2_bn'),
  ]
  for i in range(2, 15):
    block = f'block{i}'
    units = (1, 2, 3) if 5 <= i <= 12 else (1, 2)
    for u in units:
      layers += [
          KerasLayer('separable_conv2d', (block, f'sepconv{u}'), f'{block}_sepconv{u}'),
          KerasLayer('batch_normalization', (block, f'sepconv{u}_bn'), f'{block}_sepconv{u}_bn'),
      ]
    if i in (2, 3, 4, 13):
      layers += [KerasLayer('conv2d', (block, 'residual_conv')),
                 KerasLayer('batch_normalization', (block, 'residual_bn'))]
  return layers + _top(include_top)


# The conv2d_bn modules of each Inception block, level by level in Keras's order (see the
# module docstring): each level's convolutions, then the same modules' BatchNorms.
_MIXED_5B = (('branch2_0',), ('branch1_0', 'branch2_1'),
             ('branch0_0', 'branch1_1', 'branch2_2', 'branch_pool'))
_BLOCK35 = (('branch2_0',), ('branch1_0', 'branch2_1'), ('branch0_0', 'branch1_1', 'branch2_2'))
_MIXED_6A = (('branch1_0',), ('branch1_1',), ('branch0_0', 'branch1_2'))
_BLOCK17 = (('branch1_0',), ('branch1_1',), ('branch0_0', 'branch1_2'))  # block8 alike
_MIXED_7A = (('branch2_0',), ('branch0_0', 'branch1_0', 'branch2_1'),
             ('branch0_1', 'branch1_1', 'branch2_2'))


def _levels(prefix: str, levels: tuple[tuple[str, ...], ...]) -> list[KerasLayer]:
  """Unnamed ``conv2d_bn`` layers of one block: per level, the convolutions then the BNs."""
  out = []
  for level in levels:
    out += [KerasLayer('conv2d', (prefix, m, 'conv')) for m in level]
    out += [KerasLayer('batch_normalization', (prefix, m, 'bn')) for m in level]
  return out


def _residual_blocks(block: str, repeats: int, levels: tuple[tuple[str, ...], ...]
                     ) -> list[KerasLayer]:
  """``repeats`` Inception-ResNet blocks; each ends with its named up-projection (with bias)."""
  out = []
  for i in range(1, repeats + 1):
    name = f'{block}_{i}'
    out += [*_levels(name, levels), KerasLayer('conv2d', (name, 'conv'), f'{name}_conv')]
  return out


def inception_resnet_v2_layers(include_top: bool = False) -> list[KerasLayer]:
  """Keras's ``InceptionResNetV2`` weighted layers in ``model.layers`` order (448; 449 with top).

  Args:
    include_top: append the classifier ``predictions`` (Dense 1536 -> classes).

  Returns:
    The layers. Keras names only each residual block's up-projection (``block35_3_conv``,
    Flax ``('block35_3', 'conv')``, with bias) and ``conv_7b``/``conv_7b_bn``; every other
    convolution and BatchNorm is auto-named (``conv2d_17``), so its ``name`` is None.
  """
  layers = []
  for i in range(1, 6):
    layers += [KerasLayer('conv2d', ('stem', f'conv{i}', 'conv')),
               KerasLayer('batch_normalization', ('stem', f'conv{i}', 'bn'))]
  layers += _levels('mixed_5b', _MIXED_5B)
  layers += _residual_blocks('block35', 10, _BLOCK35)
  layers += _levels('mixed_6a', _MIXED_6A)
  layers += _residual_blocks('block17', 20, _BLOCK17)
  layers += _levels('mixed_7a', _MIXED_7A)
  layers += _residual_blocks('block8', 10, _BLOCK17)
  layers += [KerasLayer('conv2d', ('conv_7b', 'conv'), 'conv_7b'),
             KerasLayer('batch_normalization', ('conv_7b', 'bn'), 'conv_7b_bn')]
  return layers + _top(include_top)
