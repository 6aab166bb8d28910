"""The CUDA mixed-precision path (autocast + one grad scaler per optimizer) run on the CPU: torch has a CPU
autocast (bfloat16) and a CPU GradScaler, which go through the same trainer code as CUDA's float16 ones.
What only a GPU shows (float16 ranges, the scaler's real overflows early in training) is left to
scripts/gpu_check.sh."""
import pytest
import torch
from torch import autocast

from trainer_utils import changed, make_batch, snapshot


@pytest.fixture
def amp_trainer(trainer):
    tr = trainer
    tr._autocast = lambda: autocast("cpu", dtype=torch.bfloat16)  # what _autocast() gives on CUDA, in bf16
    tr.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    tr.refiner_grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    return tr


def test_diffusion_maths_stays_float32_under_autocast(amp_trainer):
    batch = make_batch(amp_trainer, seed=1)
    s = amp_trainer.prepare_diffusion(batch["data"], batch["target"])
    with amp_trainer._autocast():
        logits = amp_trainer.hidiff.refiner(batch["data"], s["y_t"], s["prior"].detach(), s["t"],
                                            [f.detach() for f in s["seg"].features])
    assert logits.dtype == torch.bfloat16  # the networks do run in reduced precision
    assert s["prior"].dtype == torch.float32 and s["y_t"].dtype == torch.float32
    loss = amp_trainer._l_diff(batch["data"], s, s["prior"].detach(), [f.detach() for f in s["seg"].features])
    assert loss.total.dtype == loss.kl.dtype == loss.focal.dtype == torch.float32
    assert torch.isfinite(loss.total)


def test_both_grad_scalers_step_their_own_network(amp_trainer):
    before = snapshot(amp_trainer.hidiff)
    out = amp_trainer.train_step(make_batch(amp_trainer, seed=2))
    assert out["skipped"] == 0
    moved = {k.split(".")[0] for k in changed(before, amp_trainer.hidiff)}
    assert moved == {"segmentor", "refiner"}
    assert amp_trainer.grad_scaler.get_scale() == amp_trainer.refiner_grad_scaler.get_scale() == 2.0 ** 8


def test_scaler_overflow_skips_the_step_lowers_the_scale_and_is_not_a_nonfinite_loss(amp_trainer):
    """An inf in the scaled gradients (what float16 overflow gives on CUDA; injected here by a gradient hook) with
    a finite loss: the step is skipped without touching the weights, the scale is halved, and the skip counts
    towards max_overflow_in_a_row, not max_nonfinite_in_a_row: on CUDA the first steps of a training often
    overflow while the scaler finds its scale, and that must not stop the run."""
    hooks = [next(net.parameters()).register_hook(lambda g: g * float("inf"))
             for net in (amp_trainer.hidiff.segmentor, amp_trainer.hidiff.refiner)]
    before = snapshot(amp_trainer.hidiff)
    ema_before = {k: v.clone() for k, v in amp_trainer.refiner_ema.shadow.items()}
    out = amp_trainer.train_step(make_batch(amp_trainer, seed=3))
    assert out["skipped"] == 1 and out["refiner_loss"] == out["refiner_loss"]  # the loss itself was finite
    assert not {k for k in changed(before, amp_trainer.hidiff) if "running" not in k and "batches" not in k}
    assert all(torch.equal(v, amp_trainer.refiner_ema.shadow[k]) for k, v in ema_before.items())
    assert amp_trainer.nonfinite_in_a_row == 0 and amp_trainer.overflow_in_a_row == 1
    assert amp_trainer.grad_scaler.get_scale() == amp_trainer.refiner_grad_scaler.get_scale() == 2.0 ** 7
    for hook in hooks:
        hook.remove()
    assert amp_trainer.train_step(make_batch(amp_trainer, seed=4))["skipped"] == 0
    assert amp_trainer.overflow_in_a_row == 0
    with pytest.raises(RuntimeError, match="max_overflow_in_a_row=2"):
        amp_trainer.max_overflow_in_a_row = 2
        hooks = [next(amp_trainer.hidiff.refiner.parameters()).register_hook(lambda g: g * float("inf"))]
        for _ in range(2):
            amp_trainer.train_step(make_batch(amp_trainer, seed=6))


def test_a_nan_loss_under_amp_still_counts_as_nonfinite(amp_trainer):
    batch = make_batch(amp_trainer, seed=5)
    batch["data"][0, 0, 2, 2] = float("nan")
    assert amp_trainer.train_step(batch)["skipped"] == 1
    assert amp_trainer.nonfinite_in_a_row == 1 and amp_trainer.overflow_in_a_row == 0
