"""Helpers shared by the fold diagnostics ``sampler_ablation.py`` and ``noise_rates.py`` (not a public module).

* :func:`add_common_args`: -d, -p, -tr, -f / --folds, --cases, --seed, -device, --threads, --batch, --json;
* :func:`build_trainer`: the fold's trainer, built quietly (nnU-Net's log lines go nowhere, so no extra
  ``training_log_*.txt`` lands in the fold folder), with ``checkpoint_final.pth`` (or a segmentor checkpoint)
  loaded, and a clear error when the checkpoint is missing;
* :func:`validation_slices`: the 2d slices of the first validation cases, centre-cropped/padded to the patch;
* :class:`DiceCounter`: tp/fp/fn per case and class, Dice as nnU-Net summarises it (per case, NaN when
  reference and prediction are both empty, then the mean over cases and over classes);
* :func:`mean_over_folds`, :func:`write_json`.

The nnU-Net environment variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results, and nnUNet_extTrainer for
trainers outside the installed package) must be set by the caller.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


class FoldDataError(RuntimeError):
    """A missing checkpoint, fold or setting; the message says what to do (see :func:`exit_on_error`)."""


@contextlib.contextmanager
def exit_on_error():
    """Turn a FoldDataError into 'error: <message>' on stderr and exit status 2."""
    try:
        yield
    except FoldDataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------- arguments
def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # honours taskset
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def add_common_args(parser: argparse.ArgumentParser, cases: int = 6) -> None:
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainerHiDiff", help="HiDiff trainer class (default nnUNetTrainerHiDiff)")
    parser.add_argument("-f", type=int, default=0, help="fold (default 0)")
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="several folds (overrides -f); the mean over folds is printed at the end")
    parser.add_argument("--cases", type=int, default=cases,
                        help=f"how many validation cases of the fold (the first ones of its split; default {cases})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-device", default="cpu", help="cpu (default), cuda or mps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the CPUs this process may use)")
    parser.add_argument("--batch", type=int, default=64,
                        help="slices per network call (default 64; samples count against it)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every number to this JSON file")


def folds_of(args) -> List[int]:
    return list(args.folds) if args.folds else [args.f]


def setup_torch(args) -> torch.device:
    torch.set_num_threads(args.threads or default_threads())
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FoldDataError("-device cuda was asked for, but torch sees no CUDA device")
    return device


# ---------------------------------------------------------------------------------------------- trainer
def _quiet(cls):
    """A subclass of the trainer class with the same name (nnU-Net derives the output folder from the class
    name) whose print_to_log_file prints nothing and writes no log file."""

    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        return None

    return type(cls.__name__, (cls,), {"print_to_log_file": print_to_log_file, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def fold_folder(args, fold: int) -> str:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(args.d, args.tr, args.p, "2d", fold)


def _missing_dirs(path: str) -> List[str]:
    """path and its ancestors that do not exist yet, deepest first."""
    out = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def build_trainer(args, fold: int, device: torch.device, checkpoint: Optional[str] = None,
                  segmentor_checkpoint: Optional[str] = None):
    """The fold's HiDiff trainer, initialised, with either the fold's ``checkpoint`` (default
    checkpoint_final.pth in the fold folder) or, with ``segmentor_checkpoint``, a plain nnU-Net checkpoint's
    ``network_weights`` loaded into ``trainer.hidiff.segmentor`` (the refiner then stays untrained)."""
    for key in ("nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(key):
            raise FoldDataError(f"the environment variable {key} is not set (set nnUNet_raw, nnUNet_preprocessed, "
                                f"nnUNet_results, and nnUNet_extTrainer for trainers outside the package)")
    folder = fold_folder(args, fold)
    if segmentor_checkpoint is None:
        path = os.path.join(folder, checkpoint or "checkpoint_final.pth")
        if not os.path.isfile(path):
            raise FoldDataError(
                f"no checkpoint {path}. Train the fold first (nnUNetv2_train {args.d} 2d {fold} -tr {args.tr} "
                f"-p {args.p}), or check -d/-p/-tr/-f and nnUNet_results"
                + (", or pass --segmentor-checkpoint" if hasattr(args, "segmentor_checkpoint") else ""))
    elif not os.path.isfile(segmentor_checkpoint):
        raise FoldDataError(f"--segmentor-checkpoint {segmentor_checkpoint} does not exist")

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(sys.stderr):  # nnU-Net's search messages: not part of our output
            cls = recursive_find_trainer_class_by_name(args.tr)
    except Exception as e:  # nnU-Net raises a RuntimeError naming the folders it searched
        raise FoldDataError(f"trainer class {args.tr} not found ({e}); set nnUNet_extTrainer for trainers "
                            f"outside the installed package") from None
    if not hasattr(cls, "training_prior"):
        raise FoldDataError(f"{args.tr} is not a HiDiff trainer (nnUNetTrainerHiDiff or a subclass)")
    # get_trainer_from_args with the quiet class (nnU-Net's own function, minus the class lookup)
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunetv2_hidiff.training.common import HiDiffConfigurationError

    base = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.d if str(args.d).startswith("Dataset")
                                                                   else int(args.d)))
    plans_file = join(base, args.p + ".json")
    if not os.path.isfile(plans_file):
        raise FoldDataError(f"no plans file {plans_file} (check -d and -p)")
    plans = load_json(plans_file)
    plans["continue_training"] = False
    created = _missing_dirs(folder)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            trainer = _quiet(cls)(plans=plans, configuration="2d", fold=fold,
                                  dataset_json=load_json(join(base, "dataset.json")), device=device)
            if segmentor_checkpoint is None:
                trainer.load_checkpoint(os.path.join(folder, checkpoint or "checkpoint_final.pth"))
            else:
                from nnunetv2_hidiff.training.checkpointing import load_whole_segmentor

                trainer.initialize()
                load_whole_segmentor(trainer.hidiff.segmentor, segmentor_checkpoint, device)
    except HiDiffConfigurationError as e:
        raise FoldDataError(str(e)) from None
    finally:
        for d in created:  # the folders nnU-Net's __init__ made for nothing (segmentor-checkpoint mode)
            try:
                os.rmdir(d)
            except OSError:
                break
    trainer.hidiff.eval()
    return trainer


# ---------------------------------------------------------------------------------------------- data
def centre_fit(t: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the last two dims of t (N, C, H, W) to size (h, w)."""
    for dim, target in ((2, size[0]), (3, size[1])):
        n = t.shape[dim]
        if n > target:
            start = (n - target) // 2
            t = t.narrow(dim, start, target)
        elif n < target:
            before = (target - n) // 2
            pad = [0, 0, 0, 0]
            pad[(3 - dim) * 2], pad[(3 - dim) * 2 + 1] = before, target - n - before
            t = torch.nn.functional.pad(t, pad)
    return t


