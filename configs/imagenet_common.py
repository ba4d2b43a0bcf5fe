"""ImageNet recipe shared by r18..r200 (the flax ImageNet example's): import, then set model.name.

Global batch 1024, SGD + Nesterov 0.9, LR 0.1 x 1024/256 = 0.4 (linear scaling rule), 5 linear
warm-up epochs then cosine to 0 over 100 epochs, coupled L2 weight decay 1e-4 on conv and dense
kernels only. bf16: --config.half_precision=True (params and BN statistics stay fp32).
"""

from configs import default


def get_config(model_name: str):
  config = default.get_config()
  config.model.name = model_name
  config.batch_size = 1024  # 4 x the 256 the LR is quoted for -> peak LR 0.4.
  config.num_epochs = 100.0
  config.log_every_steps = 100
  config.eval_every_steps = -1  # Once per epoch (1,251 steps at batch 1024).
  config.checkpoint.every_steps = 1251  # ~ once per epoch.
  config.data.name = 'imagenet2012'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.augment = 'imagenet'
  config.data.num_workers = 8
  config.optim.base_lr = 0.1
  config.optim.lr_batch_base = 256
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 5.0
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_mode = 'coupled'
  config.optim.weight_decay_exclude = ('bias', 'scale')  # flax example: only kernels (ndim > 1).
  return config
