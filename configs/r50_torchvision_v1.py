"""ResNet-50 as torchvision's v1 weights were trained: 90 epochs, LR x0.1 at 30/60/80, batch 256.

Plain momentum (no Nesterov), no warm-up, weight decay 1e-4 on every parameter (BN included).
"""

from configs import imagenet_common


def get_config():
  config = imagenet_common.get_config('resnet50')
  config.batch_size = 256  # 8 GPUs x 32 in torchvision's reference.
  config.num_epochs = 90.0
  config.checkpoint.every_steps = 5005  # ~ once per epoch at batch 256.
  config.optim.base_lr = 0.1  # x 256/256.
  config.optim.schedule = 'multistep'
  config.optim.decay_boundaries_epochs = (30.0, 60.0, 80.0)
  config.optim.decay_factor = 0.1
  config.optim.warmup_epochs = 0.0
  config.optim.nesterov = False
  config.optim.weight_decay_exclude = ()  # torch.optim.SGD decays everything.
  config.model.zero_init_residual = False  # torchvision's default at the time.
  return config