def validation_slices(trainer, n_cases: int) -> dict:
    """The 2d slices of the first ``n_cases`` validation cases of the trainer's fold (split order), each
    centre-cropped/zero-padded to the plan's patch size.

    Returns dict: x (N, C, h, w) float32, y (N, h, w) int64 labels (nnU-Net's -1 outside the mask → 0),
    case (N,) int64 index into ``cases``, cases (ids), spacing (per case: through-plane spacing of the
    preprocessed case, then the configuration's in-plane spacing), patch.
    """
    if trainer.dataset_class is None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        trainer.dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    _, val = trainer.do_split()
    cases = list(val[: max(int(n_cases), 1)])
    if not cases:
        raise FoldDataError(f"fold {trainer.fold} has no validation cases")
    ds = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(cases))
    patch = list(trainer.configuration_manager.patch_size)
    in_plane = list(trainer.configuration_manager.spacing)[-2:]
    xs, ys, idx, spacing = [], [], [], []
    for i, k in enumerate(cases):
        data, seg, _, props = ds.load_case(k)
        d = torch.from_numpy(np.asarray(data[:])).float().permute(1, 0, 2, 3)  # (slices, C, H, W)
        s = torch.from_numpy(np.asarray(seg[:]).astype(np.int64)).permute(1, 0, 2, 3)
        xs.append(centre_fit(d, patch))
        ys.append(centre_fit(s, patch))
        idx.append(torch.full((d.shape[0],), i, dtype=torch.long))
        spacing.append([float(props["spacing"][0]), *map(float, in_plane)])
    return dict(x=torch.cat(xs), y=torch.cat(ys).clamp(min=0)[:, 0], case=torch.cat(idx), cases=cases,
                spacing=spacing, patch=patch)


