"""Explicit maps from Keras applications' weighted layers to the Flax bodies, one per architecture.

Each function lists an architecture's weighted Keras layers in ``model.layers`` order (the order
both weight-file formats follow) as :class:`~fwjax.models.keras_layers.KerasLayer` entries:
Keras's class (``kind``), the Flax module it fills (``path``) and Keras's layer name. The lists
are written out rather than derived from a Keras model, so loading needs neither Keras nor
TensorFlow, and a reader can check each line against ``keras/src/applications/<arch>.py``.
"""

from fwjax.models.keras_names.nasnet import nasnet_large_layers, nasnet_stage_layers  # noqa: F401
from fwjax.models.keras_names.vgg_resnet import (  # noqa: F401
    KERAS_RESNET50_STAGES, keras_resnet50_layers, vgg_layers)
from fwjax.models.keras_names.xception_irv2 import (  # noqa: F401
    inception_resnet_v2_layers, xception_layers)
