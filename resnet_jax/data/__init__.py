"""Input pipeline: TFDS, IDX, digits, ImageFolder and fake sources through grain."""

from resnet_jax.data.guard import TooManyBadExamplesError
from resnet_jax.data.info import DatasetInfo, dataset_info
from resnet_jax.data.pipeline import create_eval_iterator, create_train_iterator

__all__ = ['DatasetInfo', 'TooManyBadExamplesError', 'create_eval_iterator',
           'create_train_iterator', 'dataset_info']
