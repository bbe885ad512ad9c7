"""Explicit Keras layer lists for :class:`~fwjax.models.xception.Xception`.

Each function lists the architecture's weighted Keras layers in ``model.layers`` order as
:class:`~fwjax.models.keras_layers.KerasLayer` (kind, Flax path, Keras name), for
:func:`fwjax.models.keras_layers.fill`. The order must be Keras's exactly: Keras 3's
``.weights.h5`` keys layers by class and position (``layers/conv2d_3`` is the fourth Conv2D of
``model.layers``), and Keras itself loads a legacy ``.h5`` (the ``keras.applications``
downloads) by position too, pairing the file's ``layer_names`` with the model's weighted layers
in order, whatever their names.

Keras 3 orders a functional model's layers by depth (the longest path from the layer to the
output, deepest first), and layers of equal depth by when a depth-first walk from the output,
taking each layer's inputs in order, first meets them (``keras/src/ops/function.py``,
``map_graph``). A chain of layers therefore keeps its order, but parallel branches interleave:

* Xception's residual 1x1 convolution and its BatchNorm come after ``blockN_sepconv2_bn``, not
  before ``blockN_sepconv1`` where the Keras source creates them.
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
