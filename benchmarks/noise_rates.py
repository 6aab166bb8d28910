"""The noise rate the refiner learns from versus the one it meets (issue 12: "make the refinement earn its place").

    python benchmarks/noise_rates.py -d 901 -p nnUNetPlans_hidiffCPU -tr nnUNetTrainerHiDiff -f 0 --cases 6 \\
        --batches 20 [--temperature-max 1 2 4] [--logit-noise 0 0.5 1] [--folds 0 1 2 3 4] [--json out.json]
    SEG=$nnUNet_results/Dataset901_Hippocampus/nnUNetTrainerBaseline_cpu400__nnUNetPlans_hidiffCPU__2d
    python benchmarks/noise_rates.py ... --segmentor-checkpoint "$SEG/fold_{fold}/checkpoint_final.pth"

The forward process flips an entry (pixel, channel) of the one-hot label y0 with probability
(1 − ᾱ_t)·|p − y0| (p: the segmentor prior), so |p − y0| is the noise the refiner is trained to undo. This
prints, per channel (background included) and over all channels,

  * mean |p − y0|,
  * the noise rate: mean over t = 1..T of (1 − ᾱ_t)·|p − y0| (= mean |p − y0| times the mean of 1 − ᾱ_t),
  * the share of entries with |p − y0| > 0.5 (entries the segmentor's prior gets wrong),
  * the share of pixels whose argmax p differs from the label (the segmentor's errors),

on (a) ``--batches`` training batches from nnU-Net's training dataloader (augmented, patch sampling with
foreground oversampling, segmentor in train mode, deep supervision on: exactly what the refiner step sees),
with the trainer's own prior ``trainer.training_prior(logits)`` (the class's prior_temperature_max /
prior_logit_noise perturbation), with the plain softmax, with the out-of-fold priors when the trainer has them
(``oof_prior_trainer`` or ``nnUNet_HiDiff_oof_priors``: the other folds' segmentors on the same batch), and
with every ``--temperature-max`` ×
``--logit-noise`` setting of ``perturbed_prior`` (the same batches and logits for all of them), and on (b)
the 2d slices of the first ``--cases`` validation cases (centre-cropped/padded to the patch; segmentor in
eval mode, plain softmax: what the refiner meets in prediction), and on (c) as many unaugmented batches of
the training cases (nnU-Net's validation-batch loader over the training split, segmentor in eval mode: what
``refiner_batches = "clean"`` trains the refiner on). Pick the setting whose training noise rate matches
validation.

The model is the fold's ``checkpoint_final.pth``, or, with ``--segmentor-checkpoint PATH`` (``{fold}`` in
PATH is replaced by the fold), a plain nnU-Net checkpoint whose ``network_weights`` are loaded into the HiDiff
trainer's segmentor; the fold's own checkpoint and the refiner are then not needed. nnU-Net's environment
variables must be set (nnUNet_n_proc_DA=0 keeps the dataloader in this process). Numbers only, no asserts.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from typing import List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fold_data import (add_common_args, build_trainer, chunks, class_names, exit_on_error,  # noqa: E402
                        folds_of, mean_over_folds, one_hot, setup_torch, validation_slices, write_json)


class NoiseStats:
    """Sums over pixels of |p − y0| and of the error indicators, per channel."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.pixels = 0
        self.abs = torch.zeros(num_classes, dtype=torch.float64)
        self.wrong = torch.zeros(num_classes, dtype=torch.float64)  # |p − y0| > 0.5
        self.frequency = torch.zeros(num_classes, dtype=torch.float64)  # Σ y0
        self.argmax_errors = 0

    def add(self, prior: torch.Tensor, labels: torch.Tensor) -> None:
        """prior (B, K, h, w) probabilities; labels (B, h, w) int."""
        prior, labels = prior.float().cpu(), labels.long().cpu()
        y0 = one_hot(labels, self.k)
        diff = (prior - y0).abs()
        axes = (0, 2, 3)
        self.pixels += labels.numel()
        self.abs += diff.sum(axes).double()
        self.wrong += (diff > 0.5).sum(axes).double()
        self.frequency += y0.sum(axes).double()
        self.argmax_errors += int((prior.argmax(1) != labels).sum())

    def result(self, one_minus_alpha_bars: List[float]) -> dict:
        n = max(self.pixels, 1)
        mean_abs = (self.abs / n).tolist()
        overall = float(self.abs.sum() / (n * self.k))
        c = float(np.mean(one_minus_alpha_bars))
        return {"pixels": self.pixels, "mean_abs_diff_per_class": mean_abs, "mean_abs_diff": overall,
                "noise_rate_per_class": [c * v for v in mean_abs], "noise_rate": c * overall,
                "noise_rate_per_t": [float(a) * overall for a in one_minus_alpha_bars],
                "wrong_share_per_class": (self.wrong / n).tolist(),
                "wrong_share": float(self.wrong.sum() / (n * self.k)),
                "argmax_error_share": self.argmax_errors / n, "class_share": (self.frequency / n).tolist()}


