"""HiDiff under nnU-Net's DDP, on a CPU process group (gloo): what -num_gpus does on GPUs, minus NCCL and
SyncBatchNorm (which torch only has for GPUs; on the CPU each rank keeps its own BatchNorm statistics).

The exact claim that can be checked on the CPU: the segmentor's steps under DDP equal a single-process step on
the concatenated batch (the segmentor has instance norm, and nnU-Net's Dice+CE gathers over the ranks). HiDiff
steps cannot match a single process exactly: each rank draws its own diffusion noise (by design) and, on the
CPU, normalises the refiner's BatchNorm with its own batch. What must hold there: every rank ends with the same
segmentor, refiner and EMA weights, the ranks' diffusion draws differ, and a bad batch on one rank makes every
rank skip the step (none is left waiting in an all-reduce)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_dataset import nnunet_env

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(root, mode: str, world: int, out: Path) -> list:
    env = nnunet_env(root)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), mode, str(world), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{mode} x{world} failed\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


@pytest.fixture(scope="module")
def ddp_steps(tiny_nnunet, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_steps")
    return _run(tiny_nnunet, "steps", 2, out / "ddp"), _run(tiny_nnunet, "warmup", 1, out / "single")[0]


def test_segmentor_steps_under_ddp_equal_one_process_on_the_whole_batch(ddp_steps):
    ranks, single = [r["warmup"] for r in ddp_steps[0]], ddp_steps[1]["warmup"]
    assert ranks[0]["segmentor_wrapped"] and not single["segmentor_wrapped"]
    seg = lambda d: {k: v for k, v in d.items() if k.startswith("segmentor.")}  # noqa: E731
    _assert_same(seg(ranks[0]["final"]), seg(ranks[1]["final"]), rtol=0, atol=0)
    moved = [k for k in seg(single["final"]) if not torch.equal(single["final"][k], single["initial"][k])]
    assert len(moved) > 10
    # nnU-Net gives the lowest deep-supervision output weight 1e-6 instead of 0 under DDP: a tiny difference
    _assert_same(seg(ranks[0]["final"]), seg(single["final"]), rtol=1e-3, atol=1e-5)


def test_hidiff_steps_keep_every_rank_identical_and_skip_a_bad_batch_together(ddp_steps):
    r0, r1 = [r["hidiff"] for r in ddp_steps[0]]
    assert r0["segmentor_wrapped"] and r0["refiner_wrapped"]
    assert r0["skipped"] == r1["skipped"] == [0, 1, 0]  # rank 1's NaN batch: both ranks skipped step 1
    _assert_same(r0["final"], r1["final"], rtol=0, atol=0)
    _assert_same(r0["ema"], r1["ema"], rtol=0, atol=0)
    changed = {k.split(".")[0] for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])}
    assert changed == {"segmentor", "refiner"}
    assert not torch.equal(r0["draws"][0], r1["draws"][0])  # each rank its own diffusion noise


def test_clean_refiner_batches_keep_ranks_identical_and_skip_a_bad_clean_batch_together(tiny_nnunet, tmp_path):
    """refiner_batches = "clean" under DDP: a NaN clean batch on one rank makes every rank skip the step (the refiner
    step's decision is taken by all ranks together), and the ranks stay identical."""
    r0, r1 = [r["clean"] for r in _run(tiny_nnunet, "clean", 2, tmp_path / "clean")]
    assert r0["refiner_wrapped"]
    assert r0["skipped"] == r1["skipped"] == [0, 1, 0]
    _assert_same(r0["final"], r1["final"], rtol=0, atol=0)
    changed = {k.split(".")[0] for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])}
    assert changed == {"segmentor", "refiner"}


def test_nnunet_ddp_route_trains_validates_and_writes_once(nnunet_paths, tmp_path):
    """get_trainer_from_args + run_training + perform_actual_validation on two ranks, as nnU-Net's run_ddp:
    the plan's batch of 2 is split 1 + 1, rank 0 writes the checkpoint, both validation outputs and the
    decision, and the checkpoint loads strictly into the network nnUNetv2_predict builds."""
    import json

    r0, r1 = _run(nnunet_paths, "train", 2, tmp_path)
    assert r0["is_ddp"] and r0["device"] == "cpu" and r0["batch_size"] == r1["batch_size"] == 1
    fold = Path(r0["output_folder"])
    record = json.loads((fold / "hidiff_fold.json").read_text())
    assert set(record["validation"]) >= {"segmentor", "refined"} and "decision" in record
    for name in ("validation", "validation_segmentor", "validation_refined"):
        assert (fold / name / "summary.json").is_file(), name
    n_val = len(json.loads((fold / "validation_refined" / "summary.json").read_text())["metric_per_case"])
    assert n_val == record["validation"]["refined"]["cases"]  # both ranks' cases made it into one summary
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["network_weights"])
    from trainer_utils import make_trainer

    tr = make_trainer("nnUNetTrainerHiDiff_smoke")
    fresh = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                          tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    fresh.load_state_dict(checkpoint["network_weights"])
