"""Fashion-MNIST: the WRN-16-2 recipe in 19 epochs with progressive resizing (20 -> 24 -> 28 px).

python -m resnet_jax.main --config=configs/fashion_mnist_wrn16_2_progressive.py --workdir=DIR
Result and wall time: README's results table and results/fashion_mnist_wrn16_2_prog_e19/.
Why: the 16-epoch recipe is under-trained (train and test top-1 level), and its step cost grows
with the pixel count. Measured in this run's loop (2026-12-03): 422 / 303 / 234 img/s at
20 / 24 / 28 px, so its 19 epochs cost what 13.9 epochs at 28 px do. Result: 94.54%, level with
the 16-epoch run's 94.62% at 16 full-size epochs: on Fashion-MNIST the low-resolution epochs buy
about what they cost, no more (README). That run was float32 on `cpu`; this inherits the base
recipe's bfloat16 on oneDNN (2026-12-07; `--config.half_precision=False
--config.model.conv_impl=cpu` for the run's settings).
"""

from configs import fashion_mnist_wrn16_2


def get_config():
  config = fashion_mnist_wrn16_2.get_config()
  config.num_epochs = 19.0  # 60.0 min measured at 234 img/s (28 px); ~35 projected at 406.
  config.data.resize_schedule = '20:0,24:9,28:14'  # 9 epochs at 0.7x the side, 5 at 0.86x, 5 at 1x.
  config.eval_every_steps = 0  # Only at the end (~15 s each with flip TTA).
  # As its run, where the base recipe has since moved on (41 epochs, p = 0.5, shifted views):
  config.eval_shift = 0  # Flip TTA only.
  config.data.random_erasing = 0.3  # Random Erasing's probability.
  return config
