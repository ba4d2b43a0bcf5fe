"""Builds the optional C extension resnet_jax.data._jpegcrop (everything else is in pyproject.toml).

It needs libjpeg(-turbo) headers (Debian: `apt-get install libjpeg62-turbo-dev`); when they are
missing the build skips it (optional=True) and the input pipeline decodes with PIL instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[
  Extension('resnet_jax.data._jpegcrop', ['resnet_jax/data/_jpegcrop.c'], libraries=['jpeg'],
            extra_compile_args=['-O2', '-std=c99', '-Wall'], optional=True),
])
