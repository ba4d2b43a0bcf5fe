"""Fashion-MNIST (28x28 grayscale, 60k train / 10k test) from IDX files, ResNet-20 for 30 epochs."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'cifar_resnet20'
  config.batch_size = 128
  config.num_epochs = 30.0
  config.log_every_steps = 100
  config.eval_every_steps = -1  # Once per epoch (469 steps).
  config.checkpoint.every_steps = 2_000
  config.data.name = 'fashion_mnist'
  config.data.dir = '/usr/share/datasets/fashion-mnist'
  config.data.image_size = 28
  config.data.augment = 'cifar'  # Pad-and-crop + flip; flips are label-preserving for clothes.
  config.optim.base_lr = 0.1
  config.optim.lr_batch_base = 128
  config.optim.warmup_epochs = 1.0
  config.optim.weight_decay = 5e-4
  return config
