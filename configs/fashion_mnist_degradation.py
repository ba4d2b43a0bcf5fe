"""The degradation study (He et al. 2016, Fig. 6) on Fashion-MNIST: plain vs residual, 20 vs 56.

python -m resnet_jax.main --config=configs/fashion_mnist_degradation.py:cifar_plain56 --workdir=D
The text after ':' names the network (cifar_plain20, cifar_plain56, cifar_resnet20,
cifar_resnet56); launch/degradation_study.sh runs all four and draws the training-error figure.
The paper's optimiser (SGD 0.9, LR 0.1, WD 1e-4, no label smoothing) over a short budget: the
first, constant-LR phase of its schedule, where Fig. 6 already shows the gap.
"""

from configs import fashion_mnist

MODELS = ('cifar_plain20', 'cifar_plain56', 'cifar_resnet20', 'cifar_resnet56')


def get_config(model: str = 'cifar_plain56'):
  if model not in MODELS:
    raise ValueError(f'{model!r}: the degradation study compares {MODELS}.')
  config = fashion_mnist.get_config()
  config.model.name = model
  config.num_epochs = 2.0  # 938 steps: ResNet-56 and plain-56 take ~10 min each on 2 cores.
  config.log_every_steps = 20  # Fine-grained training-error curves.
  config.eval_every_steps = 0  # Test error once, at the end.
  config.cpu_devices = 4  # As the committed runs (before Eigen convolutions; now 2 is as fast).
  config.data.crop_padding = 2  # 28x28 inputs: 2 px shifts (the paper's 4 px on 32x32).
  config.data.host_normalize = False  # uint8 batches, normalised on the device.
  config.optim.schedule = 'constant'  # The paper's LR before its first decay ...
  config.optim.warmup_epochs = 0.2  # ... reached after a short ramp (plain-56 needs one).
  config.optim.nesterov = False  # The paper's plain momentum.
  config.optim.weight_decay = 1e-4  # The paper's value.
  config.checkpoint.every_steps = 1_000
  return config