def _logits_and_labels(tr, batch: dict):
    """(data, the segmentor's top logits, labels (B, h, w)) of one nnU-Net batch, in the network's current mode."""
    data, target = tr._to_device(batch)
    labels = (target[0] if isinstance(target, list) else target)[:, 0].long().clamp(min=0)
    with tr._autocast():
        logits = tr.hidiff.top_logits(tr.hidiff.segment(data).logits)
    return data, logits, labels


def run_fold(args, fold: int, device: torch.device) -> dict:
    from nnunetv2_hidiff.training.common import perturbed_prior

    started = time.perf_counter()
    seg_ckpt = args.segmentor_checkpoint.replace("{fold}", str(fold)) if args.segmentor_checkpoint else None
    tr = build_trainer(args, fold, device, checkpoint=args.checkpoint, segmentor_checkpoint=seg_ckpt)
    net = tr.hidiff
    K = net.num_classes
    ab = net.diffusion.alpha_bars
    one_minus = [1 - float(ab[t]) for t in range(1, net.diffusion.num_steps + 1)]
    names = class_names(tr)

    # (b) validation slices: segmentor in eval mode, plain softmax
    tr.set_deep_supervision_enabled(False)
    net.eval()
    data = validation_slices(tr, args.cases)
    val = NoiseStats(K)
    with torch.no_grad():
        for lo, hi in chunks(data["x"].shape[0], args.batch):
            val.add(net.prior_from_logits(net.segment(data["x"][lo:hi].to(device)).logits), data["y"][lo:hi])

    # (a) training batches: nnU-Net's augmented dataloader, segmentor in train mode, deep supervision on
    settings = [("trainer prior (training_prior)", "trainer", float(tr.prior_temperature_max),
                 float(tr.prior_logit_noise)),
                ("plain softmax", "plain", 1.0, 0.0)]
    if args.temperature_max or args.logit_noise:
        for tm in args.temperature_max or [float(tr.prior_temperature_max)]:
            for ln in args.logit_noise or [float(tr.prior_logit_noise)]:
                settings.append((f"perturbed_prior τ_max={tm:g} σ={ln:g}", "grid", float(tm), float(ln)))
    from nnunetv2_hidiff.training.oof_priors import OutOfFoldPriors, oof_template

    template = oof_template(tr)  # the trainer's out-of-fold priors (oof_prior_trainer / nnUNet_HiDiff_oof_priors)
    oof = OutOfFoldPriors.load(tr, template, record=False) if template else None  # a reader
    if oof is not None:
        settings.append(("out-of-fold priors (plain softmax)", "oof", 1.0, 0.0))
    stats = [NoiseStats(K) for _ in settings]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tr.diffusion_rng.manual_seed(args.seed)
    grid_rng = torch.Generator(device=device).manual_seed(args.seed + 1)
    state = {k: v.detach().clone() for k, v in net.segmentor.state_dict().items()}  # BatchNorm stats, if any
    tr.set_deep_supervision_enabled(True)
    net.segmentor.train()
    with contextlib.redirect_stdout(sys.stderr):
        dl_tr, dl_val = tr.get_dataloaders()
    batch_size = patch = None
    try:
        with torch.no_grad():
            for _ in range(args.batches):
                batch = next(dl_tr)
                data_b, logits, labels = _logits_and_labels(tr, batch)
                batch_size, patch = int(data_b.shape[0]), list(data_b.shape[2:])
                for s, (_, kind, tm, ln) in zip(stats, settings):
                    if kind == "trainer":
                        prior = tr.training_prior(logits)
                    elif kind == "plain":
                        prior = torch.softmax(logits.float(), 1)
                    elif kind == "oof":
                        with tr._autocast():
                            prior = torch.softmax(oof.replace(data_b, batch.get("keys"), logits).float(), 1)
                    else:
                        prior = perturbed_prior(logits, tm, ln, grid_rng)
                    s.add(prior, labels)
    finally:
        for dl in (dl_tr, dl_val):
            finish = getattr(dl, "_finish", None)
            if finish is not None:
                finish()
        net.segmentor.load_state_dict(state)
        net.eval()
    # (c) the same number of unaugmented batches of the training cases (refiner_batches = "clean"): nnU-Net's
    # validation-batch loader over the training split, segmentor in eval mode, plain softmax
    from nnunetv2_hidiff.training.clean_batches import unaugmented_training_loader

    clean = NoiseStats(K)
    loader = unaugmented_training_loader(tr)
    with torch.no_grad():
        for _ in range(args.batches):
            _, logits, labels = _logits_and_labels(tr, next(loader))
            clean.add(torch.softmax(logits.float(), 1), labels)
    tr.set_deep_supervision_enabled(False)
    return {"fold": fold, "cases": data["cases"], "slices": int(data["x"].shape[0]),
            "class_names": [names.get(c, str(c)) for c in range(K)], "num_diffusion_steps": net.diffusion.num_steps,
            "mean_one_minus_alpha_bar": float(np.mean(one_minus)),
            "model": seg_ckpt or os.path.join(tr.output_folder, args.checkpoint),
            "validation": val.result(one_minus),
            "training": [{"label": label, "kind": kind, "temperature_max": tm, "logit_noise": ln,
                          **s.result(one_minus)} for s, (label, kind, tm, ln) in zip(stats, settings)],
            "training_unaugmented": clean.result(one_minus),
            "training_batches": args.batches, "batch_size": batch_size, "patch": patch,
            "seconds": round(time.perf_counter() - started, 1)}


