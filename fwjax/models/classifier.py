"""The descriptor classifier: preprocessing -> ResNet-50 body -> multilabel head.

Top-level parameter keys are ``'preprocess'`` (absent for ``no_tfm``), ``'body'`` (exactly
:class:`~fwjax.models.resnet.ResNet50`'s keys without ``fc``, so
``pretrained.load_torchvision(path, include_fc=False)`` drops in with :func:`insert_body`) and
``'head'``. The paper's three parameter groups (discriminative learning rates) follow from the
path alone, see :func:`param_group` / :func:`param_labels`:

====  =====================================  ==========================================
group  parameters                             phase 1 (head only) / phase 2 (lr)
====  =====================================  ==========================================
0      body conv1, bn1, layer1, layer2        frozen except BatchNorm / 1e-6
1      body layer3, layer4                    frozen except BatchNorm / 1e-5
2      preprocess, head                       trained at 1e-3 / 1e-4
====  =====================================  ==========================================

Example:
  >>> model = DescriptorClassifier(preprocess='inc_d')
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 352, 144, 3)))
  >>> variables = insert_body(variables, pretrained.load_torchvision(path, include_fc=False))
  >>> logits = model.apply(variables, x, train=True, rngs={'dropout': key},
  ...                      mutable=['batch_stats'])[0]
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fwjax.models import head as head_lib
from fwjax.models import preprocess as preprocess_lib
from fwjax.models import resnet

PREPROCESSING = preprocess_lib.PREPROCESSING
NUM_PARAM_GROUPS = 3
_GROUP_OF_BODY_PART = {'conv1': 0, 'bn1': 0, 'layer1': 0, 'layer2': 0, 'layer3': 1, 'layer4': 1}


class DescriptorClassifier(nn.Module):
  """Preprocessing (3 -> 3) -> ResNet-50 body -> concat-pool multilabel head.

  Attributes:
    preprocess: one of :data:`PREPROCESSING`.
    num_labels: head outputs (17 descriptors).
    width: body width (64 for pretrained ResNet-50; 8 for tests).
    stage_sizes: body stage sizes.
    dtype: computation dtype (``jnp.bfloat16`` for mixed precision; params stay float32).
    bn_axis_name: mapped axis over which every BatchNorm averages batch statistics (e.g.
      ``'data'`` inside ``shard_map``); None for per-device statistics.
    precision: convolution/matmul precision (``'highest'`` for exact float32 on accelerators).
    head_hidden: hidden widths of the head.
    head_dropout_rates: dropout before each head Dense layer.
    head_kernel_init: head Dense initialiser (Glorot uniform).
    branch_features: channels per Inception branch of ``inc``/``inc_d``.
    zero_init_residual: zero-initialise the body's last BN scale per block (from-scratch runs).
  """
  preprocess: str = 'inc_d'
  num_labels: int = 17
  width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  precision: resnet.Precision = None
  head_hidden: Sequence[int] = (512,)
  head_dropout_rates: Sequence[float] = (0.25, 0.5)
  head_kernel_init: Callable[..., jax.Array] = nn.initializers.xavier_uniform()
  branch_features: int = 8
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_feats: bool = False
               ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Scores images.

    Args:
      x: (B, H, W, 3) float32, ImageNet-normalised.
      train: batch statistics, ``batch_stats`` updates (make it mutable) and dropout (pass
        ``rngs={'dropout': key}``).
      return_feats: also return the body's feature dict (for Grad-CAM and feature extraction)
        with ``'input'`` (the preprocessed image) added.

    Returns:
      (B, num_labels) float32 logits, or ``(logits, feats)`` with ``return_feats``.
    """
    if self.preprocess not in PREPROCESSING:
      raise ValueError(f'unknown preprocess {self.preprocess!r}; expected one of {PREPROCESSING}')
    norm = resnet.batch_norm(axis_name=self.bn_axis_name)
    y = preprocess_lib.make_preprocess(
        self.preprocess, dtype=self.dtype, norm=norm, precision=self.precision,
        branch_features=self.branch_features, module_name='preprocess')(x, train=train)
    _, feats = resnet.ResNet50(
        width=self.width, stage_sizes=self.stage_sizes, dtype=self.dtype, norm=norm,
        precision=self.precision, include_top=False,
        zero_init_residual=self.zero_init_residual, name='body')(y, train=train)
    logits = head_lib.MultilabelHead(
        num_labels=self.num_labels, hidden=self.head_hidden,
        dropout_rates=self.head_dropout_rates, kernel_init=self.head_kernel_init,
        dtype=self.dtype, norm=norm, precision=self.precision,
        name='head')(feats['layer4'], train=train)
    if return_feats:
      return logits, {'input': y, **feats}
    return logits


