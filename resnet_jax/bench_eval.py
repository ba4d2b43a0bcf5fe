"""`python -m resnet_jax.bench eval`: eval forward throughput and batch-1 latency."""

from resnet_jax.bench_train import add_arguments
from resnet_jax.bench_train import run_eval as run

__all__ = ['add_arguments', 'run']
