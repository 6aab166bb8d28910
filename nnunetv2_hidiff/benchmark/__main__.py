"""``python -m nnunetv2_hidiff.benchmark``: same as the ``nnunetv2_hidiff_benchmark`` console script."""
import sys

from nnunetv2_hidiff.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
