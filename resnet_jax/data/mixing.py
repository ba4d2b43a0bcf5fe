"""Batch-level mixup and cutmix producing soft targets 'label_probs'."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MixBatch:
  """Mixes each batch with its reverse; the RNG comes from (seed, process, first example index),

  which is carried in the batch, so a restored iterator mixes the next batch exactly as before.
  """

  num_classes: int
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  seed: int = 0
  process_index: int = 0

  def __call__(self, batch: dict) -> dict:
    batch = dict(batch)
    index = batch.pop('index')
    if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
      return batch
    rng = np.random.default_rng([self.seed, self.process_index, int(index[0])])
    image, label = batch['image'], batch['label']
    use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
    if use_cutmix:
      image, lam = cutmix(image, rng.beta(self.cutmix_alpha, self.cutmix_alpha), rng)
    else:
      lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
      image = (lam * image + (1.0 - lam) * image[::-1]).astype(np.float32)
    onehot = np.eye(self.num_classes, dtype=np.float32)[label]
    batch['image'] = image
    batch['label_probs'] = (lam * onehot + (1.0 - lam) * onehot[::-1]).astype(np.float32)
    return batch


def cutmix(image: np.ndarray, lam: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """Pastes a box of area ~(1 - lam) from the reversed batch; returns images and the exact lam."""
  _, h, w, _ = image.shape
  cut = np.sqrt(1.0 - lam)
  ch, cw = int(h * cut), int(w * cut)
  cy, cx = int(rng.integers(h)), int(rng.integers(w))
  y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
  x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
  out = image.copy()
  out[:, y0:y1, x0:x1] = image[::-1, y0:y1, x0:x1]
  return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
