"""Sampler ablation on a trained HiDiff fold: how the reverse chain's intermediate states are formed.

    python benchmarks/sampler_ablation.py -d 901 -p nnUNetPlans_hidiffCPU -tr nnUNetTrainerHiDiff -f 0 --cases 6

Loads ``checkpoint_final.pth`` of the fold (nnUNet_results etc. must be set, and nnUNet_extTrainer if the
trainer is not in the installed package), takes the 2d slices of the first ``--cases`` validation cases,
centre-cropped/padded to the plan's patch size, and prints the foreground Dice (per class and mean) of

  * the segmentor alone (argmax of p),
  * the chain with y_{t'} ~ B(m) (Algorithm 2 verbatim), with soft states y_{t'} = m, and with
    y_{t'} = 1[m > 0.5] (the package default), for 10, 5 and 1 DDIM steps,

plus the Dice of ŷ0 after every step of each chain. The EMA refiner is used, as in prediction. Prints numbers;
asserts nothing.
"""
from __future__ import annotations

import argparse

import torch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True)
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-tr", default="nnUNetTrainerHiDiff")
    parser.add_argument("-f", type=int, default=0)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

    tr = get_trainer_from_args(args.d, "2d", args.f, args.tr, args.p, device=torch.device("cpu"))
    tr.load_checkpoint(f"{tr.output_folder}/checkpoint_final.pth")
    net = tr.hidiff
    tr.set_deep_supervision_enabled(False)
    _, val = tr.do_split()
    ds = tr.dataset_class(tr.preprocessed_dataset_folder, val[: args.cases])
    patch = tr.configuration_manager.patch_size
    xs, ys = [], []
    for k in ds.identifiers:
        data, seg, _, _ = ds.load_case(k)
        d = torch.from_numpy(data[:]).float().permute(1, 0, 2, 3)  # (slices, C, H, W)
        s = torch.from_numpy(seg[:]).long().permute(1, 0, 2, 3)
        xs.append(centre_fit(d, patch))
        ys.append(centre_fit(s, patch))
    x, y = torch.cat(xs), torch.cat(ys).clamp(min=0)[:, 0]
    classes = list(range(1, net.num_classes))
    print(f"{x.shape[0]} slices of {len(ds.identifiers)} validation cases, patch {list(patch)}, classes {classes}")

    def dice(label: torch.Tensor):
        per = []
        for c in classes:
            a, b = label == c, y == c
            per.append(float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1)))
        return per, sum(per) / len(per)

    def fmt(label):
        per, mean = dice(label)
        return " / ".join(f"{v:.3f}" for v in per) + f" ({mean:.3f})"

    net.eval()
    with torch.no_grad(), tr.refiner_ema.applied_to(net.refiner):
        seg = net.segment(x)
        prior = net.prior_from_logits(seg.logits)
        print(f"segmentor alone            {fmt(prior.argmax(1))}")
        for steps in (10, 5, 1):
            for mode in ("sample", "soft", "threshold"):
                sampler = BernoulliDDIMSampler(net.diffusion, num_inference_steps=steps, final="mean",
                                               transition="sample" if mode == "sample" else "threshold")
                g = torch.Generator().manual_seed(args.seed)
                y_t = sampler.initial_sample(prior, generator=g)
                trajectory = []
                for t in sampler.timesteps:
                    eps_hat = torch.sigmoid(net.refiner(x, y_t, prior, t, seg.features).float())
                    out = sampler.step(eps_hat, t, y_t, prior, generator=g)
                    trajectory.append(dice(out.pred_y0.argmax(1))[1])
                    y_t = out.prev_mean if mode == "soft" else out.prev_sample
                print(f"{steps:2d} steps {mode:9s}         {fmt(out.pred_y0.argmax(1))}   "
                      f"mean Dice of ŷ0 along the chain {[round(v, 3) for v in trajectory]}", flush=True)


if __name__ == "__main__":
    main()
