"""HiDiffNetwork: the nnU-Net segmentor, the diffusion refiner and the Bernoulli diffusion in one module."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .refiner import HiDiffRefiner

__all__ = ["HiDiffNetwork", "SegmentorOutput"]


class SegmentorOutput(NamedTuple):
    """logits: exactly what the segmentor's decoder returns (a list, highest resolution first, with deep
    supervision on; a tensor (B, K, *sp) otherwise); features: the encoder skips, one per stage."""
    logits: Union[torch.Tensor, List[torch.Tensor]]
    features: List[torch.Tensor]


class HiDiffNetwork(nn.Module):
    """Segmentor f + refiner g + Bernoulli diffusion, with a single state dict.

    The segmentor is the network of the nnU-Net plan (anything with ``.encoder(x) -> skips`` and
    ``.decoder(skips) -> logits``, e.g. PlainConvUNet or ResidualEncoderUNet). The diffusion object
    is plain Python (no parameters or buffers), so the state dict holds exactly ``segmentor.*`` and
    ``refiner.*``.

    Train mode: ``forward(x)`` is the segmentor's output (deep-supervision list or tensor), and
    :meth:`segment`, :meth:`prior_from_logits`, :meth:`refiner_forward` give the trainer the pieces.

    Eval mode: ``forward(x)`` is a drop-in for nnU-Net's sliding-window predictor:
    segmentor → p = softmax(logits) → y_T ~ B(p) → Bernoulli DDIM refinement over ``num_inference_steps``
    → ŷ0 averaged over ``num_samples`` → log(clamp(ŷ0, 1e-6)), shape (B, K, *sp), finite. nnU-Net's
    softmax of these "logits" is ŷ0 normalised over classes, so Gaussian aggregation and argmax work
    unchanged. With ``output_space = "logit"`` it returns logit(ŷ0) instead, which is what a
    region-based (sigmoid) label manager needs.

    Inference settings (plain attributes, change them any time):
        num_inference_steps (default diffusion.num_steps), num_samples (1), seed (0; a fresh
        torch.Generator seeded with it per forward call makes the output deterministic),
        refine (True; False returns the segmentor's logits), output_space ("log" | "logit"),
        transition ("threshold" | "sample": how intermediate DDIM states are formed, see
        BernoulliDDIMSampler).
    """

    def __init__(self, segmentor: nn.Module, refiner: HiDiffRefiner, diffusion, num_classes: int,
                 num_inference_steps: Optional[int] = None, num_samples: int = 1, seed: int = 0,
                 refine: bool = True, transition: str = "threshold"):
        super().__init__()
        if not (hasattr(segmentor, "encoder") and hasattr(segmentor, "decoder")):
            raise TypeError(f"the segmentor ({type(segmentor).__name__}) must expose .encoder and .decoder")
        if isinstance(diffusion, nn.Module) and (list(diffusion.parameters()) or
                                                 any(True for _ in diffusion.buffers())):
            raise TypeError("the diffusion must not carry parameters or buffers (they would enter the state dict)")
        self.segmentor = segmentor
        self.refiner = refiner
        object.__setattr__(self, "diffusion", diffusion)  # never a submodule: not in the state dict
        self.num_classes = int(num_classes)
        self.num_inference_steps = int(num_inference_steps or diffusion.num_steps)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.refine = bool(refine)
        self.transition = str(transition)
        self.output_space = "log"

    # ------------------------------------------------------------------ pieces for the trainer
    def segment(self, x: torch.Tensor) -> SegmentorOutput:
        """Run the segmentor once: x (B, C_in, *sp) → SegmentorOutput(logits, encoder skips)."""
        skips = self.segmentor.encoder(x)
        return SegmentorOutput(self.segmentor.decoder(skips), list(skips))

    @staticmethod
    def top_logits(logits: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """The full-resolution output: logits[0] for a deep-supervision list, else the tensor."""
        return logits if torch.is_tensor(logits) else logits[0]

    def prior_from_logits(self, logits: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """p = softmax over the K channels of the top-resolution logits, float32 (B, K, *sp)."""
        return torch.softmax(self.top_logits(logits).float(), dim=1)

    def refiner_forward(self, x: torch.Tensor, y_t: torch.Tensor, prior: torch.Tensor,
                        t: Union[torch.Tensor, int], features: Sequence[torch.Tensor]) -> torch.Tensor:
        """ε̂ logits (B, K, *sp) for state y_t at step t; ε̂ = sigmoid(output). See HiDiffRefiner.forward."""
        return self.refiner(x, y_t, prior, t, features)

    def set_deep_supervision(self, enabled: bool) -> None:
        """Switch the segmentor decoder's deep-supervision outputs (list vs tensor) on or off."""
        self.segmentor.decoder.deep_supervision = enabled

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor):
        if self.training:
            return self.segment(x).logits
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode forward: refined per-class logits (B, K, *sp) (see class docstring)."""
        from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

        seg = self.segment(x)
        logits = self.top_logits(seg.logits)
        if not self.refine:
            return logits
        prior = self.prior_from_logits(logits)
        sampler = BernoulliDDIMSampler(self.diffusion, num_inference_steps=self.num_inference_steps, final="mean",
                                       transition=self.transition)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        y0_sum = torch.zeros_like(prior)
        for _ in range(self.num_samples):
            y = sampler.initial_sample(prior, generator=generator)
            for t in sampler.timesteps:
                eps_hat = torch.sigmoid(self.refiner(x, y, prior, t, seg.features).float())
                out = sampler.step(eps_hat, t, y, prior, generator=generator)
                y = out.prev_sample
            y0_sum += out.pred_y0
        y0 = y0_sum / self.num_samples
        if self.output_space == "logit":
            y0 = y0.clamp(1e-6, 1 - 1e-6)
            refined = torch.log(y0) - torch.log1p(-y0)
        elif self.output_space == "log":
            refined = torch.log(y0.clamp_min(1e-6))
        else:
            raise ValueError(f"output_space must be 'log' or 'logit', got {self.output_space!r}")
        return refined.to(logits.dtype)