def key_name(entry: Any) -> str:
  """A path entry as a string: plain strings, or jax key-path entries (DictKey, GetAttrKey)."""
  for attr in ('key', 'name'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def param_group(path: Sequence[Any]) -> int:
  """The paper's parameter group (0, 1 or 2) of a parameter, from its path in ``params``.

  Args:
    path: keys from the root of ``variables['params']`` (strings, or the key path entries
      ``jax.tree_util.tree_map_with_path`` passes), e.g. ``('body', 'layer3', 'block0', ...)``.

  Returns:
    0 for body ``conv1``/``bn1``/``layer1``/``layer2``, 1 for body ``layer3``/``layer4``, 2 for
    ``preprocess`` and ``head``.

  Raises:
    ValueError: a path that belongs to none of the groups.
  """
  names = [key_name(p) for p in path]
  if names and names[0] in ('preprocess', 'head'):
    return 2
  if len(names) > 1 and names[0] == 'body' and names[1] in _GROUP_OF_BODY_PART:
    return _GROUP_OF_BODY_PART[names[1]]
  raise ValueError(f'parameter {"/".join(names)} is in no parameter group; expected a path '
                   "under 'preprocess', 'head' or 'body/{conv1,bn1,layer1..layer4}'")


def param_labels(params: Any) -> Any:
  """A tree like ``params`` with each leaf replaced by its :func:`param_group` (for optax)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: param_group(path), params)


def is_batch_norm(path: Sequence[Any]) -> bool:
  """Whether a parameter belongs to a BatchNorm layer (named ``bn``, ``bn*`` or ``*_bn``).

  Useful for fastai's ``train_bn`` (BatchNorm stays trainable while its group is frozen) and for
  exempting BatchNorm from weight decay.
  """
  return any(n == 'bn' or n.startswith('bn') or n.endswith('_bn')
             for n in map(key_name, path[:-1]))


def insert_body(variables: dict[str, Any], body_variables: dict[str, Any]) -> dict[str, Any]:
  """Replaces the classifier's ``body`` with loaded ResNet-50 variables (without ``fc``).

  Args:
    variables: the classifier's variables (``params`` and ``batch_stats``).
    body_variables: ``ResNet50(include_top=False)`` variables, e.g. from
      ``pretrained.load_torchvision(path, include_fc=False)``.

  Returns:
    A new variables dict whose ``body`` entries are ``body_variables`` (cast to the existing
    dtypes); everything else is shared with ``variables``.

  Raises:
    ValueError: the body trees differ (names listed) or a shape differs (e.g. a width-64
      checkpoint into a width-8 classifier, or an ``fc`` left in the loaded variables).
  """
  out = dict(variables)
  for collection in ('params', 'batch_stats'):
    target = variables[collection]['body']
    source = body_variables[collection]
    flat = lambda tree: {jax.tree_util.keystr(p): leaf
                         for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    want, got = flat(target), flat(source)
    problems = [f'missing {k}' for k in sorted(set(want) - set(got))]
    problems += [f'unexpected {k}' for k in sorted(set(got) - set(want))]
    problems += [f'{k}: shape {np.shape(got[k])}, expected {np.shape(want[k])}'
                 for k in sorted(set(want) & set(got)) if np.shape(got[k]) != np.shape(want[k])]
    if problems:
      raise ValueError(f'body variables ({collection}) do not fit the classifier body: '
                       + '; '.join(problems[:20]) + (' ...' if len(problems) > 20 else ''))
    body = jax.tree.map(lambda s, t: jnp.asarray(s, t.dtype), source, target)
    out[collection] = {**variables[collection], 'body': body}
  return out
