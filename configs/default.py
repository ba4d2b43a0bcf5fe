"""Every configuration field, with its default and why.

Other configs import this one and override a few lines (see configs/r50.py). Command-line
overrides use `--config.field=value`, e.g. `--config.optim.base_lr=0.2`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # ---- run ---------------------------------------------------------------------------------
  config.seed = 0  # One seed for init, data order, augmentation and dropout: same seed, same run.
  config.batch_size = 128  # GLOBAL batch over all devices; per process: / process_count.
  config.num_epochs = 10.0  # Length in epochs of the train split; unused if total_steps > 0.
  config.total_steps = -1  # Training length in steps; > 0 overrides num_epochs.
  config.log_every_steps = 50  # Metrics leave the device only this often (no per-step host sync).
  # Evaluate on the mean of each image's and its mirror's probabilities (test-time augmentation).
  config.eval_flip = False
  # Also average the image's translations by this many pixels up, down, left and right (border
  # filled as training's pad-and-crop pads): 5 views, 10 with eval_flip; 0 = off.
  config.eval_shift = 0
  config.eval_every_steps = -1  # Evaluate every N steps; -1 = once per epoch, 0 = only at the end.
  config.half_precision = False  # bf16 compute (params and BatchNorm statistics stay fp32).
  config.init_checkpoint = ''  # Path to weights to start from when the workdir has no checkpoint.
  config.distributed = False  # Multi-host: jax.distributed.initialize() (see launch/README.md).
  # '' / -1 below: from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else JAX's
  # auto-detection (SLURM, Cloud TPU, Open MPI, Kubernetes).
  config.distributed_coordinator = ''  # host:port of process 0's coordination service.
  config.distributed_num_processes = -1  # Number of processes in the run.
  config.distributed_process_id = -1  # This process's id, 0 .. num_processes - 1.
  config.distributed_heartbeat_timeout_s = 30  # A peer silent this long is dead: all stop.
  config.distributed_init_timeout_s = 300  # Wait this long for every process to connect.
  config.nonfinite_policy = 'stop'  # NaN/Inf loss or grad norm: stop | skip (keep the old state).
  config.nonfinite_max_skips = 5  # nonfinite_policy=skip: stop after this many skips in a row.
  # Persistent XLA compilation cache: a second start of the same config skips compiling ('' = off).
  config.compilation_cache_dir = '~/.cache/resnet_jax/xla'
  # CPU only: split the host into this many virtual devices that run the data-parallel step
  # side by side (XLA:CPU runs most ops of a step on ~1 core; see resnet_jax/xla_flags.py).
  # 0 = auto (one per available core, up to 8, dividing the batch; one for networks of >= 33
  # blocks on images >= 128 px on <= 2 cores, measured faster: xla_flags.py), 1 = off.
  # GPU/TPU ignore it.
  config.cpu_devices = 0

  # ---- model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = 'cifar_resnet20'  # Any name from resnet_jax.models.list_models().
  config.model.zero_init_residual = True  # Last BN scale of each residual branch starts at 0.
  # Running-stats decay in flax's convention (torch's momentum 0.1 is 0.9); -1 = the model's own.
  config.model.bn_momentum = -1.0
  config.model.bn_epsilon = -1.0  # BatchNorm epsilon; -1 = the model's own (ResNet 1e-5).
  # auto (cpu on CPU; onednn there in bf16 if available) | xla | matmul | cpu | onednn (CPU).
  config.model.conv_impl = 'auto'
  config.model.scan_blocks = False  # nn.scan over repeated blocks: faster compiles of deep nets.
  config.model.remat = False  # Recompute each block in the backward pass to save memory.
  # With remat, how many leading bottleneck stages keep only their input and narrow 3x3 outputs
  # (less memory: models/remat.py, remat_chain); -1 = the model's own (1), 0 = none.
  config.model.remat_chain_stages = -1
  # Store every k-th block output of residual chains longer than 8 blocks (faster on XLA:CPU,
  # see ResNet._stored_blocks); -1 = the model's own choice (2 on CPU), 0 = never.
  config.model.store_every = -1

  # ---- data --------------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.name = 'digits'  # digits | fashion_mnist | fake | image_folder | any TFDS name.
  config.data.dir = ''  # TFDS data_dir, IDX folder or ImageFolder root ('' = default).
  config.data.train_split = 'train'  # Split to train on.
  config.data.eval_split = 'test'  # Split to evaluate on, every example exactly once.
  config.data.image_size = 32  # Side of the square network input, in pixels.
  config.data.augment = 'cifar'  # Train-time augmentation: imagenet | cifar | none.
  config.data.crop_padding = 4  # augment='cifar': zero padding on each side before the crop.
  # Progressive resizing, 'SIZE:EPOCH,…': train at SIZE from EPOCH on (e.g. '20:0,24:8,28:14'),
  # resized on the device; image_size elsewhere and always for eval. '' = off. progressive.py.
  config.data.resize_schedule = ''
  config.data.random_erasing = 0.0  # Random Erasing probability (Zhong et al.; 0.5 typical).
  config.data.randaugment = ''  # RandAugment as 'N,M' (e.g. '2,9'); '' = off.
  config.data.mixup_alpha = 0.0  # Mixup Beta(alpha, alpha); 0 = off.
  config.data.cutmix_alpha = 0.0  # CutMix Beta(alpha, alpha); 0 = off.
  config.data.num_workers = 0  # Decoding worker processes per host; 0 = in the main process.
  config.data.prefetch = 2  # Batches prepared ahead of the train step.
  # False: batches carry uint8 images; the train/eval step must normalise them on the device
  # (resnet_jax.data.processing.normalize_pixels). True: float32, normalised on the host.
  config.data.host_normalize = True
  config.data.max_skip_fraction = 0.01  # Stop once this fraction of examples was undecodable.
  config.data.fake_num_examples = 1024  # data.name == 'fake': examples per split.
  config.data.fake_num_classes = 10  # data.name == 'fake': number of classes.

  # ---- optimiser ---------------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 0.1  # Peak LR for a batch of lr_batch_base (linear scaling rule).
  config.optim.lr_batch_base = 256  # LR = base_lr * batch_size / lr_batch_base (Goyal et al. 2017).
  config.optim.schedule = 'cosine'  # cosine | multistep | constant | onecycle.
  config.optim.warmup_epochs = 0.0  # Linear warm-up from warmup_init_lr, in epochs.
  config.optim.warmup_steps = 0  # Warm-up in steps; > 0 overrides warmup_epochs.
  config.optim.warmup_init_lr = 0.0  # LR at step 0 of the warm-up.
  config.optim.warmup_mode = 'linear'  # linear ramp | constant (hold warmup_init_lr: ResNet-110).
  config.optim.decay_boundaries_epochs = ()  # multistep: epochs where LR *= decay_factor.
  config.optim.decay_boundaries_steps = ()  # multistep: the same in steps; overrides epochs.
  config.optim.decay_factor = 0.1  # multistep: multiplier at each boundary.
  config.optim.momentum = 0.9  # SGD momentum; 0 = plain SGD.
  config.optim.nesterov = True  # Nesterov momentum.
  config.optim.weight_decay = 1e-4  # Weight-decay strength.
  config.optim.weight_decay_mode = 'coupled'  # coupled (L2 in the gradient, paper) | decoupled.
  config.optim.weight_decay_exclude = ('bias', 'scale')  # Leaf names exempt from decay ('' = none).
  config.optim.label_smoothing = 0.0  # Cross-entropy label smoothing.
  config.optim.grad_accum_steps = 1  # Micro-batches per update; batch_size is the effective batch.
  config.optim.ema_decay = 0.0  # EMA of params evaluated alongside; 0 = off.

  # ---- checkpoints -------------------------------------------------------------------------
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000  # Save every N steps (and always at the end).
  config.checkpoint.keep = 2  # Keep the N newest checkpoints.
  config.checkpoint.keep_best = 0  # Also keep the K best by best_metric (saved with an eval).
  config.checkpoint.best_metric = 'eval/top1'  # Metric ranking checkpoints for keep_best.
  config.checkpoint.best_mode = 'max'  # max: higher best_metric is better | min.
  # Debugging/negative-control switch: False leaves the data-iterator position out of the
  # checkpoint, so a resumed run restarts the data order (tests/test_fault_tolerance.py).
  config.checkpoint.save_data_state = True

  # ---- logging -----------------------------------------------------------------------------
  config.log = ml_collections.ConfigDict()
  config.log.tensorboard = True  # Write TensorBoard event files to WORKDIR/tensorboard.
  config.log.progress_bar = True  # Show a progress bar with rate and ETA.
  return config
