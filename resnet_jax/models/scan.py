"""Converts variables between the unrolled layout and the scanned one (`scan_blocks=True`).

Unrolled: 'layer3_0', 'layer3_1', …, 'layer3_5' (torchvision's names; the checkpoint format).
Scanned:  'layer3_0' and 'layer3_rest' holding blocks 1..n-1 stacked on a leading axis.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp

_REST = re.compile(r'^(layer\d+)_rest$')
_BLOCK = re.compile(r'^(layer\d+)_(\d+)$')


def is_scanned(variables: dict[str, Any]) -> bool:
  """True when any stage's repeated blocks are stacked."""
  return any(_REST.match(k) for coll in variables.values() for k in coll)


def unroll(variables: dict[str, Any]) -> dict[str, Any]:
  """Scanned variables -> unrolled ones (identity for unrolled input)."""
  out = {}
  for collection, tree in variables.items():
    new = {}
    for key, value in tree.items():
      match = _REST.match(key)
      if not match:
        new[key] = value
        continue
      length = jax.tree.leaves(value)[0].shape[0]
      for j in range(length):
        new[f'{match.group(1)}_{j + 1}'] = jax.tree.map(lambda a, j=j: a[j], value)
    out[collection] = new
  return out


def stack(variables: dict[str, Any], stage_sizes) -> dict[str, Any]:
  """Unrolled variables -> the layout of a `scan_blocks=True` model with `stage_sizes`."""
  out = {}
  for collection, tree in variables.items():
    new = {k: v for k, v in tree.items() if not _repeated(k, stage_sizes)}
    for i, n in enumerate(stage_sizes):
      if n > 2:
        blocks = [tree[f'layer{i + 1}_{j}'] for j in range(1, n)]
        new[f'layer{i + 1}_rest'] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    out[collection] = new
  return out


def _repeated(key: str, stage_sizes) -> bool:
  match = _BLOCK.match(key)
  if not match:
    return False
  stage = int(match.group(1)[5:]) - 1
  return int(match.group(2)) >= 1 and stage_sizes[stage] > 2
