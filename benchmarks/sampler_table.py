"""Pool the JSON outputs of benchmarks/sampler_ablation.py over folds into the README's sampler table.

    python benchmarks/sampler_table.py \
        benchmark_results/Dataset901_Hippocampus_issue12/sampler_ablation_w8_joint_bce1_res_cpuWarm500_fold*_8cases.json

Each input holds one or more folds (its "folds" list). For every chain (transition × steps, 1 sample unless
--samples) the table gives the mean over folds of the per-fold mean foreground Dice and HD95, and in how many
folds the chain's Dice is above / equal to (within --tie) / below its segmentor's (argmax p) on the same slices.
A benchmark that prints numbers, not a test.
"""
from __future__ import annotations

import argparse
import glob
import json
from typing import Dict, List, Tuple

import numpy as np

TRANSITION_NAMES = {
    "sample": "Algorithm 2 verbatim: y_{t'} ~ B(m) (`sample`)",
    "threshold": "y_{t'} = 1[m > 0.5] (`threshold`, the v0.1 default)",
    "renoise": "re-noise, shared u: y_{t'} = 1[u < ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p] (`renoise`, the default)",
    "renoise_fresh": "re-noise, fresh draws (`renoise_fresh`)",
    "renoise_threshold": "re-noise to the mode: 1[ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p > 0.5] (`renoise_threshold`)",
}


def load_folds(paths: List[str]) -> List[dict]:
    folds, seen = [], set()
    for path in paths:
        with open(path) as f:
            for fold in json.load(f)["folds"]:
                if fold["fold"] in seen:
                    raise SystemExit(f"{path}: fold {fold['fold']} appears in more than one input")
                seen.add(fold["fold"])
                folds.append(fold)
    if not folds:
        raise SystemExit("no folds in the inputs")
    return sorted(folds, key=lambda f: f["fold"])


def chain_table(folds: List[dict], key: str = "chains") -> Dict[Tuple[str, int, int], List[dict]]:
    table: Dict[Tuple[str, int, int], List[dict]] = {}
    for fold in folds:
        for row in fold[key]:
            table.setdefault((row["transition"], row["steps"], row["samples"]), []).append(row)
    return {k: v for k, v in table.items() if len(v) == len(folds)}  # only chains measured on every fold


def cell(rows: List[dict], segmentor: List[dict], tie: float) -> str:
    dice = np.array([r["dice"] for r in rows])
    seg = np.array([s["dice"] for s in segmentor])
    hd = np.nanmean([r["hd95"] for r in rows])
    better, worse = int(np.sum(dice > seg + tie)), int(np.sum(dice < seg - tie))
    return f"{dice.mean():.3f} / {hd:.2f} ({better}+ {len(dice) - better - worse}= {worse}−)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablations", nargs="+", help="sampler_ablation.py JSON files (globs allowed)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--tie", type=float, default=0.0005, help="|Δ Dice| counted as equal (default 0.0005)")
    args = parser.parse_args(argv)
    paths = sorted({p for pattern in args.ablations for p in (glob.glob(pattern) or [pattern])})
    folds = load_folds(paths)
    seg = [f["segmentor"] for f in folds]
    n_cases = sum(len(f["cases"]) for f in folds)
    print(f"{len(folds)} folds ({', '.join(str(f['fold']) for f in folds)}), {n_cases} validation cases, "
          f"{sum(f['slices'] for f in folds)} slices; {args.samples} sample(s); cells: mean Dice / HD95 (mm) over "
          f"folds (folds above + / equal = / below − the segmentor, |Δ| ≤ {args.tie} counted equal)\n")
    chains = chain_table(folds)
    partial = sorted({row["transition"] for f in folds for row in f["chains"]} - {k[0] for k in chains})
    if partial:
        print(f"left out, not measured on every fold: {', '.join(partial)}\n")
    steps = sorted({k[1] for k in chains}, reverse=True)
    print("| chain (y_T ~ B(p) in all rows) | " + " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    mean = lambda key, m: np.mean([f[key][m] for f in folds])  # noqa: E731
    print(f"| segmentor alone (argmax p) | {mean('segmentor', 'dice'):.3f} / {mean('segmentor', 'hd95'):.2f} |"
          + " |" * (len(steps) - 1))
    print(f"| y_T ~ B(p) itself (argmax) | {mean('start_sample', 'dice'):.3f} / {mean('start_sample', 'hd95'):.2f} |"
          + " |" * (len(steps) - 1))
    extra = [("chain_step_average", "ŷ0 averaged over the steps ({})"), ("prior_mix", "(ŷ0 + p) / 2 ({})")]
    for transition, name in TRANSITION_NAMES.items():
        cells = [cell(chains[(transition, s, args.samples)], seg, args.tie) if (transition, s, args.samples) in chains
                 else "" for s in steps]
        if any(cells):
            print(f"| {name} | " + " | ".join(cells) + " |")
    for key, label in extra:
        if all(key in f for f in folds):
            table = chain_table(folds, key)
            for transition in sorted({k[0] for k in table}):
                cells = [cell(table[(transition, s, args.samples)], seg, args.tie)
                         if (transition, s, args.samples) in table else "" for s in steps]
                if any(cells):
                    print(f"| {label.format(transition)} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
