"""HiDiff's checkpoint payload (next to nnU-Net's keys) and random-number-generator states."""
from __future__ import annotations

import copy
import random

import numpy as np
import torch


def get_rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule, DistributedDataParallel


def clean_state_dict(state: dict) -> dict:
    """A state dict without wrapper prefixes (nnU-Net accepts both when it loads; so do we)."""
    def clean(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key
    return {clean(k): v for k, v in state.items()}


def unwrap_and_compile(network, backend: str = "inductor"):
    """The HiDiffNetwork inside nnU-Net's torch.compile wrapper, with its segmentor's encoder and decoder compiled
    in place (nn.Module.compile keeps the state-dict keys); a network that is not wrapped comes back unchanged."""
    from torch._dynamo import OptimizedModule

    if not isinstance(network, OptimizedModule):
        return network
    network = network._orig_mod
    network.segmentor.encoder.compile(backend=backend)
    network.segmentor.decoder.compile(backend=backend)
    return network


def hidiff_payload(trainer) -> dict:
    """The ``hidiff`` entry of a HiDiff checkpoint: everything ``--c`` needs beyond nnU-Net's own keys."""
    scaler = trainer.refiner_grad_scaler
    return {
        "config": trainer.hidiff_config(),
        "refiner_weights": {k: v.detach().clone() for k, v in trainer.hidiff.refiner.state_dict().items()},
        "refiner_optimizer_state": trainer.refiner_optimizer.state_dict(),
        "refiner_grad_scaler_state": scaler.state_dict() if scaler is not None else None,
        "refiner_ema": trainer.refiner_ema.state_dict(),
        "num_warmup_epochs": trainer.num_warmup_epochs,
        "warm_start": trainer.warm_start_source,  # so that --c keeps it in the fold record without the variable
        "nonfinite_in_a_row": trainer.nonfinite_in_a_row,
        "diffusion_rng_state": trainer.diffusion_rng.get_state(),
        "rng_states": get_rng_states(),
    }


def restore_hidiff_payload(trainer, h: dict) -> None:
    """Inverse of :func:`hidiff_payload` (the trainer's networks and optimizers exist already)."""
    import warnings

    trainer.hidiff.refiner.load_state_dict(h["refiner_weights"])
    trainer.refiner_optimizer.load_state_dict(h["refiner_optimizer_state"])
    if trainer.refiner_grad_scaler is not None and h["refiner_grad_scaler_state"] is not None:
        trainer.refiner_grad_scaler.load_state_dict(h["refiner_grad_scaler_state"])
    trainer.refiner_ema.load_state_dict(h["refiner_ema"])
    trainer.num_warmup_epochs = h["num_warmup_epochs"]
    trainer.warm_start_source = h.get("warm_start") or trainer.warm_start_source  # absent before 2026-12-07
    trainer.nonfinite_in_a_row = h["nonfinite_in_a_row"]
    if trainer.local_rank == 0:
        trainer.diffusion_rng.set_state(h["diffusion_rng_state"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_rng_states(h["rng_states"])
    else:  # the checkpoint holds rank 0's streams; other ranks continue from their own reproducible seed
        trainer.diffusion_rng.manual_seed(trainer.diffusion_seed + trainer.current_epoch)


def load_whole_segmentor(segmentor, path: str, device) -> None:
    """Load a plain nnU-Net checkpoint's whole network (segmentation heads included) into the segmentor; a
    HiDiffConfigurationError names the file and the problem."""
    from .common import HiDiffConfigurationError

    try:
        weights = torch.load(path, map_location=device, weights_only=False)["network_weights"]
    except Exception as e:
        raise HiDiffConfigurationError(f"{path}: cannot read the segmentor checkpoint ({e}); expected a "
                                       f"checkpoint_final.pth of a plain nnU-Net training") from None
    try:
        segmentor.load_state_dict(weights)
    except RuntimeError as e:
        raise HiDiffConfigurationError(f"{path}: not a segmentor of this plan and dataset "
                                       f"({str(e).splitlines()[0]} ...)") from None


def build_checkpoint(trainer) -> dict:
    """nnU-Net's checkpoint keys (network weights with the EMA refiner: what nnUNetv2_predict loads) plus ours."""
    with trainer.refiner_ema.applied_to(trainer.hidiff.refiner):
        exported = {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)  # _extra_state: plain data
                    for k, v in trainer.hidiff.state_dict().items()}
    return {
        "network_weights": exported,
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
        "hidiff": hidiff_payload(trainer),
    }


def read_checkpoint(trainer, filename_or_checkpoint) -> dict:
    """The checkpoint dict, checked to be a HiDiff checkpoint of the trainer's configuration; anything else is
    one HiDiffConfigurationError naming the file and the problem."""
    from .common import HiDiffConfigurationError

    source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the given checkpoint"
    checkpoint = filename_or_checkpoint
    if isinstance(filename_or_checkpoint, str):
        try:
            checkpoint = torch.load(filename_or_checkpoint, map_location=trainer.device, weights_only=False)
        except Exception as e:
            raise HiDiffConfigurationError(f"{source}: cannot read the checkpoint ({e}). The file may be "
                                           f"truncated or not a PyTorch checkpoint.") from None
    if "hidiff" not in checkpoint:
        raise HiDiffConfigurationError(
            f"{source} was written by {checkpoint.get('trainer_name', 'another trainer')}, not by a HiDiff "
            f"trainer. To start HiDiff from a plain nnU-Net model, set "
            f"nnUNet_HiDiff_pretrained_segmentor=<its checkpoint_final.pth> and train without --c.")
    h = checkpoint["hidiff"]
    if h["config"] != trainer.hidiff_config():
        raise HiDiffConfigurationError(
            f"{source} holds a HiDiff model with {h['config']} ({checkpoint['trainer_name']}), but "
            f"{trainer.__class__.__name__} builds {trainer.hidiff_config()}.")
    return checkpoint


def restore_checkpoint(trainer, checkpoint: dict) -> None:
    """Inverse of :func:`build_checkpoint` into an initialized trainer (nnU-Net's keys, then ours)."""
    trainer.hidiff.load_state_dict(clean_state_dict(checkpoint["network_weights"]))
    trainer.my_init_kwargs = checkpoint["init_args"]
    trainer.current_epoch = checkpoint["current_epoch"]
    trainer.logger.load_checkpoint(checkpoint["logging"])
    trainer._best_ema = checkpoint["_best_ema"]
    trainer.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                              trainer.inference_allowed_mirroring_axes)
    trainer.optimizer.load_state_dict(checkpoint["optimizer_state"])
    if trainer.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
        trainer.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
    restore_hidiff_payload(trainer, checkpoint["hidiff"])
