"""Native kernels called through XLA FFI."""
