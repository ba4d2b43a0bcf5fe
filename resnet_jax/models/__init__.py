"""ResNet family in Flax linen: `create_model(name, **overrides)` and `list_models()`."""

from resnet_jax.models.registry import (
  MODEL_TABLE,
  create_model,
  list_models,
  model_class,
  model_fields,
  residual_blocks,
)
from resnet_jax.models.resnet import ResNet

__all__ = ['MODEL_TABLE', 'ResNet', 'create_model', 'list_models', 'model_class', 'model_fields',
           'residual_blocks']
