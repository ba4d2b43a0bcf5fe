"""CIFAR-10 recipe of He et al. 2016, section 4.2: import, then set model.name.

Batch 128, LR 0.1, momentum 0.9 (not Nesterov), weight decay 1e-4, LR / 10 at 32k and 48k
iterations, stop at 64k (~164 epochs of 50k images). Pad-4 random crop + flip ('cifar').
"""

from configs import default


def get_config(model_name: str):
  config = default.get_config()
  config.model.name = model_name
  config.batch_size = 128
  config.total_steps = 64_000
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.checkpoint.every_steps = 4_000
  config.data.name = 'cifar10'
  config.data.eval_split = 'test'
  config.data.image_size = 32
  config.data.augment = 'cifar'
  config.optim.base_lr = 0.1
  config.optim.lr_batch_base = 128  # LR 0.1 at the paper's batch 128; linear scaling otherwise.
  config.optim.schedule = 'multistep'
  config.optim.decay_boundaries_steps = (32_000, 48_000)
  config.optim.decay_factor = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_mode = 'coupled'
  config.optim.weight_decay_exclude = ()  # The paper's Caffe/Torch setup decayed every weight.
  return config