def chunks(n: int, size: int):
    size = max(int(size), 1)
    for start in range(0, n, size):
        yield start, min(start + size, n)


def class_names(trainer) -> Dict[int, str]:
    labels = trainer.dataset_json.get("labels", {})
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int)}


# ---------------------------------------------------------------------------------------------- metrics
def nanmean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


class DiceCounter:
    """tp/fp/fn per case and foreground class, accumulated over slices (a case's slices form one volume).

    Dice of a class = mean over cases of 2tp / (2tp + fp + fn), a case with an empty reference and an empty
    prediction counting as NaN and left out (nnU-Net's convention); the mean = mean over classes.
    """

    def __init__(self, n_cases: int, classes: Sequence[int]):
        self.classes = list(classes)
        self.counts = torch.zeros(n_cases, len(self.classes), 3, dtype=torch.float64)  # tp, fp, fn

    def add(self, pred: torch.Tensor, ref: torch.Tensor, case: torch.Tensor) -> None:
        """pred, ref: labels (B, h, w); case: (B,) case index."""
        pred, ref, case = pred.cpu(), ref.cpu(), case.cpu()
        for j, c in enumerate(self.classes):
            a, b = pred == c, ref == c
            per_slice = torch.stack([(a & b).sum((1, 2)), (a & ~b).sum((1, 2)), (~a & b).sum((1, 2))], 1)
            self.counts[:, j].index_add_(0, case, per_slice.double())

    def per_case(self) -> torch.Tensor:
        tp, fp, fn = self.counts.unbind(-1)
        den = 2 * tp + fp + fn
        return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, float("nan")))

    def result(self) -> dict:
        per_case = self.per_case()
        per_class = [nanmean(per_case[:, j].tolist()) for j in range(len(self.classes))]
        return {"dice_per_class": per_class, "dice": nanmean(per_class)}

    def mean_dice(self) -> float:
        return self.result()["dice"]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, h, w) int → (B, K, h, w) float32."""
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def fmt_dice(result: dict) -> str:
    per = result.get("dice_per_class", [])
    return " / ".join(f"{v:.3f}" for v in per) + f" ({result.get('dice', float('nan')):.3f})"


# ---------------------------------------------------------------------------------------------- output
def mean_over_folds(items: List):
    """Element-wise mean over folds of equally structured results: values equal in every fold (names, settings)
    are kept; other numbers are averaged (NaN-aware, None = NaN); lists element-wise (equal lengths); dicts
    key-wise (the first fold's keys)."""
    first = items[0]
    if all(type(it) is type(first) and it == first for it in items) and not isinstance(first, (dict, list)):
        return first
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in items):
        return nanmean(items)
    if isinstance(first, dict) and all(isinstance(it, dict) for it in items):
        return {k: mean_over_folds([it.get(k) for it in items]) for k in first}
    if isinstance(first, list) and all(isinstance(it, list) and len(it) == len(first) for it in items):
        return [mean_over_folds([it[i] for it in items]) for i in range(len(first))]
    return first


def _clean(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _clean(obj.item())
    if torch.is_tensor(obj):
        return _clean(obj.tolist())
    return obj


def write_json(path: Optional[str], obj) -> None:
    """Write obj as standard JSON (NaN → null)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(obj), f, indent=1)
    print(f"numbers written to {path}")
