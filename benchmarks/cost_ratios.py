"""HiDiff's cost against nnU-Net's, as the speed issue defines it (a benchmark that prints numbers, not a test).

1. training: ``train_step`` of nnU-Net's own ``nnUNetTrainer`` against each HiDiff trainer (diffusion terms on,
   ``warmup_epochs = 0``) on the same synthetic batch (default 32) at the plan's patch size;
2. eval forward of one patch (batch 1, no_grad): the HiDiffNetwork of each HiDiff trainer with ``refine = True``
   (its default prediction settings: steps, samples, transition) against ``refine = False``.

Plans and dataset.json default to the 901 and 902 default plans shipped in tests/data/plans (nnU-Net's own
planning of the full datasets); no preprocessed data is needed. Medians of --repeats timed calls after one
untimed warm-up call; one process, torch threads as given. Run it on a quiet machine.

    python benchmarks/cost_ratios.py --train-datasets 901 902 --train-patch 902=256x256 --batch 32 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from refiner_speed import timeit  # median of repeats after one warm-up call (same folder)

ROOT = Path(__file__).resolve().parents[1]
PLANS = {"901": ("Dataset901_Hippocampus", ROOT / "tests/data/plans/Dataset901_Hippocampus_nnUNetPlans.json",
                 ROOT / "tests/data/plans/Dataset901_Hippocampus_dataset.json"),
         "902": ("Dataset902_DRIVE", ROOT / "tests/data/plans/Dataset902_DRIVE_nnUNetPlans.json",
                 ROOT / "tests/data/plans/Dataset902_DRIVE_dataset.json")}


def _scratch_nnunet(dataset_name: str) -> str:
    """nnU-Net's trainer wants a preprocessed folder whose file type it can infer, and a results folder."""
    root = tempfile.mkdtemp(prefix="hidiff_cost_")
    folder = Path(root, "pre", dataset_name, "nnUNetPlans_2d")
    folder.mkdir(parents=True)
    (folder / "placeholder.b2nd").touch()
    os.environ["nnUNet_preprocessed"] = str(Path(root, "pre"))
    os.environ["nnUNet_results"] = str(Path(root, "results"))
    return root


def make_trainer(name: str, plans: dict, dataset_json: dict):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_hidiff.trainer_lookup import trainer_class

    cls = nnUNetTrainer if name == "nnUNetTrainer" else trainer_class(name)
    if hasattr(cls, "warmup_epochs"):
        cls = type(name, (cls,), {"warmup_epochs": 0, "pretrained_segmentor": None})
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def synthetic_batch(trainer, batch_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    k = trainer.label_manager.num_segmentation_heads
    labels = torch.randint(0, k, (batch_size, 1, *patch), generator=g)
    data = torch.randn(batch_size, trainer.num_input_channels, *patch, generator=g) + labels.float()
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [int(round(p * s)) for p, s in zip(patch, scale)]
        targets.append(F.interpolate(labels.float(), size=size, mode="nearest"))
    return {"data": data, "target": targets}


def time_train_step(trainer, batch: dict, repeats: int) -> float:
    if hasattr(trainer, "hidiff"):
        trainer.network = trainer.hidiff
    trainer.network.train()
    return timeit(lambda: trainer.train_step(batch), repeats)


def time_patch_forward(trainer_cls, plans: dict, dataset_json: dict, repeats: int, steps=None, samples=None):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    k = pm.get_label_manager(dataset_json).num_segmentation_heads
    c = len(dataset_json["channel_names"])
    net = trainer_cls.build_network_architecture(pm, cm, c, k, enable_deep_supervision=False)
    net.eval()
    net.steps, net.samples = steps or None, samples or None
    x = torch.randn(1, c, *cm.patch_size, generator=torch.Generator().manual_seed(1))
    out = {}
    for refine in (False, True):
        net.refine = refine
        with torch.no_grad():
            out[refine] = timeit(lambda: net(x), repeats)
    settings = net.settings()
    return out[False], out[True], {k: settings[k] for k in ("refine", "steps", "samples", "transition")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["901", "902"], choices=sorted(PLANS))
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerHiDiff", "nnUNetTrainerHiDiff_realRefiner"],
                        help="default: the default trainer and its real-valued twin")
    parser.add_argument("--train-patch", nargs="*", default=[], metavar="DATASET=HxW",
                        help="training patch per dataset, e.g. 902=256x256 (the hidiffCPU preset's DRIVE crops)")
    parser.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--train-datasets", nargs="*", default=["901"],
                        help="datasets whose training step is timed (902's 640² batch of 32 is very slow on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="*", default=[None],
                        help="patch forward: DDIM steps to time (default: each trainer's own)")
    parser.add_argument("--samples", type=int, nargs="*", default=[None], help="patch forward: samples to time")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for ds in args.datasets:
        name, plans_file, dj_file = PLANS[ds]
        plans, dataset_json = json.loads(plans_file.read_text()), json.loads(dj_file.read_text())
        plans["configurations"]["2d"]["batch_size"] = args.batch
        train_plans = copy.deepcopy(plans)
        for spec in args.train_patch:
            key, _, size = spec.partition("=")
            if key == ds:
                train_plans["configurations"]["2d"]["patch_size"] = [int(v) for v in size.split("x")]
        _scratch_nnunet(name)
        if ds in args.train_datasets:
            base = make_trainer("nnUNetTrainer", train_plans, dataset_json)
            batch = synthetic_batch(base, args.batch)
            t_base = time_train_step(base, batch, args.repeats)
            print(f"{ds} train_step nnUNetTrainer: {t_base:.3f} s (batch {args.batch}, patch "
                  f"{list(base.configuration_manager.patch_size)})", flush=True)
            for tr in args.trainers:
                t = time_train_step(make_trainer(tr, train_plans, dataset_json), batch, args.repeats)
                rows.append(dict(dataset=ds, what="train_step", trainer=tr, seconds=t, baseline=t_base,
                                 ratio=t / t_base))
                print(f"{ds} train_step {tr}: {t:.3f} s = {t / t_base:.2f}x", flush=True)
        for tr in args.trainers:
            from nnunetv2_hidiff.trainer_lookup import trainer_class

            cls = trainer_class(tr)
            for steps in args.steps:
                for samples in args.samples:
                    seg, refined, settings = time_patch_forward(cls, plans, dataset_json, args.repeats, steps, samples)
                    rows.append(dict(dataset=ds, what="patch_forward", trainer=tr, seconds=refined, baseline=seg,
                                     ratio=refined / seg, settings=settings))
                    print(f"{ds} patch forward {tr} {settings}: segmentor {seg * 1e3:.1f} ms, refined "
                          f"{refined * 1e3:.1f} ms = {refined / seg:.2f}x", flush=True)
    print("\n| dataset | what | trainer | settings | HiDiff s | nnU-Net / segmentor s | ratio |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        settings = r.get("settings")
        settings = f"{settings['steps']} steps, {settings['samples']} sample(s)" if settings else ""
        print(f"| {r['dataset']} | {r['what']} | {r['trainer']} | {settings} | {r['seconds']:.3f} | "
              f"{r['baseline']:.3f} | {r['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
