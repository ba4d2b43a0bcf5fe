"""Top-k accuracy, metric writers (JSONL + TensorBoard, process 0 only), and the progress bar."""

import json
import os

import jax
import jax.numpy as jnp
import tqdm


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 if the label is among the k highest logits, else 0.0."""
  k = min(k, logits.shape[-1])  # top-5 of a 3-class problem is top-3: always correct.
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl and TensorBoard events; silent off process 0."""

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard') if tensorboard else None
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(self.jsonl_path, 'a')  # Append: a resumed run continues the same file.
    if self.tensorboard_dir:
      # Imported here so runs without TensorBoard never pay for it.
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(self.tensorboard_dir)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """One JSON line {'step': step, **scalars} and one TensorBoard scalar per key."""
    if not self.enabled:
      return
    scalars = {key: float(value) for key, value in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both files."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def create_progress_bar(total_steps: int, initial_step: int, enabled: bool) -> tqdm.tqdm:
  """A tqdm bar over training steps showing rate and ETA; disabled off process 0."""
  return tqdm.tqdm(total=total_steps, initial=initial_step, disable=not enabled,
                   unit='step', dynamic_ncols=True, desc='train')
