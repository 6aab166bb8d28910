"""Sampler ablation and ε̂ reliability on a trained HiDiff fold (issue 12: "make the refinement earn its place").

    python benchmarks/sampler_ablation.py -d 901 -p nnUNetPlans_hidiffCPU -tr nnUNetTrainerHiDiff -f 0 --cases 6 \\
        [--folds 0 1 2 3 4] [--steps 10 5 2 1] [--samples 1 4] [--transitions renoise sample] [--hd95] \\
        [--no-reliability] [--json out.json]

Loads the fold's ``checkpoint_final.pth`` (nnUNet_raw/preprocessed/results must be set, and nnUNet_extTrainer
if the trainer is not in the installed package), takes the 2d slices of the first ``--cases`` validation
cases of the fold's split, centre-cropped/zero-padded to the plan's patch size, and runs everything with the
EMA refiner, as in prediction. Prints (numbers, no asserts) the foreground Dice per class and their mean,
computed like nnU-Net's summary (per case over the case's slices, a case with an empty reference and an
empty prediction left out, then the mean over cases) of

  * the segmentor alone (argmax of p = softmax(logits));
  * argmax of y_T ~ B(p) itself, the chain's random start (the same draw as the start of the 1-sample chains
    of the renoise, renoise_threshold and threshold transitions; all chains start from it in the first batch);
  * one refiner step from the segmentor's hard argmax: y_t = onehot(argmax p), t = 1, ŷ0 = |y_t − ε̂|;
  * every transition of BernoulliDDIMSampler.TRANSITIONS × ``--steps`` × ``--samples`` (ŷ0 averaged over
    the samples, which are independent chains with their own random draws, run as one batch like
    HiDiffNetwork.refine_prior), with the Dice of the samples' mean ŷ0 after every step of the chain;
  * for the default transition also ŷ0 averaged over the steps of the chain (and the samples);
  * (``--hd95``) the HD95 of each final output, per case in the cropped volume, spacing in mm;

and the ε̂ reliability (unless ``--no-reliability``): for each t = 1..T, y_t ~ q(y_t | y0, p) with the true
label one-hot y0 and the segmentor prior p (diffusion.q_sample), the refiner's ε̂ on it, binned by ε̂ into
count, mean ε̂ and the empirical frequency of ε = 1, separately for "easy" entries (|p − y0| < 0.05) and the
rest; plus per t the mean ε̂ and ε on both groups and the Dice of the one-step estimate ŷ0 = |y_t − ε̂|.
An entry is one (slice, channel, pixel, t); channels include the background.

With ``--folds`` every fold is run and the mean over folds is printed last (reliability counts are pooled).
``--json PATH`` writes every number (per fold and the mean) to PATH, to rebuild the README tables from.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fold_data import (DiceCounter, FoldDataError, add_common_args, build_trainer, chunks,  # noqa: E402
                        class_names, exit_on_error, fmt_dice, folds_of, mean_over_folds, nanmean, one_hot,
                        setup_torch, validation_slices, write_json)

RELIABILITY_BINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EASY_THRESHOLD = 0.05  # |p − y0| below this: an "easy" entry


class Reliability:
    """Accumulates the ε̂ reliability table (group × bin) and the per-t means. Group 0 = easy, 1 = rest."""

    def __init__(self, num_steps: int, n_cases: int, classes, bins=RELIABILITY_BINS, easy=EASY_THRESHOLD):
        self.bins = [float(b) for b in bins]
        self.easy = float(easy)
        self.edges = torch.tensor(self.bins[1:-1], dtype=torch.float64)
        nb = len(self.bins) - 1
        self.table = torch.zeros(3, 2, nb, dtype=torch.float64)  # (count, Σ ε̂, Σ ε) × group × bin
        self.per_t = torch.zeros(num_steps, 2, 4, dtype=torch.float64)  # (n, Σ ε̂, Σ ε, Σ P(ε=1)) per group
        self.one_step = [DiceCounter(n_cases, classes) for _ in range(num_steps)]

    def add(self, t: int, eps_hat, eps, rate, easy, y0_hat_labels, labels, case) -> None:
        nb = len(self.bins) - 1
        eps_hat, eps, rate = (v.double().flatten().cpu() for v in (eps_hat, eps, rate))
        group = (~easy).long().flatten().cpu()
        index = group * nb + torch.bucketize(eps_hat, self.edges, right=True)
        for i, w in enumerate((None, eps_hat, eps)):
            self.table[i] += torch.bincount(index, weights=w, minlength=2 * nb).view(2, nb).double()
        for g in (0, 1):
            m = group == g
            self.per_t[t - 1, g] += torch.stack([m.sum().double(), eps_hat[m].sum(), eps[m].sum(), rate[m].sum()])
        self.one_step[t - 1].add(y0_hat_labels, labels, case)

    def result(self) -> dict:
        return reliability_summary(self.bins, self.easy, self.table.tolist(), self.per_t.tolist(),
                                   [c.result() for c in self.one_step])


def reliability_summary(bins, easy, table, per_t, one_step) -> dict:
    """The JSON form; ``table`` and ``per_t`` hold raw sums, so folds can be pooled (see pool_reliability)."""
    count, s_hat, s_eps = (torch.tensor(v, dtype=torch.float64) for v in table)
    per_t_ = torch.tensor(per_t, dtype=torch.float64)

    def ratio(a, b):
        return [float(x / y) if y > 0 else float("nan") for x, y in zip(a.tolist(), b.tolist())]

    groups = {}
    for g, name in ((0, "easy"), (1, "rest")):
        groups[name] = {"count": [int(v) for v in count[g].tolist()], "mean_eps_hat": ratio(s_hat[g], count[g]),
                        "freq_eps": ratio(s_eps[g], count[g]), "sum_eps_hat": s_hat[g].tolist(),
                        "sum_eps": s_eps[g].tolist()}
    n = count.sum()
    n_easy = count[0].sum()
    t_rows = []
    for t in range(per_t_.shape[0]):
        row = {"t": t + 1}
        for g, name in ((0, "easy"), (1, "rest")):
            cnt, sh, se, sr = per_t_[t, g].tolist()
            row[name] = {"count": int(cnt), "mean_eps_hat": sh / cnt if cnt else float("nan"),
                         "freq_eps": se / cnt if cnt else float("nan"),
                         "mean_noise_probability": sr / cnt if cnt else float("nan"),
                         "sum_eps_hat": sh, "sum_eps": se, "sum_noise_probability": sr}
        row["one_step_y0_hat"] = one_step[t]
        t_rows.append(row)
    return {"bins": list(bins), "easy_threshold": easy, "entries": int(n), "easy_share": float(n_easy / n) if n else
            float("nan"), "easy_mean_eps_hat": float(s_hat[0].sum() / n_easy) if n_easy else float("nan"),
            "easy_freq_eps": float(s_eps[0].sum() / n_easy) if n_easy else float("nan"),
            "rest_mean_eps_hat": float(s_hat[1].sum() / count[1].sum()) if count[1].sum() else float("nan"),
            "rest_freq_eps": float(s_eps[1].sum() / count[1].sum()) if count[1].sum() else float("nan"),
            "groups": groups, "per_t": t_rows}


def pool_reliability(results: List[dict]) -> dict:
    """Reliability over several folds: counts and sums added, means recomputed; one-step Dice averaged."""
    first = results[0]
    table = [[[sum(r["groups"][g][key][b] for r in results) for b in range(len(first["bins"]) - 1)]
              for g in ("easy", "rest")] for key in ("count", "sum_eps_hat", "sum_eps")]
    per_t = [[[sum(r["per_t"][t][g][key] for r in results)
               for key in ("count", "sum_eps_hat", "sum_eps", "sum_noise_probability")] for g in ("easy", "rest")]
             for t in range(len(first["per_t"]))]
    one_step = [mean_over_folds([r["per_t"][t]["one_step_y0_hat"] for r in results]) for t in range(len(per_t))]
    return reliability_summary(first["bins"], first["easy_threshold"], table, per_t, one_step)


# ------------------------------------------------------------------------------------------------ one fold
def run_fold(args, fold: int, device: torch.device) -> dict:
    from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

    started = time.perf_counter()
    tr = build_trainer(args, fold, device, checkpoint=args.checkpoint)
    net = tr.hidiff
    tr.set_deep_supervision_enabled(False)
    net.eval()
    T = net.diffusion.num_steps
    bad = [s for s in args.steps if not 1 <= s <= T]
    if bad:
        raise FoldDataError(f"--steps {bad}: the model has T = {T} diffusion steps (allowed 1..{T})")
    data = validation_slices(tr, args.cases)
    x_all, y_all, case_all = data["x"], data["y"], data["case"]
    n_cases, K = len(data["cases"]), net.num_classes
    classes = list(range(1, K))
    names = class_names(tr)
    transitions = args.transitions or list(BernoulliDDIMSampler.TRANSITIONS)
    default = BernoulliDDIMSampler.DEFAULT_TRANSITION
    configs = [(tr_, s, n) for tr_ in transitions for s in args.steps for n in args.samples]

    counters: Dict[str, DiceCounter] = {}
    labels_kept: Dict[str, List[torch.Tensor]] = {}  # for --hd95

    def record(name: str, pred: torch.Tensor, ref: torch.Tensor, case: torch.Tensor, final: bool = False) -> None:
        counters.setdefault(name, DiceCounter(n_cases, classes)).add(pred, ref, case)
        if final and args.hd95:
            labels_kept.setdefault(name, []).append(pred.to(torch.uint8).cpu())

    generators = {c: torch.Generator(device=device).manual_seed(args.seed) for c in configs}
    start_gen = torch.Generator(device=device).manual_seed(args.seed)
    rel_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    reliability = None if args.no_reliability else Reliability(T, n_cases, classes, args.bins, args.easy)

    with torch.no_grad(), tr.refiner_ema.applied_to(net.refiner):
        for lo, hi in chunks(x_all.shape[0], args.batch):
            x, y, case = x_all[lo:hi].to(device), y_all[lo:hi].to(device), case_all[lo:hi]
            seg = net.segment(x)
            prior = net.prior_from_logits(seg.logits)
            projected = net.refiner.project_features(seg.features)
            record("segmentor", prior.argmax(1), y, case, final=True)
            start = BernoulliDDIMSampler(net.diffusion, transition=default).initial_sample(prior, generator=start_gen)
            record("start_sample", start.argmax(1), y, case, final=True)
            hard = one_hot(prior.argmax(1), K).to(device)
            eps_hat = torch.sigmoid(net.refiner(x, hard, prior, 1, projected=projected).float())
            record("one_step_from_argmax", (hard - eps_hat).abs().argmax(1), y, case, final=True)

            for config in configs:
                transition, steps, samples = config
                sub = max(1, args.batch // samples)
                for a, b in chunks(x.shape[0], sub):
                    n = b - a

                    def rep(v):
                        return v[a:b] if samples == 1 else v[a:b].repeat(samples, *([1] * (v.dim() - 1)))

                    xs, ps, proj = rep(x), rep(prior), [rep(f) for f in projected]
                    sampler = BernoulliDDIMSampler(net.diffusion, num_inference_steps=steps, final="mean",
                                                   transition=transition)
                    state = sampler.initial_sample(ps, generator=generators[config])
                    running = None
                    for k, t in enumerate(sampler.timesteps):
                        eh = torch.sigmoid(net.refiner(xs, state, ps, t, projected=proj).float())
                        out = sampler.step(eh, t, state, ps, generator=generators[config])
                        state = out.prev_sample
                        y0_hat = out.pred_y0.view(samples, n, *out.pred_y0.shape[1:]).mean(0)
                        last = k == len(sampler.timesteps) - 1
                        record(f"chain/{transition}/{steps}/{samples}/step{k}", y0_hat.argmax(1), y[a:b], case[a:b],
                               final=last)
                        if transition == default:
                            running = y0_hat if running is None else running + y0_hat
                    if transition == default:
                        record(f"stepavg/{transition}/{steps}/{samples}", running.argmax(1), y[a:b], case[a:b],
                               final=True)
                        # the final ŷ0 and the segmentor's p averaged: refiner and segmentor as a two-model ensemble
                        record(f"prior_mix/{transition}/{steps}/{samples}", (y0_hat + prior[a:b]).argmax(1), y[a:b],
                               case[a:b], final=True)

            if reliability is not None:
                y0 = one_hot(y, K).to(device)
                easy = (prior - y0).abs() < reliability.easy
                for t in range(1, T + 1):
                    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
                    y_t, eps = net.diffusion.q_sample(y0, prior, tt, generator=rel_gen)
                    rate = net.diffusion.noise_probability(y0, prior, tt)
                    eh = torch.sigmoid(net.refiner(x, y_t, prior, tt, projected=projected).float())
                    reliability.add(t, eh, eps, rate, easy, (y_t - eh).abs().argmax(1), y, case)

    def entry(name: str) -> dict:
        out = dict(counters[name].result())
        if args.hd95:
            out.update(hd95_of(torch.cat(labels_kept[name]), y_all, case_all, data["spacing"], classes))
        return out

    chains, stepavg, prior_mix = [], [], []
    for transition, steps, samples in configs:
        key = f"chain/{transition}/{steps}/{samples}"
        traj = [counters[f"{key}/step{k}"].result() for k in range(steps)]
        final = entry(f"{key}/step{len(traj) - 1}")
        chains.append({"transition": transition, "steps": steps, "samples": samples, **final,
                       "trajectory": [r["dice"] for r in traj],
                       "trajectory_per_class": [r["dice_per_class"] for r in traj]})
        if transition == default:
            stepavg.append({"transition": transition, "steps": steps, "samples": samples,
                            **entry(f"stepavg/{transition}/{steps}/{samples}")})
            prior_mix.append({"transition": transition, "steps": steps, "samples": samples,
                              **entry(f"prior_mix/{transition}/{steps}/{samples}")})
    return {"fold": fold, "cases": data["cases"], "slices": int(x_all.shape[0]), "patch": data["patch"],
            "classes": classes, "class_names": [names.get(c, str(c)) for c in classes], "num_diffusion_steps": T,
            "default_transition": default, "segmentor": entry("segmentor"), "start_sample": entry("start_sample"),
            "one_step_from_argmax": entry("one_step_from_argmax"), "chains": chains,
            "chain_step_average": stepavg, "prior_mix": prior_mix,
            "reliability": reliability.result() if reliability is not None else None,
            "seconds": round(time.perf_counter() - started, 1)}


def hd95_of(labels: torch.Tensor, ref: torch.Tensor, case: torch.Tensor, spacing, classes) -> dict:
    """HD95 per class (mean over cases; NaN where prediction or reference is empty, left out) of the cropped
    volume a case's slices form, in mm."""
    from nnunetv2_hidiff.evaluation.metrics import hd95

    per_class = []
    for c in classes:
        values = []
        for i in range(len(spacing)):
            m = case == i
            values.append(hd95((labels[m] == c).numpy(), (ref[m] == c).numpy(), spacing[i]))
        per_class.append(nanmean(values))
    return {"hd95_per_class": per_class, "hd95": nanmean(per_class)}


