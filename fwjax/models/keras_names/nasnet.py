"""The explicit Keras layer map of NASNet-A (``keras.applications.NASNetLarge``).

Every weighted layer of Keras's NASNet has an explicit name (``stem_conv1``,
``normal_conv_1_0``, ``separable_conv_1_normal_left1_0``, ``adjust_bn_reduce_6``, ...), and the
Flax body (:class:`fwjax.models.nasnet.NASNet`) uses the same names one level below its cell:
Keras's layer ``NAME`` of the cell with block id ``ID`` fills the Flax module ``cell_ID/NAME``
(``stem_conv1``, ``stem_bn1`` and ``predictions`` sit at the top).

The order is the hard part. Keras 3 lists a functional model's layers (and a ``.weights.h5``
file holds them) not in the order they were created but by decreasing depth, the longest path
from the layer to the model's output, ties broken by the order in which a depth-first walk
from the output first meets them (``keras/src/ops/function.py``, ``map_graph``). In NASNet
that interleaves the branches of a cell (all first separable convolutions of a cell come
before all their BatchNorms, a reduction cell's 1x1 convolution before the adjust projection
created ahead of it, ...), and the pattern changes near the output. Writing that out by hand
would be a guess, so :func:`nasnet_large_layers` states NASNet's graph explicitly, layer by
layer as Keras builds it (weightless layers included, since they count in the depths), and
sorts it with Keras's rule.

Which adjustment a cell's previous input gets depends on shapes: a different width
(``_adjust_block``'s test) means the factorised reduction, a different channel count a 1x1
projection, neither means none. Here widths are tracked as the number of stride-2 steps;
two tensors have equal widths exactly when they have taken equal numbers of steps for every
input Keras accepts (at least 32 pixels: the last reduction then still maps 2 columns to 1).
"""

from __future__ import annotations

import dataclasses

from fwjax.models.keras_layers import KerasLayer


@dataclasses.dataclass(frozen=True)
class _Tensor:
  op: int  # index of the producing layer in _Graph
  channels: int
  level: int  # stride-2 steps taken since the stem convolution


class _Graph:
  """NASNet's Keras layers in creation order, each with its inputs and weighted identity."""

  def __init__(self):
    self.inputs: list[tuple[int, ...]] = []
    self.layers: list[KerasLayer | None] = []

  def add(self, *parents: _Tensor, channels: int | None = None, level: int | None = None,
          layer: KerasLayer | None = None) -> _Tensor:
    """Adds one Keras layer applied to ``parents``; shapes default to the first parent's."""
    self.inputs.append(tuple(t.op for t in parents))
    self.layers.append(layer)
    return _Tensor(len(self.layers) - 1,
                   parents[0].channels if channels is None else channels,
                   parents[0].level if level is None else level)

  def input(self, channels: int) -> _Tensor:
    """The InputLayer."""
    self.inputs.append(())
    self.layers.append(None)
    return _Tensor(len(self.layers) - 1, channels, 0)

  def keras_order(self, output: _Tensor) -> list[KerasLayer]:
    """The weighted layers in Keras 3's ``model.layers`` order (``map_graph``'s rule)."""
    first_seen: dict[int, int] = {}
    post_order: list[int] = []

    def walk(op: int) -> None:  # the depth-first walk of Keras's _build_map_helper
      if op in first_seen:
        return
      first_seen[op] = len(first_seen)
      for parent in self.inputs[op]:
        walk(parent)
      post_order.append(op)

    walk(output.op)
    depth: dict[int, int] = {}
    for op in reversed(post_order):  # every layer comes after all layers that consume it
      d = depth.setdefault(op, 0)
      for parent in self.inputs[op]:
        depth[parent] = max(depth.get(parent, 0), d + 1)
    order = sorted(post_order, key=lambda op: (-depth[op], first_seen[op]))
    return [self.layers[op] for op in order if self.layers[op] is not None]


def _conv(cell: str, name: str) -> KerasLayer:
  return KerasLayer('conv2d', (cell, name), name)


def _bn(cell: str, name: str) -> KerasLayer:
  return KerasLayer('batch_normalization', (cell, name), name)


def _separable(cell: str, name: str) -> KerasLayer:
  return KerasLayer('separable_conv2d', (cell, name), name)


