"""Exponential moving average of the refiner's weights (the authors keep one at 0.9999)."""
from __future__ import annotations

import contextlib
from typing import Dict

import torch
from torch import nn


class ModelEMA:
    """EMA of a module's floating-point parameters; buffers (BatchNorm statistics) are copied from the live module,
    not averaged: the EMA weights validate and predict with the live model's running statistics (torch's own
    ``AveragedModel`` default, ``use_buffers=False``, does the same; the statistics are themselves running averages).

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far (as in diffusers'
    EMAModel): with a fixed 0.9999 a CPU-length run of a few thousand steps would keep mostly the
    random initial weights.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.current_decay()
        parameters = {name for name, _ in module.named_parameters()}
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point and k in parameters:
                self.shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)
        self.num_updates += 1

    def reset(self, module: nn.Module) -> None:
        """Restart the average from the module's current weights (when diffusion training starts)."""
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.num_updates = 0

    @contextlib.contextmanager
    def applied_to(self, module: nn.Module):
        """Temporarily load the EMA weights into ``module`` (for validation and export)."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield module
        finally:
            module.load_state_dict(backup)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
