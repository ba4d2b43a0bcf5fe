"""Checks a loaded config against configs/default.py: names, types and possible values."""

import difflib
import importlib.util
import os
from typing import Any

import ml_collections

# Sources the data package reads itself; any other name must be a TFDS builder.
BUILTIN_DATASETS = ('digits', 'fashion_mnist', 'fake', 'image_folder')
_DEFAULT_PATH = os.path.join(os.path.dirname(__file__), '..', 'configs', 'default.py')


class ConfigError(ValueError):
  """A config field has an unknown name, a wrong type or an impossible value."""

  def __init__(self, field: str, value: Any, expected: str, fix: str):
    self.field, self.value = field, value
    super().__init__(f'config.{field}={value!r}: expected {expected}. Fix: {fix}')


def default_config() -> ml_collections.ConfigDict:
  """The field contract: configs/default.py's get_config()."""
  spec = importlib.util.spec_from_file_location('_resnet_jax_default_config', _DEFAULT_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _type_ok(value: Any, reference: Any) -> bool:
  if isinstance(reference, bool):
    return isinstance(value, bool)
  if isinstance(reference, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(reference, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(reference, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(reference))


def _check_fields(config, reference, prefix: str = '') -> None:
  for key in config.keys():
    field = prefix + key
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=3)
      hint = f'did you mean {", ".join(prefix + c for c in close)}?' if close else (
          'remove it, or add it to configs/default.py with a one-line comment.')
      raise ConfigError(field, config[key], 'a field of configs/default.py', hint)
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(field, value, 'a group of fields', f'set fields under {field}.')
      _check_fields(value, ref, field + '.')
    elif not _type_ok(value, ref):
      raise ConfigError(field, value, f'a {type(ref).__name__} (default {ref!r})',
                        f'pass a {type(ref).__name__}.')


def _check_choice(field: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ConfigError(field, value, f'one of {", ".join(map(repr, choices))}',
                      f'pick one of {choices}.')


def _check_dataset(name: str) -> None:
  if name in BUILTIN_DATASETS:
    return
  import tensorflow_datasets as tfds  # Only for TFDS names: the import takes seconds.
  builder = name.split(':')[0].split('/')[0]
  if builder not in tfds.list_builders(with_community_datasets=False):
    close = difflib.get_close_matches(builder, list(BUILTIN_DATASETS) + tfds.list_builders(
        with_community_datasets=False), n=3)
    raise ConfigError('data.name', name, f'one of {BUILTIN_DATASETS} or a TFDS dataset name',
                      f'did you mean {", ".join(close)}?' if close else 'check the spelling.')


def _check_resize_schedule(text: str) -> None:
  from resnet_jax import progressive  # Imported late: it imports jax.
  try:
    progressive.parse(text)
  except ValueError as e:
    raise ConfigError(progressive.FIELD, text, "'SIZE:EPOCH,…' in increasing epochs",
                      f"{e}; or '' for off.") from None


def _check_values(config, num_devices: int | None) -> None:
  from resnet_jax.models import list_models  # Imported late: models is a sibling package.
  models = list(list_models())
  if config.model.name not in models:
    close = difflib.get_close_matches(config.model.name, models, n=3)
    raise ConfigError('model.name', config.model.name,
                      'a name from resnet_jax.models.list_models()',
                      f'did you mean {", ".join(close)}?' if close else f'use one of {models}.')
  _check_dataset(config.data.name)
  if config.batch_size <= 0:
    raise ConfigError('batch_size', config.batch_size, 'a positive global batch size',
                      'set --config.batch_size to e.g. 128.')
  multiple = (num_devices or 1) * config.optim.grad_accum_steps
  if config.batch_size % multiple:
    raise ConfigError(
        'batch_size', config.batch_size,
        f'a multiple of {multiple} ({num_devices or 1} devices x optim.grad_accum_steps='
        f'{config.optim.grad_accum_steps})',
        f'set --config.batch_size={max(multiple, config.batch_size // multiple * multiple)}.')
  if config.optim.grad_accum_steps < 1:
    raise ConfigError('optim.grad_accum_steps', config.optim.grad_accum_steps, 'an integer >= 1',
                      'use 1 for no accumulation.')
  if config.optim.base_lr <= 0:
    raise ConfigError('optim.base_lr', config.optim.base_lr, 'a learning rate > 0',
                      'set --config.optim.base_lr to e.g. 0.1.')
  if config.total_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError('num_epochs', config.num_epochs, '> 0 when total_steps <= 0',
                      'set num_epochs > 0 or total_steps > 0.')
  if not 0 <= config.optim.ema_decay < 1:
    raise ConfigError('optim.ema_decay', config.optim.ema_decay, 'a value in [0, 1)',
                      'use 0 for off or e.g. 0.9999.')
  if not 0 <= config.optim.label_smoothing < 1:
    raise ConfigError('optim.label_smoothing', config.optim.label_smoothing, 'a value in [0, 1)',
                      'use 0 for off or e.g. 0.1.')
  for field, value in (('log_every_steps', config.log_every_steps),
                       ('checkpoint.every_steps', config.checkpoint.every_steps),
                       ('checkpoint.keep', config.checkpoint.keep)):
    if value < 1:
      raise ConfigError(field, value, 'an integer >= 1', f'set --config.{field} to e.g. 100.')
  _check_choice('optim.schedule', config.optim.schedule,
                ('cosine', 'multistep', 'constant', 'onecycle'))
  _check_choice('optim.weight_decay_mode', config.optim.weight_decay_mode,
                ('coupled', 'decoupled'))
  _check_choice('optim.warmup_mode', config.optim.warmup_mode, ('linear', 'constant'))
  _check_choice('data.augment', config.data.augment, ('imagenet', 'cifar', 'none'))
  _check_choice('nonfinite_policy', config.nonfinite_policy, ('stop', 'skip'))
  _check_choice('checkpoint.best_mode', config.checkpoint.best_mode, ('max', 'min'))
  if config.nonfinite_max_skips < 1:
    raise ConfigError('nonfinite_max_skips', config.nonfinite_max_skips, 'an integer >= 1',
                      'set --config.nonfinite_max_skips to e.g. 5.')
  if config.cpu_devices < 0:
    raise ConfigError('cpu_devices', config.cpu_devices, 'an integer >= 0',
                      'use 0 for one virtual CPU device per core, 1 for off.')
  _check_resize_schedule(config.data.resize_schedule)
  from resnet_jax.evaluation import shift_range  # Late, as models above: it imports jax.

  shifts = shift_range(config.data.image_size)
  if config.eval_shift not in shifts:
    raise ConfigError('eval_shift', config.eval_shift, f'pixels in [0, {shifts.stop})',
                      'use 0 for off or e.g. 1 (within data.crop_padding).')
  if config.checkpoint.keep_best < 0:
    raise ConfigError('checkpoint.keep_best', config.checkpoint.keep_best, 'an integer >= 0',
                      'use 0 for off or e.g. 1 to keep the best checkpoint.')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError on the first unknown field, wrong type or impossible value."""
  _check_fields(config, default_config())
  _check_values(config, num_devices)
