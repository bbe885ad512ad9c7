"""Explicit maps from Keras applications' weighted layers to the Flax bodies, one per architecture.

Each function lists the architecture's weighted Keras layers in ``model.layers`` order (the order
both weight-file formats follow) as :class:`~fwjax.models.keras_layers.KerasLayer` entries:
Keras's class (``kind``), the Flax module it fills (``path``) and Keras's layer name. The lists
are written out rather than derived from a Keras model, so loading needs neither Keras nor
TensorFlow, and a reader can check each line against ``keras/src/applications/<arch>.py``.

Example:
  >>> layers = vgg_layers(16)
  >>> layers[0]
  KerasLayer(kind='conv2d', path=('block1_conv1',), name='block1_conv1')
"""

from fwjax.models import vgg
from fwjax.models.keras_layers import KerasLayer

KERAS_RESNET50_STAGES = ((2, 3), (3, 4), (4, 6), (5, 3))
"""Keras's stage numbers (``conv2``..``conv5``) and blocks per stage of ResNet50."""


def vgg_layers(depth: int) -> list[KerasLayer]:
  """Keras's VGG16 / VGG19 without top: one ``conv2d`` per ``block{b}_conv{i}``.

  Args:
    depth: 16 or 19.

  Returns:
    The weighted layers in ``model.layers`` order; Flax module names equal Keras's layer names
    (:class:`fwjax.models.vgg.VGG`).

  Raises:
    ValueError: another depth.
  """
  if depth not in vgg.CONVS_PER_BLOCK:
    raise ValueError(f'VGG depth must be one of {sorted(vgg.CONVS_PER_BLOCK)}, got {depth}')
  names = [f'block{b + 1}_conv{i + 1}'
           for b, num_convs in enumerate(vgg.CONVS_PER_BLOCK[depth]) for i in range(num_convs)]
  return [KerasLayer('conv2d', (name,), name) for name in names]


def keras_resnet50_layers(*, include_top: bool = False) -> list[KerasLayer]:
  """Keras's ResNet50 (v1) onto :func:`fwjax.models.resnet.keras_resnet50`.

  Keras names a block's layers ``conv{s}_block{b}_{i}_{conv,bn}`` with ``i = 0`` the projection
  shortcut. Its functional graph puts a first block's layers in the order 1_conv, 1_bn,
  2_conv, 2_bn, 0_conv, 3_conv, 0_bn, 3_bn (Keras orders a functional graph by each layer's
  depth counted from the output, and the shortcut's conv and BN sit at the depths of 3_conv and
  3_bn), which is the order files store them in.

  Args:
    include_top: add the classifier ``predictions`` (a ``dense`` onto Flax ``fc``).

  Returns:
    The weighted layers in ``model.layers`` order.
  """
  layers = [KerasLayer('conv2d', ('conv1',), 'conv1_conv'),
            KerasLayer('batch_normalization', ('bn1',), 'conv1_bn')]
  for s, (stage, num_blocks) in enumerate(KERAS_RESNET50_STAGES):
    for b in range(num_blocks):
      keras_block, flax_block = f'conv{stage}_block{b + 1}', (f'layer{s + 1}', f'block{b}')
      conv, bn = {}, {}
      for i, (flax_conv, flax_bn) in enumerate(
          [('downsample_conv', 'downsample_bn'), ('conv1', 'bn1'), ('conv2', 'bn2'),
           ('conv3', 'bn3')]):
        conv[i] = KerasLayer('conv2d', flax_block + (flax_conv,), f'{keras_block}_{i}_conv')
        bn[i] = KerasLayer('batch_normalization', flax_block + (flax_bn,),
                           f'{keras_block}_{i}_bn')
      if b == 0:  # Every stage of ResNet50 starts with a projection shortcut.
        layers += [conv[1], bn[1], conv[2], bn[2], conv[0], conv[3], bn[0], bn[3]]
      else:
        layers += [conv[1], bn[1], conv[2], bn[2], conv[3], bn[3]]
  if include_top:
    layers.append(KerasLayer('dense', ('fc',), 'predictions'))
  return layers