# ------------------------------------------------------------------------------------------------ printing
def fmt_entry(r: dict, pad: bool = False) -> str:
    s = fmt_dice(r)
    if "hd95" in r:
        s = f"{s:28s}  HD95 " + " / ".join(f"{v:.2f}" for v in r["hd95_per_class"]) + f" ({r['hd95']:.2f})"
    return f"{s:28s}" if pad else s


def report(res: dict, title: str) -> None:
    names = " / ".join(res["class_names"])
    print(f"\n=== {title}: Dice {names} (mean), per case as nnU-Net summarises it, EMA refiner ===")
    print(f"{'segmentor alone (argmax p)':58s} {fmt_entry(res['segmentor'])}")
    print(f"{'chain start: argmax y_T, y_T ~ B(p)':58s} {fmt_entry(res['start_sample'])}")
    print(f"{'one step from argmax p (y_t = onehot(argmax p), t = 1)':58s} {fmt_entry(res['one_step_from_argmax'])}")
    print(f"{'transition':18s} {'steps':>5s} {'samples':>7s}   {'final ŷ0':26s}    mean Dice of ŷ0 after each step")
    for c in res["chains"]:
        mark = " (default)" if c["transition"] == res["default_transition"] else ""
        traj = " ".join(f"{v:.3f}" for v in c["trajectory"])
        print(f"{c['transition'] + mark:18s} {c['steps']:5d} {c['samples']:7d}   {fmt_entry(c, pad=True)}  [{traj}]")
    if res["chain_step_average"]:
        print(f"ŷ0 averaged over the steps of the chain ({res['default_transition']}):")
        for c in res["chain_step_average"]:
            print(f"{c['transition']:18s} {c['steps']:5d} {c['samples']:7d}   {fmt_entry(c)}")
    if res.get("prior_mix"):
        print(f"final ŷ0 and the segmentor's p averaged, (ŷ0 + p) / 2 ({res['default_transition']}):")
        for c in res["prior_mix"]:
            print(f"{c['transition']:18s} {c['steps']:5d} {c['samples']:7d}   {fmt_entry(c)}")
    rel = res.get("reliability")
    if rel:
        print(f"\nε̂ reliability on y_t ~ q(y_t | y0, p), t = 1..{res['num_diffusion_steps']}: "
              f"{rel['entries']} entries (slice × channel × pixel × t); "
              f"easy = |p − y0| < {rel['easy_threshold']}: {100 * rel['easy_share']:.1f} % of entries")
        print(f"mean ε̂ on easy entries {rel['easy_mean_eps_hat']:.4f} "
              f"(true ε frequency there {rel['easy_freq_eps']:.4f}); "
              f"on the rest {rel['rest_mean_eps_hat']:.4f} (true {rel['rest_freq_eps']:.4f})")
        print(f"{'ε̂ bin':16s} | {'easy: count':>12s} {'mean ε̂':>8s} {'freq ε=1':>8s} | "
              f"{'rest: count':>12s} {'mean ε̂':>8s} {'freq ε=1':>8s}")
        bins = rel["bins"]
        for b in range(len(bins) - 1):
            e, r = rel["groups"]["easy"], rel["groups"]["rest"]
            close = "]" if b == len(bins) - 2 else ")"
            print(f"[{bins[b]:.3f}, {bins[b + 1]:.3f}{close}  | {e['count'][b]:12d} {e['mean_eps_hat'][b]:8.4f} "
                  f"{e['freq_eps'][b]:8.4f} | {r['count'][b]:12d} {r['mean_eps_hat'][b]:8.4f} "
                  f"{r['freq_eps'][b]:8.4f}")
        print(f"{'t':>3s} | {'easy: mean ε̂':>13s} {'ε':>7s} | {'rest: mean ε̂':>13s} {'ε':>7s} "
              f"{'P(ε=1)':>7s} | one-step ŷ0 = |y_t − ε̂| Dice")
        for row in rel["per_t"]:
            e, r = row["easy"], row["rest"]
            print(f"{row['t']:3d} | {e['mean_eps_hat']:13.4f} {e['freq_eps']:7.4f} | {r['mean_eps_hat']:13.4f} "
                  f"{r['freq_eps']:7.4f} {r['mean_noise_probability']:7.4f} | {fmt_dice(row['one_step_y0_hat'])}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, cases=6)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 5, 2, 1], help="DDIM step counts")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4], help="samples averaged (ŷ0 mean)")
    parser.add_argument("--transitions", nargs="+", default=None,
                        help="subset of BernoulliDDIMSampler.TRANSITIONS (default: all)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in the fold folder")
    parser.add_argument("--hd95", action="store_true", help="also the HD95 of every final output (slower)")
    parser.add_argument("--no-reliability", action="store_true", help="skip the ε̂ reliability table")
    parser.add_argument("--bins", type=float, nargs="+", default=list(RELIABILITY_BINS),
                        help="ε̂ bin edges for the reliability table, from 0 to 1")
    parser.add_argument("--easy", type=float, default=EASY_THRESHOLD, help="easy entries: |p − y0| below this")
    args = parser.parse_args(argv)

    from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

    if args.transitions:
        unknown = [t for t in args.transitions if t not in BernoulliDDIMSampler.TRANSITIONS]
        if unknown:
            parser.error(f"--transitions {unknown}: not in {BernoulliDDIMSampler.TRANSITIONS}")
    if any(s < 1 for s in args.samples):
        parser.error("--samples must be at least 1")
    if len(args.bins) < 2 or args.bins[0] != 0 or args.bins[-1] != 1 or sorted(args.bins) != args.bins:
        parser.error("--bins must rise from 0 to 1")
    with exit_on_error():
        device = setup_torch(args)
    results = []
    for fold in folds_of(args):
        with exit_on_error():
            res = run_fold(args, fold, device)
        report(res, f"fold {fold}: {res['slices']} slices of {len(res['cases'])} validation cases "
                    f"({', '.join(res['cases'])}), patch {'×'.join(map(str, res['patch']))}, {res['seconds']} s")
        results.append(res)
        sys.stdout.flush()
    mean = mean_over_folds([{k: v for k, v in r.items() if k != "reliability"} for r in results])
    rels = [r["reliability"] for r in results if r.get("reliability")]
    mean["reliability"] = pool_reliability(rels) if rels else None
    mean.update(fold=folds_of(args), cases=[c for r in results for c in r["cases"]],
                slices=sum(r["slices"] for r in results), seconds=sum(r["seconds"] for r in results))
    if len(results) > 1:
        report(mean, f"mean over folds {folds_of(args)} (reliability pooled)")
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    write_json(args.json, {"settings": settings, "folds": results, "mean_over_folds": mean})


if __name__ == "__main__":
    main()
