"""The package's one compiled part: the packed XNOR-popcount kernels of the binarized refiner (plain C, no Python or
torch headers), built with the system compiler as an optional extension: if it cannot be built the install still
succeeds and nnunetv2_hidiff/networks/packed.py compiles the same source at first use or falls back to the
simulated binary path. OpenMP (-fopenmp) lets the kernels share torch's own OpenMP thread pool; a compiler
without it fails this optional build and the run-time compile in packed.py retries without it. Everything else is configured in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("nnunetv2_hidiff._xnor", sources=["nnunetv2_hidiff/networks/xnor_kernels.c"],
                             extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"],
                             optional=True)])
