"""Builds the optional C extensions (everything else is in pyproject.toml):

- resnet_jax.data._jpegcrop: partial JPEG decoding; needs libjpeg(-turbo) headers (Debian:
  `apt-get install libjpeg62-turbo-dev`).
- resnet_jax.data._resize: Pillow-exact bilinear resize, vectorised; needs only a C compiler.

Each is optional: when one cannot be built, the input pipeline uses PIL for that step instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[
  Extension('resnet_jax.data._jpegcrop', ['resnet_jax/data/_jpegcrop.c'], libraries=['jpeg'],
            extra_compile_args=['-O2', '-std=c99', '-Wall'], optional=True),
  # -O3 for loop vectorisation; no -ffast-math: the integer arithmetic must stay Pillow's.
  Extension('resnet_jax.data._resize', ['resnet_jax/data/_resize.c'],
            extra_compile_args=['-O3', '-std=c99', '-Wall'], libraries=['m'], optional=True),
])
