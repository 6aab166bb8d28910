"""The package's one compiled part: the packed XNOR-popcount kernels of the binarized refiner (plain C, no Python or
torch headers), built with the system compiler as an optional extension: if it cannot be built the install still
succeeds and nnunetv2_hidiff/networks/packed.py compiles the same source at first use or falls back to the
simulated binary path. Everything else is configured in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("nnunetv2_hidiff._xnor", sources=["nnunetv2_hidiff/networks/xnor_kernels.c"],
                             extra_compile_args=["-O3"], optional=True)])
