"""Fashion-MNIST in 45 minutes on a 2-core CPU: WRN-16-2, 41 bf16 epochs, flip and shift TTA.

python -m resnet_jax.main --config=configs/fashion_mnist_wrn16_2.py --workdir=DIR
Results and wall times: README's results table and results/fashion_mnist_wrn16_2_*/.
The epoch count assumes a fast machine of this kind: one where `python -m resnet_jax.bench train
--model wrn16_2 --batch 128 --image-size 28 --num-classes 10 --dtype bfloat16 --conv-impl onednn`
gives ~1200 img/s (training then runs at ~950 img/s end to end, ~61 s per epoch). These
machines vary up to 2x from day to day: on a slow one (that bench at ~600 img/s, ~565 end to
end) 41 epochs take ~80 minutes, and `--config.num_epochs=22` fits 45 (95.05% in 40.2 min,
results/fashion_mnist_wrn16_2_bf16_e22/). Epochs that fit: 45 min x 60 x (end-to-end img/s) /
60,000, less ~1 minute for start-up and the final evaluation.
History: 16 epochs (fp32, Eigen, 94.62%), 19 (94.95%), 22 in bf16 on oneDNN (95.05%); 41 on a
fast machine gave 95.47% with flip TTA and 95.63% with flip and 1 px shifts, in 41.5 + 0.8
min (results/fashion_mnist_wrn16_2_bf16_e41/), hence the shifted views in the final evaluation.
WRN-16-2 because its 32/64/128 widths learn more per epoch than ResNet-20's 16/32/64, while
WRN-16-4 trains at 0.35x its images/s. `--config.half_precision=False
--config.model.conv_impl=cpu` reproduces the float32 rows.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.name = 'wrn16_2'  # 0.69M parameters, pre-activation, 1x1 projections.
  config.num_epochs = 41.0  # ~61 s each at ~950 img/s (bf16 on oneDNN, a fast machine).
  config.eval_every_steps = 0  # Only the final evaluation (10 views: ~50 s on a fast machine).
  config.eval_flip = True  # Mean of the image's and its mirror's probabilities...
  config.eval_shift = 1  # ...and of their 1 px translations: 10 views.
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
  config.data.random_erasing = 0.5  # Zhong et al.'s Random Erasing p (0.3 for <= 24 epochs).
  config.data.host_normalize = False  # uint8 batches, normalised on the device.
  config.optim.schedule = 'cosine'  # After 1 warm-up epoch, down to 0 at the last step.
  config.optim.label_smoothing = 0.1
  config.checkpoint.every_steps = 1_000
  return config
