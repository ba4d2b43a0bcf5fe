"""Fixtures for the input-pipeline tests: the default data config, and small image folders."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_data_config(**overrides):
  """configs/default.py's data section (loaded by path: the contract), with overrides."""
  path = os.path.join(_ROOT, 'configs', 'default.py')
  spec = importlib.util.spec_from_file_location('_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config().data
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


@pytest.fixture
def make_config():
  return default_data_config


def save_image(path: str, array: np.ndarray, mode: str | None = None, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(
    path, **kwargs)


@pytest.fixture
def image_folder(tmp_path):
  """root/{train,val}/{cat,dog}: 6 + 3 RGB JPEGs per class of assorted sizes."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('val', 3)):
    for label, name in enumerate(('cat', 'dog')):
      for i in range(count):
        h, w = 40 + 7 * i, 50 + 5 * i
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[..., label] = 255  # Class-dependent colour, so images differ by class.
        save_image(str(tmp_path / split / name / f'{i}.jpg'), img, quality=90)
  return str(tmp_path)
