"""Fashion-MNIST in 45 minutes on a 2-core CPU: WRN-16-2, 16 epochs, flip TTA.

python -m resnet_jax.main --config=configs/fashion_mnist_wrn16_2.py --workdir=DIR
Result and wall time: README's results table and results/fashion_mnist_wrn16_2_e16/.
Why this shape: on the 2-core machine of the results run WRN-16-2 trained at ~420 img/s (4
virtual devices), so 16 epochs fit in 45 minutes; its 32/64/128 widths learn more per epoch than
ResNet-20's 16/32/64. (`bench train --model wrn16_2 --batch 128 --image-size 28`: 321 img/s
on 2 devices on the ~1.5x slower machine of 2026-12-02.) On a machine where that bench gives
~470 img/s, 19 epochs fit: `--config.num_epochs=19 --config.eval_every_steps=0` gave 94.95%
in 40.9 min (results/fashion_mnist_wrn16_2_e19/). Those runs used conv_impl='cpu'; the recipe
runs on oneDNN's convolutions since (below; `--config.model.conv_impl=cpu` for the old lowering).
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.name = 'wrn16_2'  # 0.69M parameters, pre-activation, 1x1 projections.
  config.num_epochs = 16.0  # ~150 s each at ~420 img/s.
  config.eval_every_steps = 4 * 469  # Every 4 epochs (and at the end): each eval costs ~15 s.
  config.eval_flip = True  # Mean of the image's and its mirror's probabilities.
  config.cpu_devices = 2  # Since Eigen convolutions (xla_flags): 1 or 2 equal, 4 is 0.93x.
  # oneDNN's 3x3 convolutions (the `onednn` extra): 300 steps end to end 1.38x faster than
  # 'cpu' (bench/results/onednn_fashion_mnist_e2e_2026-12-07.json); 'cpu' where oneDNN is
  # missing (logged), XLA's own on GPU/TPU. Runs before 2026-12-08 used 'cpu'.
  config.model.conv_impl = 'onednn'
  config.data.crop_padding = 2  # 28x28 images: shifts of up to 2 px (4 px crops off too much).
  config.data.random_erasing = 0.3  # Random Erasing (Zhong et al.), milder than 0.5 for 16 epochs.
  config.data.host_normalize = False  # uint8 batches, normalised on the device.
  config.optim.schedule = 'cosine'  # After 1 warm-up epoch, down to 0 at the last step.
  config.optim.label_smoothing = 0.1
  config.checkpoint.every_steps = 1_000
  return config