def _row(label: str, r: dict) -> str:
    def per(key):
        return " / ".join(f"{v:.4f}" for v in r[key + "_per_class"]) + f" ({r[key]:.4f})"

    # pixels: an int per fold; in the mean over folds a float when the folds' counts differ (rounded here)
    return (f"{label:46s} {round(r['pixels']):>10d}  {per('mean_abs_diff'):34s} {per('noise_rate'):34s} "
            f"{per('wrong_share'):34s} {r['argmax_error_share']:.4f}")


def report(res: dict, title: str) -> None:
    names = " / ".join(res["class_names"])
    print(f"\n=== {title}; T = {res['num_diffusion_steps']}, mean over t of 1 − ᾱ_t = "
          f"{res['mean_one_minus_alpha_bar']:.4f}; per channel {names} (all) ===")
    print(f"{'source':46s} {'pixels':>10s}  {'mean |p − y0|':34s} {'noise rate (1 − ᾱ_t)|p − y0|':34s} "
          f"{'share |p − y0| > 0.5':34s} argmax errors")
    print(_row("validation (eval mode, softmax)", res["validation"]))
    rows = [(f"training: {r['label']}", r) for r in res["training"]]
    if "training_unaugmented" in res:
        rows.append(("training cases unaugmented (eval, softmax)", res["training_unaugmented"]))
    for label, r in rows:
        print(_row(label, r))
    v = res["validation"]["noise_rate"]
    print("training noise rate / validation noise rate: " + ", ".join(
        f"{label.removeprefix('training: ')} {r['noise_rate'] / v:.2f}" if v > 0 else f"{label} n/a"
        for label, r in rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, cases=6)
    parser.add_argument("--batches", type=int, default=20, help="training batches (default 20)")
    parser.add_argument("--temperature-max", type=float, nargs="+", default=None,
                        help="τ_max values for perturbed_prior (with --logit-noise: every combination)")
    parser.add_argument("--logit-noise", type=float, nargs="+", default=None, help="σ values for perturbed_prior")
    parser.add_argument("--segmentor-checkpoint", default=None, metavar="PATH",
                        help="a plain nnU-Net checkpoint for the segmentor instead of the fold's HiDiff checkpoint "
                             "({fold} is replaced by the fold)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in the fold folder")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    if any(t < 1 for t in args.temperature_max or []):
        parser.error("--temperature-max values must be at least 1")
    if any(s < 0 for s in args.logit_noise or []):
        parser.error("--logit-noise values must be at least 0")
    with exit_on_error():
        device = setup_torch(args)
    results = []
    for fold in folds_of(args):
        with exit_on_error():
            res = run_fold(args, fold, device)
        report(res, f"fold {fold}: {res['training_batches']} training batches of {res['batch_size']} × "
                    f"{'×'.join(map(str, res['patch']))}, {res['slices']} validation slices of {len(res['cases'])} "
                    f"cases, {res['seconds']} s")
        results.append(res)
        sys.stdout.flush()
    mean = mean_over_folds(results)
    mean.update(fold=folds_of(args), cases=[c for r in results for c in r["cases"]])
    if len(results) > 1:
        report(mean, f"mean over folds {folds_of(args)}")
    write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "folds": results,
                           "mean_over_folds": mean})


if __name__ == "__main__":
    main()
