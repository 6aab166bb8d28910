"""Wall-clock time of one segmentor forward vs one refiner step (binary-simulated and real).

A benchmark, not a test. For each plan (default: the 901 Hippocampus and 902 DRIVE 2d plans shipped
in tests/data/plans) it builds the HiDiff network at the plan's patch size and times, in eval mode
under torch.no_grad:
  - one segmentor forward (deep supervision off, as in nnU-Net's predictor);
  - one refiner step (one ε̂ prediction) of the binary build and of the real twin;
at batch 1 and at a CPU-sized batch, and prints the implied time of a refined forward
(segmentor + T × refiner step, 1 sample); ``--full`` also times the actual eval forward.

Note: on CPU/GPU with stock PyTorch the binary refiner is *simulated* (sign values in float tensors,
ordinary float convolutions plus the binarization overhead), so it is not faster than the real twin;
the speed-up of Table XI needs XNOR/popcount kernels. Compare with the FLOP counts of
``nnunetv2_hidiff_accounting``.

    python benchmarks/refiner_speed.py [--plans P.json ...] [--repeats 3] [--threads 2] [--cpu-batch 8 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nnunetv2_hidiff.networks import build_hidiff_network_from_plans

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLANS = [ROOT / "tests/data/plans/Dataset901_Hippocampus_nnUNetPlans.json",
                 ROOT / "tests/data/plans/Dataset902_DRIVE_nnUNetPlans.json"]


def _dataset_json(plans_path: Path) -> Path:
    return plans_path.with_name(plans_path.name.replace("_nnUNetPlans.json", "_dataset.json"))


def timeit(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_plan(plans_path: Path, configuration: str, batch_sizes, repeats: int, width: int, full: bool = False):
    plans = json.loads(plans_path.read_text())
    patch = plans["configurations"][configuration]["patch_size"]
    dataset_json = json.loads(_dataset_json(plans_path).read_text())
    nets = {}
    for name, binary in (("binary", True), ("real", False)):
        torch.manual_seed(0)
        net = build_hidiff_network_from_plans(plans, configuration, dataset_json=dataset_json,
                                              enable_deep_supervision=False, binary=binary, refiner_width=width,
                                              prior_residual=False, inference_steps=None)  # T steps, as measured
        nets[name] = net.eval()
    c_in = nets["binary"].refiner.in_channels
    k = nets["binary"].num_classes
    rows = []
    for b in batch_sizes:
        x = torch.randn(b, c_in, *patch)
        with torch.no_grad():
            seg = nets["binary"].segment(x)
            p = nets["binary"].prior_from_logits(seg.logits)
            y = torch.bernoulli(p)
            t_seg = timeit(lambda: nets["binary"].segmentor(x), repeats)
            row = {"plan": plans.get("dataset_name", plans_path.stem), "patch": "x".join(map(str, patch)),
                   "batch": b, "segmentor_s": t_seg}
            for name, net in nets.items():
                feats = net.segment(x).features
                row[f"step_{name}_s"] = timeit(lambda: net.refiner(x, y, p, net.diffusion.num_steps, feats), repeats)
                steps = net.settings()["steps"]
                row[f"implied_full_{name}_s"] = t_seg + steps * row[f"step_{name}_s"]
                if full:
                    row[f"full_{name}_s"] = timeit(lambda: net(x), 1)
        rows.append(row)
        msg = (f"{row['plan']:24s} patch {row['patch']:>8s} batch {b:3d} | segmentor {t_seg * 1e3:9.1f} ms | "
               f"refiner step binary(sim) {row['step_binary_s'] * 1e3:9.1f} ms, real {row['step_real_s'] * 1e3:9.1f} ms"
               f" | seg + {steps} steps: binary(sim) {row['implied_full_binary_s']:6.2f} s, "
               f"real {row['implied_full_real_s']:6.2f} s")
        if full:
            msg += f" | measured eval forward: binary {row['full_binary_s']:6.2f} s, real {row['full_real_s']:6.2f} s"
        print(msg, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=Path, nargs="+", default=DEFAULT_PLANS)
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-batch", type=int, nargs="+", default=[8, 2],
                        help="CPU-sized batch per plan, in the order of --plans (batch 1 is always run)")
    parser.add_argument("--width", type=int, default=32, help="refiner base width")
    parser.add_argument("--full", action="store_true", help="also time the full eval forward (slow)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    rows = []
    for i, plans_path in enumerate(args.plans):
        cpu_batch = args.cpu_batch[min(i, len(args.cpu_batch) - 1)]
        batches = [1] if cpu_batch == 1 else [1, cpu_batch]
        rows += bench_plan(plans_path, args.configuration, batches, args.repeats, args.width, args.full)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