def _separable_conv_block(g: _Graph, x: _Tensor, filters: int, cell: str, block_id: str,
                          strides: int = 1) -> _Tensor:
  """Keras's ``_separable_conv_block``: (ReLU, [pad], separable conv, BN) twice."""
  y = g.add(x)  # ReLU
  if strides == 2:
    y = g.add(y)  # ZeroPadding2D
  y = g.add(y, channels=filters, level=x.level + (strides == 2),
            layer=_separable(cell, f'separable_conv_1_{block_id}'))
  y = g.add(y, layer=_bn(cell, f'separable_conv_1_bn_{block_id}'))
  y = g.add(y)  # ReLU
  y = g.add(y, layer=_separable(cell, f'separable_conv_2_{block_id}'))
  return g.add(y, layer=_bn(cell, f'separable_conv_2_bn_{block_id}'))


def _adjust_block(g: _Graph, p: _Tensor | None, ip: _Tensor, filters: int, cell: str,
                  block_id: str) -> _Tensor:
  """Keras's ``_adjust_block``: fits the previous input ``p`` to the cell's input ``ip``."""
  if p is None:
    return ip
  if p.level != ip.level:
    p = g.add(p)  # ReLU
    p1 = g.add(p, level=ip.level)  # AveragePooling2D 1x1/2
    p1 = g.add(p1, channels=filters // 2, layer=_conv(cell, f'adjust_conv_1_{block_id}'))
    p2 = g.add(p)  # ZeroPadding2D
    p2 = g.add(p2)  # Cropping2D
    p2 = g.add(p2, level=ip.level)  # AveragePooling2D 1x1/2
    p2 = g.add(p2, channels=filters // 2, layer=_conv(cell, f'adjust_conv_2_{block_id}'))
    p = g.add(p1, p2, channels=2 * (filters // 2))  # concatenate
    return g.add(p, layer=_bn(cell, f'adjust_bn_{block_id}'))
  if p.channels != filters:
    p = g.add(p)  # ReLU
    p = g.add(p, channels=filters, layer=_conv(cell, f'adjust_conv_projection_{block_id}'))
    return g.add(p, layer=_bn(cell, f'adjust_bn_{block_id}'))
  return p


def _normal_cell(g: _Graph, ip: _Tensor, p: _Tensor | None, filters: int, block_id: str
                 ) -> tuple[_Tensor, _Tensor]:
  """Keras's ``_normal_a_cell``; returns (output, ip) as Keras does."""
  cell = f'cell_{block_id}'
  p = _adjust_block(g, p, ip, filters, cell, block_id)
  h = g.add(ip)  # ReLU
  h = g.add(h, channels=filters, layer=_conv(cell, f'normal_conv_1_{block_id}'))
  h = g.add(h, layer=_bn(cell, f'normal_bn_1_{block_id}'))
  x1_1 = _separable_conv_block(g, h, filters, cell, f'normal_left1_{block_id}')
  x1_2 = _separable_conv_block(g, p, filters, cell, f'normal_right1_{block_id}')
  x1 = g.add(x1_1, x1_2)
  x2_1 = _separable_conv_block(g, p, filters, cell, f'normal_left2_{block_id}')
  x2_2 = _separable_conv_block(g, p, filters, cell, f'normal_right2_{block_id}')
  x2 = g.add(x2_1, x2_2)
  x3 = g.add(h)  # AveragePooling2D 3x3/1 'same'
  x3 = g.add(x3, p)
  x4_1 = g.add(p)
  x4_2 = g.add(p)
  x4 = g.add(x4_1, x4_2)
  x5 = _separable_conv_block(g, h, filters, cell, f'normal_left5_{block_id}')
  x5 = g.add(x5, h)
  out = g.add(p, x1, x2, x3, x4, x5, channels=p.channels + 5 * filters)  # concatenate
  return out, ip


def _reduction_cell(g: _Graph, ip: _Tensor, p: _Tensor | None, filters: int, block_id: str
                    ) -> tuple[_Tensor, _Tensor]:
  """Keras's ``_reduction_a_cell``; returns (output, ip) as Keras does."""
  cell = f'cell_{block_id}'
  p = _adjust_block(g, p, ip, filters, cell, block_id)
  h = g.add(ip)  # ReLU
  h = g.add(h, channels=filters, layer=_conv(cell, f'reduction_conv_1_{block_id}'))
  h = g.add(h, layer=_bn(cell, f'reduction_bn_1_{block_id}'))
  h3 = g.add(h, level=h.level + 1)  # ZeroPadding2D; the level is that of the pools after it
  x1_1 = _separable_conv_block(g, h, filters, cell, f'reduction_left1_{block_id}', 2)
  x1_2 = _separable_conv_block(g, p, filters, cell, f'reduction_right1_{block_id}', 2)
  x1 = g.add(x1_1, x1_2)
  x2_1 = g.add(h3)  # MaxPooling2D 3x3/2
  x2_2 = _separable_conv_block(g, p, filters, cell, f'reduction_right2_{block_id}', 2)
  x2 = g.add(x2_1, x2_2)
  x3_1 = g.add(h3)  # AveragePooling2D 3x3/2
  x3_2 = _separable_conv_block(g, p, filters, cell, f'reduction_right3_{block_id}', 2)
  x3 = g.add(x3_1, x3_2)
  x4 = g.add(x1)  # AveragePooling2D 3x3/1 'same'
  x4 = g.add(x2, x4)
  x5_1 = _separable_conv_block(g, x1, filters, cell, f'reduction_left4_{block_id}')
  x5_2 = g.add(h3)  # MaxPooling2D 3x3/2
  x5 = g.add(x5_1, x5_2)
  out = g.add(x2, x3, x4, x5, channels=4 * filters)  # concatenate
  return out, ip


def nasnet_large_layers(num_blocks: int = 6, penultimate_filters: int = 4032,
                        stem_block_filters: int = 96, skip_reduction: bool = True,
                        filter_multiplier: int = 2, include_top: bool = False
                        ) -> list[KerasLayer]:
  """NASNet's weighted Keras layers in ``model.layers`` order, each with its Flax module.

  The defaults are ``keras.applications.NASNetLarge`` (532 weighted layers without the top);
  the arguments are those of Keras's ``NASNet`` builder and of
  :class:`fwjax.models.nasnet.NASNet`.

  Args:
    num_blocks: normal cells in each of the three stacks.
    penultimate_filters: channels of the last feature map (24 times the cell filters).
    stem_block_filters: channels of the stem convolution.
    skip_reduction: whether the first normal cell after a reduction takes the cell before the
      reduction as its previous input (NASNetLarge) rather than the reduction's input.
    filter_multiplier: factor between the filters of successive stacks.
    include_top: append the classifier ``predictions``.

  Returns:
    One :class:`~fwjax.models.keras_layers.KerasLayer` per weighted layer, named as Keras
    names it, for :func:`fwjax.models.keras_layers.fill`.

  Raises:
    ValueError: ``penultimate_filters`` is not a multiple of ``24 * filter_multiplier**2``,
      which Keras refuses too.
  """
  if penultimate_filters % (24 * filter_multiplier**2):
    raise ValueError(f'penultimate_filters ({penultimate_filters}) must be a multiple of '
                     f'24 * filter_multiplier**2 = {24 * filter_multiplier**2}')
  filters = penultimate_filters // 24
  g = _Graph()
  x = g.input(3)
  x = g.add(x, channels=stem_block_filters,
            layer=KerasLayer('conv2d', ('stem_conv1',), 'stem_conv1'))
  x = g.add(x, layer=KerasLayer('batch_normalization', ('stem_bn1',), 'stem_bn1'))
  x, p = _reduction_cell(g, x, None, filters // filter_multiplier**2, 'stem_1')
  x, p = _reduction_cell(g, x, p, filters // filter_multiplier, 'stem_2')
  for stack in range(3):
    if stack:
      x, p0 = _reduction_cell(g, x, p, filters, f'reduce_{stack * num_blocks}')
      p = p if skip_reduction else p0
    for i in range(num_blocks):
      block = i if stack == 0 else stack * num_blocks + i + 1
      x, p = _normal_cell(g, x, p, filters, f'{block}')
    filters *= filter_multiplier
  x = g.add(x)  # ReLU
  x = g.add(x)  # GlobalAveragePooling2D
  if include_top:
    x = g.add(x, layer=KerasLayer('dense', ('predictions',), 'predictions'))
  return g.keras_order(x)


def nasnet_stage_layers(num_blocks: int = 6) -> dict[str, str]:
  """Keras's layer whose output each named stage of the Flax NASNet equals.

  Args:
    num_blocks: normal cells in each stack.

  Returns:
    ``{feature key: Keras layer name}`` for the stages up to ``'normal_3'``; ``'last_relu'``
    is the unnamed ReLU after it (Keras's output with ``pooling=None``) and ``'features'``
    the global average pooling (``pooling='avg'``).
  """
  n = num_blocks
  return {'stem': 'stem_bn1', 'stem_1': 'reduction_concat_stem_1',
          'stem_2': 'reduction_concat_stem_2', 'normal_1': f'normal_concat_{n - 1}',
          'reduce_1': f'reduction_concat_reduce_{n}', 'normal_2': f'normal_concat_{2 * n}',
          'reduce_2': f'reduction_concat_reduce_{2 * n}', 'normal_3': f'normal_concat_{3 * n}'}
