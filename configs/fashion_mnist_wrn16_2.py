"""Fashion-MNIST in 45 minutes on a 2-core CPU: WRN-16-2, 22 epochs in bfloat16, flip TTA.

python -m resnet_jax.main --config=configs/fashion_mnist_wrn16_2.py --workdir=DIR
Result and wall time: README's results table and results/fashion_mnist_wrn16_2_e16/.
Why this shape: on the 2-core machine of the results run WRN-16-2 trained at ~420 img/s (4
virtual devices), so 16 epochs fit in 45 minutes; its 32/64/128 widths learn more per epoch than
ResNet-20's 16/32/64. (`bench train --model wrn16_2 --batch 128 --image-size 28`: 321 img/s
on 2 devices on the ~1.5x slower machine of 2026-12-02.) On a machine where that bench gives
~470 img/s, 19 epochs fit: `--config.num_epochs=19 --config.eval_every_steps=0` gave 94.95%
in 40.9 min (results/fashion_mnist_wrn16_2_e19/). Those runs used conv_impl='cpu'; the recipe
runs on oneDNN's convolutions since (below; `--config.model.conv_impl=cpu` for the old lowering),
and in bfloat16 since 2026-12-07 (below; `--config.half_precision=False` for float32): 24 epochs
gave 95.15% in 45.3 min at ~540 img/s on a slow machine (results/fashion_mnist_wrn16_2_bf16_e24/;
float32's 24 epochs: 95.04%), hence 22 here.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.name = 'wrn16_2'  # 0.69M parameters, pre-activation, 1x1 projections.
  config.num_epochs = 22.0  # ~113 s each at ~540 img/s (bf16 on oneDNN, a slow machine).
  config.eval_every_steps = 8 * 469  # Every 8 epochs (and at the end): each eval costs ~10 s.
  config.eval_flip = True  # Mean of the image's and its mirror's probabilities.
  config.cpu_devices = 2  # Since Eigen convolutions (xla_flags): 1 or 2 equal, 4 is 0.93x.
  # oneDNN's 3x3 convolutions (the `onednn` extra): 300 steps end to end 1.38x faster than
  # 'cpu' (bench/results/onednn_fashion_mnist_e2e_2026-12-07.json); 'cpu' where oneDNN is
  # missing (logged), XLA's own on GPU/TPU. README's rows say which lowering each run used.
  config.model.conv_impl = 'onednn'
  # bf16 activations on oneDNN's bf16 kernels (avx512_bf16 CPUs), float32 accumulation and
  # parameters: WRN-16-2 b128@28 1.59x float32's step on oneDNN (bench/results/
  # onednn_bf16_vs_f32_wrn16_2_b128_2026-12-07.json); 24 epochs reached float32's accuracy.
  config.half_precision = True
  config.data.crop_padding = 2  # 28x28 images: shifts of up to 2 px (4 px crops off too much).
  config.data.random_erasing = 0.3  # Random Erasing (Zhong et al.), milder than 0.5 for 16 epochs.
  config.data.host_normalize = False  # uint8 batches, normalised on the device.
  config.optim.schedule = 'cosine'  # After 1 warm-up epoch, down to 0 at the last step.
  config.optim.label_smoothing = 0.1
  config.checkpoint.every_steps = 1_000
  return config
