"""Fashion-MNIST in 45 minutes on a 2-core CPU: the WRN-16-2 recipe with progressive resizing.

python -m resnet_jax.main --config=configs/fashion_mnist_wrn16_2_progressive.py --workdir=DIR
Result and wall time: README's results table and results/fashion_mnist_wrn16_2_prog_e20/.
Why: the 16-epoch recipe is under-trained (train and test top-1 level), and its step cost grows
with the pixel count: `bench train --model wrn16_2 --batch 128` runs at 329 / 461 / 682 img/s
at 28 / 24 / 20 px (2026-12-03; in the training loop ~320 / 445 / 570). 9 epochs at 20 px and
5 at 24 px then cost what ~8.8 epochs at 28 px do, so 45 minutes hold 19 epochs instead of 16,
the last 5 at full size.
"""

from configs import fashion_mnist_wrn16_2


def get_config():
  config = fashion_mnist_wrn16_2.get_config()
  config.num_epochs = 19.0  # ~44 minutes: 9 x 105 s + 5 x 135 s + 5 x 182 s, plus compiles.
  config.data.resize_schedule = '20:0,24:9,28:14'  # FFCV-like 0.7x -> 1x of the side.
  config.eval_every_steps = 0  # Only at the end (~15 s each with flip TTA).
  return config
