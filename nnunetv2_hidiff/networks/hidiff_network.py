"""HiDiffNetwork: the nnU-Net segmentor, the diffusion refiner and the Bernoulli diffusion in one module."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .combine import COMBINE_GATED, COMBINE_NONE, COMBINES, check_gate, combine_outputs
from .refiner import HiDiffRefiner

__all__ = ["HiDiffNetwork", "SegmentorOutput"]



def decision_buffers(refine: bool, steps: int = 0, combine: str = COMBINE_NONE,
                     gate: Optional[Sequence[float]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The buffers ``inference_decision`` = [mode, steps] and, for a refined "gated" decision, ``inference_gate`` =
    [add, remove] in per mille (None otherwise: the stored gate is left as it is); see :class:`HiDiffNetwork`."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    gate_buffer = None
    if combine == COMBINE_GATED and refine:
        if gate is None:
            raise ValueError("combine='gated' needs a gate (gate_add, gate_remove)")
        gate_buffer = torch.tensor([round(g * 1000) for g in check_gate(gate)], dtype=torch.long)
    mode = 1 + COMBINES.index(combine) if refine else 0  # 1 refined, 2 new_components, 3 union, 4 average, 5 gated
    return torch.tensor([mode, int(steps)], dtype=torch.long), gate_buffer

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
        num_inference_steps (default diffusion.num_steps), num_samples (1; all samples run as one batch),
        seed (0; a fresh CPU torch.Generator seeded with it per forward call makes the output deterministic
        and the same on every device: the random fields are drawn on the CPU and moved), output_space ("log" | "logit"), transition (see BernoulliDDIMSampler;
        default "renoise"), refine (None: follow the stored decision; True/False force refinement on/off),
        steps_forced (False: steps stored in the decision win over num_inference_steps), combine (None: follow
        the stored decision, or "none" when refine is forced; "none": the refined output; "new_components": the
        segmentor's output plus the refined components it does not reach; "union": plus all refined foreground
        where the segmentor predicts background; "average": the mean of both outputs' probabilities; "gated": the
        refined label where its refined probability exceeds a gate; see networks/combine.py), gate (None: the
        stored gate; else (gate_add, gate_remove) for combine "gated").

    The decision (issue "never worse by default"): the persistent buffer ``inference_decision`` =
    [mode (0 segmentor alone, 1 refined, 2 segmentor + new refined components, 3 segmentor ∪ refined,
    4 mean of segmentor and refined probabilities, 5 gated),
    steps (0 = num_inference_steps)]
    and, for mode 5, the buffer ``inference_gate`` = [gate_add, gate_remove] in per mille,
    are part of the state dict, so the checkpoint carries it
    and nnU-Net's predictor, which loads every fold's weights into the network before predicting with that
    fold, applies each fold's own decision. The trainer sets it after validation (see :meth:`set_decision`).
    State dicts written before the buffers existed load with the defaults [1, 0] (refine) and [500, 1000].
    """

    def __init__(self, segmentor: nn.Module, refiner: HiDiffRefiner, diffusion, num_classes: int,
                 num_inference_steps: Optional[int] = None, num_samples: int = 1, seed: int = 0,
                 refine: Optional[bool] = None, transition: Optional[str] = None):
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
        self.refine = None if refine is None else bool(refine)
        self.combine: Optional[str] = None
        self.steps_forced = False
        self.transition = str(transition or self._sampler_class().DEFAULT_TRANSITION)
        self.output_space = "log"
        self.gate: Optional[Tuple[float, float]] = None
        self.register_buffer("inference_decision", torch.tensor([1, 0], dtype=torch.long))
        self.register_buffer("inference_gate", torch.tensor([500, 1000], dtype=torch.long))

    @property
    def packed(self) -> bool:
        """Inference of the refiner's binary convolutions with the bit-packed XNOR-popcount kernels (CPU, float32,
        eval mode; networks/packed.py). Setting it True without a loadable kernel warns once and stays False."""
        from .blocks import RefinerBlock

        return any(m.packed for m in self.refiner.modules() if isinstance(m, RefinerBlock))

    @packed.setter
    def packed(self, value: bool) -> None:
        from .blocks import RefinerBlock
        from .packed import library

        value = bool(value) and self.refiner.binary and library() is not None
        for m in self.refiner.modules():
            if isinstance(m, RefinerBlock):
                m.packed = value

    @staticmethod
    def _sampler_class():
        from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler  # diffusion/ is below networks/
        return BernoulliDDIMSampler

    # ------------------------------------------------------------------ the stored decision
    def set_decision(self, refine: bool, steps: int = 0, combine: str = COMBINE_NONE,
                     gate: Optional[Sequence[float]] = None) -> None:
        """Store whether (and with how many steps; 0 = num_inference_steps, and combined how, with which gate for
        combine "gated") prediction refines by default."""
        if not 0 <= int(steps) <= self.diffusion.num_steps:
            raise ValueError(f"steps must lie in 0..{self.diffusion.num_steps}, got {steps}")
        decision, gate_buffer = decision_buffers(refine, steps, combine, gate)
        if gate_buffer is not None:
            self.inference_gate.copy_(gate_buffer)
        self.inference_decision.copy_(decision)

    def resolved_settings(self):
        """(refine, steps) this network predicts with: forced settings first, then the stored decision."""
        decided_mode, decided_steps = (int(v) for v in self.inference_decision.tolist())
        refine = decided_mode > 0 if self.refine is None else self.refine
        steps = self.num_inference_steps if (self.steps_forced or decided_steps == 0) else decided_steps
        return refine, int(steps)

    def resolved_combine(self) -> str:
        """How a refined output is combined with the segmentor's: forced ``combine`` first; with refinement
        forced, the refined output alone; else the stored decision."""
        if self.combine is not None:
            if self.combine not in COMBINES:
                raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
            return self.combine
        if self.refine is not None:
            return COMBINE_NONE
        mode = int(self.inference_decision[0])
        return COMBINES[mode - 1] if 1 <= mode <= len(COMBINES) else COMBINE_NONE

    def resolved_gate(self) -> Tuple[float, float]:
        """(gate_add, gate_remove) of combine "gated": the forced ``gate`` first, else the stored one."""
        if self.gate is not None:
            return check_gate(self.gate)
        add, remove = (int(v) / 1000 for v in self.inference_gate.tolist())
        return add, remove

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the decision buffer existed: refine with the default steps
        state_dict.setdefault(prefix + "inference_decision", torch.tensor([1, 0], dtype=torch.long))
        state_dict.setdefault(prefix + "inference_gate", torch.tensor([500, 1000], dtype=torch.long))
        own = self.refiner.state_dict(prefix=prefix + "refiner.")
        for key, value in state_dict.items():
            if key in own and torch.is_tensor(value) and value.shape != own[key].shape:
                raise RuntimeError(
                    f"the weights were trained with another refiner configuration: {key} has shape "
                    f"{tuple(value.shape)} there and {tuple(own[key].shape)} in this network. A model trained as "
                    f"nnUNetTrainerHiDiff before 2026-12-03 has the paper's width-32 refiner: it loads as "
                    f"nnUNetTrainerHiDiff_paper (README, 'The default configuration').")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
    def predict(self, x: torch.Tensor, seg: Optional[SegmentorOutput] = None) -> torch.Tensor:
        """Eval-mode forward: refined per-class logits (B, K, *sp) (see class docstring). ``seg``: this
        input's segmentor output when the caller already has it (validation), else computed here."""
        seg = self.segment(x) if seg is None else seg
        logits = self.top_logits(seg.logits)
        refine, steps = self.resolved_settings()
        if not refine:
            return logits
        y0 = self.refine_prior(x, self.prior_from_logits(logits), seg.features, steps)
        if self.output_space == "logit":
            y0 = y0.clamp(1e-6, 1 - 1e-6)
            refined = torch.log(y0) - torch.log1p(-y0)
        elif self.output_space == "log":
            refined = torch.log(y0.clamp_min(1e-6))
        else:
            raise ValueError(f"output_space must be 'log' or 'logit', got {self.output_space!r}")
        combine = self.resolved_combine()
        if combine != COMBINE_NONE:
            if self.output_space != "log":
                raise ValueError(f"combine={combine!r} needs per-class (softmax) outputs; region-based "
                                 "(sigmoid, output_space 'logit') models predict the refined output alone")
            gate = self.resolved_gate() if combine == COMBINE_GATED else None
            return combine_outputs(logits, refined.to(logits.dtype), combine, gate)
        return refined.to(logits.dtype)

    @torch.no_grad()
    def refine_prior(self, x: torch.Tensor, prior: torch.Tensor, features: Sequence[torch.Tensor],
                     steps: Optional[int] = None) -> torch.Tensor:
        """The reverse chain: y_T ~ B(p), ``steps`` DDIM steps, ŷ0 averaged over ``num_samples``.

        All samples run as one batch (B·S), and the segmentor skips are projected once for the whole chain.
        Returns ŷ0 (B, K, *sp), soft, float32.
        """
        sampler = self._sampler_class()(self.diffusion, num_inference_steps=steps or self.num_inference_steps,
                                        final="mean", transition=self.transition)
        generator = torch.Generator().manual_seed(self.seed)  # on the CPU: the same masks on every device
        n = self.num_samples

        def repeat(v: torch.Tensor) -> torch.Tensor:
            return v if n == 1 else v.repeat(n, *([1] * (v.dim() - 1)))

        x, prior = repeat(x), repeat(prior)
        projected = self.refiner.project_features([repeat(f) for f in features])
        y = sampler.initial_sample(prior, generator=generator)
        for t in sampler.timesteps:
            eps_hat = torch.sigmoid(self.refiner(x, y, prior, t, projected=projected).float())
            out = sampler.step(eps_hat, t, y, prior, generator=generator)
            y = out.prev_sample
        return out.pred_y0.view(n, -1, *out.pred_y0.shape[1:]).mean(0)
