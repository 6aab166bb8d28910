"""``nnunetv2_hidiff_trainers``: prints the absolute path of the trainer folder that ships with the package, and
nothing else, for nnU-Net's ``nnUNet_extTrainer``:

    export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers)
    nnUNetv2_train 901 2d 0 -tr nnUNetTrainerHiDiff

The folder is nnunetv2_hidiff/nnunet_trainers/ of the installed package; nnU-Net finds every nnunetv2_hidiff trainer
there by its class name. To keep trainers of your own as well, join the folders with ':' (os.pathsep), e.g.
``export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers):/path/to/my_trainers``.
"""
from __future__ import annotations

import argparse

# nnunetv2_hidiff.nnunet_trainers imports only pathlib, so the command starts without torch or nnU-Net (it runs
# inside $(...) in shells and job scripts).
from nnunetv2_hidiff.nnunet_trainers import FOLDER


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunetv2_hidiff_trainers", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the absolute path of nnunetv2_hidiff's trainer folder (and nothing else), so that\n"
                    "    export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers)\n"
                    "lets nnUNetv2_train, nnUNetv2_predict and nnunetv2_hidiff_* find every nnunetv2_hidiff trainer "
                    "by its class name.",
        epilog="To keep trainers of your own as well, join the folders with ':':\n"
               "    export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers):/path/to/my_trainers")
    parser.parse_args(argv)
    if not (FOLDER / "hidiff_trainers.py").is_file():
        raise SystemExit(f"nnunetv2_hidiff_trainers: {FOLDER / 'hidiff_trainers.py'} is missing; the installed package "
                         "is incomplete (reinstall nnunetv2-hidiff)")
    print(FOLDER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
