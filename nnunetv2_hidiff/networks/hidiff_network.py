"""HiDiffNetwork: the nnU-Net segmentor, the diffusion refiner and the Bernoulli diffusion in one module."""
from __future__ import annotations

import sys
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .combine import COMBINE_GATED, COMBINE_NONE, COMBINES, check_gate, combine_outputs
from .config import HiDiffConfig, HiDiffConfigurationError
from .refiner import HiDiffRefiner

__all__ = ["HiDiffNetwork", "SegmentorOutput", "check_decision"]

FORCEABLE = ("refine", "steps", "samples", "seed", "transition", "combine", "gate")
DEFAULT_GATE = (0.5, 1.0)  # combine "gated" forced without a gate


DECISION_FORMAT = 1  # of the network's extra state: {"format", "trainer", "config", "decision"}


def check_decision(decision: Optional[dict], num_steps: int) -> Optional[dict]:
    """A stored decision, checked and normalised: {"refine", "steps", "combine", "gate", "transition", "samples",
    "seed"} with every setting explicit (for "segmentor alone": steps 0, combine "none", the rest None), or None
    (no decision: the network predicts the segmentor alone). Raises ValueError naming the bad entry."""
    if decision is None:
        return None
    if not isinstance(decision, dict) or "refine" not in decision:
        raise ValueError(f"a decision is a dict with 'refine', got {decision!r}")
    if not decision["refine"]:
        return {"refine": False, "steps": 0, "combine": COMBINE_NONE, "gate": None, "transition": None,
                "samples": None, "seed": None}
    missing = [k for k in ("steps", "combine", "transition", "samples", "seed") if decision.get(k) is None]
    if missing:
        raise ValueError(f"a refining decision names every setting it was validated with; missing: {missing}")
    steps, combine = int(decision["steps"]), decision["combine"]
    if not 1 <= steps <= num_steps:
        raise ValueError(f"decision steps must lie in 1..{num_steps}, got {steps}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    transition = decision["transition"]
    if transition not in HiDiffNetwork._sampler_class().TRANSITIONS:
        raise ValueError(f"decision transition {transition!r} unknown")
    gate = decision.get("gate")
    if combine == COMBINE_GATED:
        if gate is None:
            raise ValueError("combine='gated' needs a gate (gate_add, gate_remove)")
        gate = list(check_gate(gate))
    else:
        gate = None
    samples, seed = int(decision["samples"]), int(decision["seed"])
    if samples < 1:
        raise ValueError(f"decision samples must be at least 1, got {samples}")
    return {"refine": True, "steps": steps, "combine": combine, "gate": gate, "transition": transition,
            "samples": samples, "seed": seed}


def legacy_decision(buffer, gate_buffer, config: HiDiffConfig) -> Tuple[Optional[dict], Optional[str]]:
    """The decision of a state dict written before 2026-12-07 (buffers ``inference_decision`` = [mode, steps],
    steps 0 meaning "the network's default", and ``inference_gate`` in per mille), read with the configuration of
    the trainer class that loads it. [1, 0] was both "never validated" and "refine with the default steps": it
    loads as no decision (segmentor alone). Returns (decision, a note for the user or None)."""
    mode, steps = (int(v) for v in buffer.tolist())
    if mode == 0:
        return check_decision({"refine": False}, config.num_diffusion_steps), None
    if mode == 1 and steps == 0:
        return None, ("this checkpoint predates explicit refinement decisions (its [1, 0] means either 'never "
                      "validated' or 'refine with the default steps'); it predicts the segmentor alone. To store "
                      "the fold's decision explicitly, validate it again: nnUNetv2_train DATASET CONFIG FOLD -tr "
                      "TRAINER --val (or nnunetv2_hidiff_decide on its folds)")
    combine = COMBINES[mode - 1]
    gate = [int(v) / 1000 for v in gate_buffer.tolist()] if combine == COMBINE_GATED else None
    return check_decision({"refine": True, "steps": steps or config.default_steps, "combine": combine, "gate": gate,
                           "transition": config.inference_transition, "samples": config.inference_samples,
                           "seed": config.inference_seed}, config.num_diffusion_steps), None


class SegmentorOutput(NamedTuple):
    """logits: exactly what the segmentor's decoder returns (a list, highest resolution first, with deep
    supervision on; a tensor (B, K, *sp) otherwise); features: the encoder skips, one per stage."""
    logits: Union[torch.Tensor, List[torch.Tensor]]
    features: List[torch.Tensor]


class HiDiffNetwork(nn.Module):
    """Segmentor f + refiner g + Bernoulli diffusion, with a single state dict.

    The segmentor is the network of the nnU-Net plan (anything with ``.encoder(x) -> skips`` and
    ``.decoder(skips) -> logits``, e.g. PlainConvUNet or ResidualEncoderUNet). The diffusion object
    is plain Python (no parameters or buffers). The state dict holds ``segmentor.*``, ``refiner.*`` and
    ``_extra_state`` (:meth:`get_extra_state`): the :class:`HiDiffConfig` the weights were built with, the trainer
    class that built them, and the refinement decision.

    Train mode: ``forward(x)`` is the segmentor's output (deep-supervision list or tensor), and
    :meth:`segment`, :meth:`prior_from_logits`, :meth:`refiner_forward` give the trainer the pieces.

    Eval mode: ``forward(x)`` is a drop-in for nnU-Net's sliding-window predictor. Without a decision (a checkpoint
    that was never validated) and without forced settings it is the segmentor's logits. With refinement:
    segmentor → p = softmax(logits) → y_T ~ B(p) → Bernoulli DDIM refinement over ``steps`` → ŷ0 averaged over
    ``samples`` → log(clamp(ŷ0, 1e-6)), shape (B, K, *sp), finite, optionally combined with the segmentor's output
    (networks/combine.py). nnU-Net's softmax of these "logits" is ŷ0 normalised over classes, so Gaussian
    aggregation and argmax work unchanged. With ``output_space = "logit"`` it returns logit(ŷ0) instead, which is
    what a region-based (sigmoid) label manager needs.

    What it predicts with (:meth:`settings`): each setting's forced value (the attributes ``refine``, ``steps``,
    ``samples``, ``seed``, ``transition``, ``combine``, ``gate``; None = not forced), else the stored decision's
    (which names every setting it was validated with), else the configuration's sampler defaults; without a decision
    and without forced refinement, the segmentor alone. Forcing refinement without forcing ``combine`` gives the
    refined output alone. ``environment_settings`` (a function, set by the trainer class for nnU-Net's predictor,
    None in training and the trainer's validation) is applied before the first prediction after each load: it sets
    the forced attributes from the nnUNet_HiDiff_* environment variables.
    """

    def __init__(self, segmentor: nn.Module, refiner: HiDiffRefiner, diffusion, num_classes: int,
                 config: Optional[HiDiffConfig] = None, trainer_name: Optional[str] = None):
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
        self.config = config if config is not None else HiDiffConfig(num_diffusion_steps=diffusion.num_steps)
        if self.config.num_diffusion_steps != diffusion.num_steps:
            raise ValueError(f"config.num_diffusion_steps={self.config.num_diffusion_steps} but the diffusion has "
                             f"{diffusion.num_steps} steps")
        self.trainer_name = trainer_name
        self.decision: Optional[dict] = None
        self.refine: Optional[bool] = None
        self.steps: Optional[int] = None
        self.samples: Optional[int] = None
        self.seed: Optional[int] = None
        self.transition: Optional[str] = None
        self.combine: Optional[str] = None
        self.gate: Optional[Tuple[float, float]] = None
        self.output_space = "log"
        self.environment_settings = None
        self._environment_applied = False
        self._told_undecided = False

    def force(self, **settings) -> None:
        """Set forced settings (refine, steps, samples, seed, transition, combine, gate); None un-forces one."""
        unknown = set(settings) - set(FORCEABLE)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; forceable: {FORCEABLE}")
        for key, value in settings.items():
            setattr(self, key, value)

    @property
    def num_inference_steps(self) -> int:
        """The steps a refinement without a decision runs: forced ``steps``, else the configuration's."""
        return int(self.steps or self.config.default_steps)

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
    def set_decision(self, decision: Optional[dict]) -> None:
        """Store the refinement decision (see :func:`check_decision`; None: no decision, the segmentor alone)."""
        self.decision = check_decision(decision, self.diffusion.num_steps)

    def settings(self) -> dict:
        """What this network predicts with: {"refine", "steps", "samples", "seed", "transition", "combine",
        "gate"} from the forced settings, then the stored decision, then the configuration (class docstring)."""
        if self.environment_settings is not None and not self._environment_applied:
            self.environment_settings(self)
            self._environment_applied = True
        decided = self.decision if self.decision is not None and self.decision["refine"] else None
        refine = self.refine if self.refine is not None else decided is not None
        c = self.config

        def pick(forced, key, default):
            return forced if forced is not None else (decided[key] if decided is not None else default)

        combine = self.combine if self.combine is not None else (
            decided["combine"] if decided is not None and self.refine is None else COMBINE_NONE)
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        gate = self.gate if self.gate is not None else (decided or {}).get("gate") or DEFAULT_GATE
        out = {"refine": bool(refine), "steps": int(pick(self.steps, "steps", c.default_steps)),
               "samples": int(pick(self.samples, "samples", c.inference_samples)),
               "seed": int(pick(self.seed, "seed", c.inference_seed)),
               "transition": pick(self.transition, "transition", c.inference_transition),
               "combine": combine, "gate": tuple(check_gate(gate))}
        if not 1 <= out["steps"] <= self.diffusion.num_steps:
            raise ValueError(f"steps must lie in 1..{self.diffusion.num_steps}, got {out['steps']}")
        if self.decision is None and self.refine is None and not self._told_undecided:
            self._told_undecided = True
            print("HiDiff: this checkpoint carries no refinement decision (it was not validated): predicting the "
                  "segmentor alone. Force refinement with nnunetv2_hidiff_predict --refine (nnUNet_HiDiff_refine=1)"
                  + (f"; {self._legacy_note}" if getattr(self, "_legacy_note", None) else "") + ".",
                  file=sys.stderr)
        return out

    # ------------------------------------------------------------------ configuration and decision in the state dict
    def get_extra_state(self) -> dict:
        return {"format": DECISION_FORMAT, "trainer": self.trainer_name, "config": self.config.to_dict(),
                "decision": None if self.decision is None else dict(self.decision)}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("format") != DECISION_FORMAT:
            raise HiDiffConfigurationError(f"unreadable HiDiff state in the checkpoint (format "
                                           f"{state.get('format') if isinstance(state, dict) else state!r}; this "
                                           f"package reads format {DECISION_FORMAT}): upgrade nnunetv2_hidiff")
        stored = HiDiffConfig.from_dict(state.get("config") or {}, fill=self.config)
        differences = stored.architecture_differences(self.config)
        if differences:
            writer = state.get("trainer") or "another trainer"
            builder = self.trainer_name or "this network"
            lines = "; ".join(f"{k} = {a!r} in the checkpoint ({writer}), {b!r} in {builder}"
                              for k, a, b in differences)
            raise HiDiffConfigurationError(
                f"the weights were trained with another HiDiff architecture: {lines}. Predict with the trainer that "
                f"trained them (-tr {writer}), or a subclass with {', '.join(f'{k} = {a!r}' for k, a, _ in differences)}."
                " (A model trained as nnUNetTrainerHiDiff before 2026-12-03 has the paper's width-32 refiner: it "
                "loads as nnUNetTrainerHiDiff_paper.)")
        if stored.packed_inference != self.config.packed_inference:
            self.packed = stored.packed_inference  # the kernels the fold validated with
        self.config = stored  # the stored training, decision and sampler settings win over the class's current ones
        decision = check_decision(state.get("decision"), self.diffusion.num_steps)
        if decision != self.decision:  # the same checkpoint loaded again (nnU-Net does, per case) tells once
            self._told_undecided = False
        self.decision = decision
        self._environment_applied = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        own = self.refiner.state_dict(prefix=prefix + "refiner.")
        for key, value in state_dict.items():
            if key in own and torch.is_tensor(value) and value.shape != own[key].shape:
                raise HiDiffConfigurationError(
                    f"the weights were trained with another refiner configuration: {key} has shape "
                    f"{tuple(value.shape)} there and {tuple(own[key].shape)} in this network. A model trained as "
                    f"nnUNetTrainerHiDiff before 2026-12-03 has the paper's width-32 refiner: it loads as "
                    f"nnUNetTrainerHiDiff_paper (README, 'The default configuration').")
        buffer = state_dict.pop(prefix + "inference_decision", None)  # state dicts written before 2026-12-07
        gate = state_dict.pop(prefix + "inference_gate", None)
        self._legacy_note = None
        if prefix + "_extra_state" not in state_dict:
            decision, self._legacy_note = (legacy_decision(buffer, gate, self.config) if buffer is not None
                                           else (None, None))
            state_dict[prefix + "_extra_state"] = {"format": DECISION_FORMAT, "trainer": self.trainer_name,
                                                   "config": self.config.to_dict(), "decision": decision}
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
        settings = self.settings()
        if not settings["refine"]:
            return logits
        y0 = self.refine_prior(x, self.prior_from_logits(logits), seg.features, settings=settings)
        if self.output_space == "logit":
            y0 = y0.clamp(1e-6, 1 - 1e-6)
            refined = torch.log(y0) - torch.log1p(-y0)
        elif self.output_space == "log":
            refined = torch.log(y0.clamp_min(1e-6))
        else:
            raise ValueError(f"output_space must be 'log' or 'logit', got {self.output_space!r}")
        combine = settings["combine"]
        if combine != COMBINE_NONE:
            if self.output_space != "log":
                raise ValueError(f"combine={combine!r} needs per-class (softmax) outputs; region-based "
                                 "(sigmoid, output_space 'logit') models predict the refined output alone")
            gate = settings["gate"] if combine == COMBINE_GATED else None
            return combine_outputs(logits, refined.to(logits.dtype), combine, gate)
        return refined.to(logits.dtype)

    @torch.no_grad()
    def refine_prior(self, x: torch.Tensor, prior: torch.Tensor, features: Sequence[torch.Tensor],
                     steps: Optional[int] = None, settings: Optional[dict] = None,
                     return_samples: bool = False) -> torch.Tensor:
        """The reverse chain: y_T ~ B(p), ``steps`` DDIM steps, ŷ0 averaged over ``samples`` (``settings``: a dict
        as :meth:`settings` returns, default that; ``steps`` replaces its steps). The random fields come from a fresh CPU generator seeded with
        ``seed`` per call: deterministic, and the same on every device.

        All samples run as one batch (B·S), and the segmentor skips are projected once for the whole chain.
        Returns ŷ0 (B, K, *sp), soft, float32; with ``return_samples`` every sample's ŷ0, (S, B, K, *sp).
        """
        s = dict(self.settings() if settings is None else settings, **({"steps": steps} if steps else {}))
        sampler = self._sampler_class()(self.diffusion, num_inference_steps=s["steps"], final="mean",
                                        transition=s["transition"])
        generator = torch.Generator().manual_seed(s["seed"])  # on the CPU: the same masks on every device
        n = s["samples"]

        def repeat(v: torch.Tensor) -> torch.Tensor:
            return v if n == 1 else v.repeat(n, *([1] * (v.dim() - 1)))

        x, prior = repeat(x), repeat(prior)
        projected = self.refiner.project_features([repeat(f) for f in features])
        y = sampler.initial_sample(prior, generator=generator)
        for t in sampler.timesteps:
            eps_hat = torch.sigmoid(self.refiner(x, y, prior, t, projected=projected).float())
            out = sampler.step(eps_hat, t, y, prior, generator=generator)
            y = out.prev_sample
        y0 = out.pred_y0.view(n, -1, *out.pred_y0.shape[1:])
        return y0 if return_samples else y0.mean(0)
