"""HiDiffConfig: the one HiDiff configuration, with its one set of defaults, stored with the weights.

Every field is a class attribute of ``nnUNetTrainerHiDiff`` (which takes its defaults from here), so variants stay
one-line subclasses; :meth:`HiDiffConfig.from_attributes` builds the frozen object from a trainer class in one place
and checks it. The network carries it (``HiDiffNetwork.config``) and stores it in its state dict (``_extra_state``,
through ``get_extra_state``), so every checkpoint, and nnU-Net's own predictor, which loads the state dict into the
network it builds, carries the configuration the weights were trained and validated with; the fold record
(``hidiff_fold.json``, ``config``) holds it too.

At load, the *architecture* fields (:data:`ARCHITECTURE_FIELDS`) must equal those of the network being built: a
difference is a :class:`HiDiffConfigurationError` naming the field, both values and the fix. The other fields are
taken from the checkpoint, so that a class default changed after training changes nothing a trained fold predicts.

Where each field acts (``acts`` in its metadata): "training", "validation" (the trainer's final validation and its
refinement decision) or "prediction" (what a fold predicts without a stored decision, when refinement is forced).
docs/reference/settings.md is the table of all of them (a test keeps it in step with this module).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

__all__ = ["ARCHITECTURE_FIELDS", "HiDiffConfig", "HiDiffConfigurationError", "SECTIONS"]

from nnunetv2_hidiff.diffusion.sampler import BernoulliDDIMSampler

from .combine import COMBINES

TRANSITIONS = BernoulliDDIMSampler.TRANSITIONS
CHOICES = {"segmentor_optimizer": ("sgd", "adamw"), "refiner_batches": ("augmented", "clean"),
           "noise_schedule": ("cosine",), "inference_transition": TRANSITIONS}
SECTIONS = ("architecture", "training", "decision", "sampler")


class HiDiffConfigurationError(RuntimeError):
    """A dataset, plan, configuration or checkpoint this trainer cannot use; the message says why and what to do."""


def _f(default, section: str, acts: str, doc: str):
    return field(default=default, metadata={"section": section, "acts": acts, "doc": doc})


_ALL = "training, validation, prediction"


@dataclass(frozen=True)
class HiDiffConfig:
    # ---- architecture: what the weights are; must match at load (paper Sec. III-A.2 unless noted)
    binary_refiner: bool = _f(True, "architecture", _ALL, "BBDM: XNOR convolutions with TB/TA; False = real-valued twin")
    use_xformer: bool = _f(True, "architecture", _ALL, "the (B)X-Former at the refiner's bottleneck")
    refiner_width: int = _f(8, "architecture", _ALL, "refiner stage widths width·2^s (the paper's 32: _paper)")
    refiner_max_width: int = _f(256, "architecture", _ALL, "cap of the refiner's stage widths")
    refiner_blocks_per_stage: int = _f(1, "architecture", _ALL, "RefinerBlocks per refiner stage")
    prior_residual: bool = _f(True, "architecture", _ALL,
                              "the refiner head is a residual on the prior's Bayes posterior (not in the paper)")
    num_diffusion_steps: int = _f(10, "architecture", _ALL, "T, the diffusion's number of steps")
    noise_schedule: str = _f("cosine", "architecture", _ALL, "ᾱ_t schedule (cosine, s = 0.008)")
    # ---- training
    min_train_timestep: int = _f(1, "training", "training", "training draws t ~ U{min_train_timestep..T}")
    focal_gamma: float = _f(2.0, "training", "training", "γ of Eq. 12; 0 = BCE")
    lambda_focal: float = _f(1.0, "training", "training", "weight of the focal term in L_diff (Eq. 13)")
    lambda_bce: float = _f(1.0, "training", "training", "a BCE share in L_diff (not in the paper; losses.py)")
    lambda_diff: float = _f(1.0, "training", "training", "λ_diff of Eq. 17")
    boundary_weight: float = _f(0.0, "training", "training", "L_diff's weight on y0's boundary band is 1 + β")
    alternate_training: bool = _f(True, "training", "training",
                                  "False: after the warm-up only the refiner trains (Table X, V1); needs "
                                  "joint_step = False")
    joint_step: bool = _f(True, "training", "training", "one refiner pass updates both networks; False: Algorithm "
                                                        "1's refiner step, then segmentor step")
    segmentor_optimizer: str = _f("sgd", "training", "training", "'sgd': nnU-Net's recipe; 'adamw': the paper's")
    learning_rate: float = _f(1e-4, "training", "training", "AdamW learning rate (refiner; segmentor with 'adamw')")
    hidiff_weight_decay: float = _f(0.0, "training", "training", "AdamW weight decay")
    prior_temperature_max: float = _f(1.0, "training", "training",
                                      "refiner training priors: logits / τ, τ ~ U[1, max] (1: off)")
    prior_logit_noise: float = _f(0.0, "training", "training", "refiner training priors: N(0, σ²) logit noise")
    oof_prior_trainer: Optional[str] = _f(None, "training", "training",
                                          "plain nnU-Net folds whose out-of-fold priors the refiner learns from")
    refiner_batches: str = _f("augmented", "training", "training", "'clean': the refiner learns on unaugmented "
                                                                    "batches")
    warmup_epochs: Optional[int] = _f(None, "training", "training", "segmentor-only epochs; None: round(warmup_"
                                                                    "fraction · epochs)")
    warmup_fraction: float = _f(0.16, "training", "training", "the paper's 40k of 250k iterations")
    pretrained_segmentor: Optional[str] = _f(None, "training", "training",
                                             "a plain nnU-Net checkpoint loaded whole into the segmentor (no "
                                             "warm-up); {fold} is replaced")
    refiner_ema_decay: float = _f(0.9999, "training", "training, validation, prediction",
                                  "EMA of the refiner's parameters (the EMA weights validate and predict; "
                                  "BatchNorm statistics are the live model's)")
    compile_backend: str = _f("inductor", "training", "training", "torch.compile backend where nnU-Net compiles")
    max_nonfinite_in_a_row: int = _f(5, "training", "training", "non-finite steps in a row before stopping")
    max_overflow_in_a_row: int = _f(40, "training", "training", "grad-scaler overflows in a row before stopping")
    budget_epochs: Optional[int] = _f(None, "training", "training", "epochs (None: nnU-Net's 1000)")
    budget_iterations_per_epoch: Optional[int] = _f(None, "training", "training", "None: nnU-Net's 250")
    budget_val_iterations_per_epoch: Optional[int] = _f(None, "training", "training", "None: nnU-Net's 50")
    # ---- the per-fold refinement decision (validation.py)
    decision_extra_steps: Tuple[int, ...] = _f((1, 2, 5), "decision", "validation",
                                               "step counts validated besides inference_steps")
    decision_combine: Tuple[str, ...] = _f(("new_components", "union"), "decision", "validation",
                                           "combinations with the segmentor validated for each step count")
    decision_gates: Tuple[Tuple[float, float], ...] = _f((), "decision", "validation",
                                                          "(gate_add, gate_remove) pairs validated (combine 'gated')")
    decision_min_dice_gain: float = _f(0.0, "decision", "validation", "the Dice gain refinement must bring")
    decision_max_hd95_increase: float = _f(0.0, "decision", "validation",
                                           "the HD95 increase refinement may bring (inf: Dice alone decides)")
    # ---- the sampler (the validated candidates use these; a decision stores them; prediction without a decision
    # uses them when refinement is forced)
    inference_steps: Optional[int] = _f(1, "sampler", "validation, prediction", "DDIM steps (None: T)")
    inference_samples: int = _f(1, "sampler", "validation, prediction", "refinement samples averaged")
    inference_seed: int = _f(0, "sampler", "validation, prediction", "seed of the sampler's random fields")
    inference_transition: str = _f("renoise", "sampler", "validation, prediction",
                                   "intermediate DDIM states (BernoulliDDIMSampler)")
    packed_inference: bool = _f(True, "sampler", "validation, prediction",
                                "bit-packed XNOR-popcount kernels for the binary refiner on the CPU")
    inference_mirroring: bool = _f(True, "sampler", "validation, prediction",
                                   "False: no mirroring test-time augmentation (stored by nnU-Net in the checkpoint)")

    def __post_init__(self):
        self.check()

    # ------------------------------------------------------------------ building
    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def from_attributes(cls, owner) -> "HiDiffConfig":
        """The configuration a trainer class (or instance) states in its attributes; refused with one
        HiDiffConfigurationError naming the class, the attribute(s) and the fix when inconsistent."""
        name = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        values = {f.name: getattr(owner, f.name) for f in fields(cls)}
        try:
            return cls(**{k: _frozen(v) for k, v in values.items()})
        except HiDiffConfigurationError as e:
            raise HiDiffConfigurationError(f"{name}: {e}") from None

    @classmethod
    def from_dict(cls, stored: dict, fill: Optional["HiDiffConfig"] = None) -> "HiDiffConfig":
        """Inverse of :meth:`to_dict`; fields the dict lacks (a file written before they existed) come from
        ``fill`` (the network being built), else from the defaults. Unknown fields are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(stored) - names)
        if unknown:
            raise HiDiffConfigurationError(f"unknown HiDiff configuration fields {unknown} (written by a newer "
                                           f"nnunetv2_hidiff? upgrade the package)")
        base = dataclasses.asdict(fill) if fill is not None else cls.defaults()
        return cls(**{k: _frozen(stored[k]) if k in stored else _frozen(base[k]) for k in names})

    def to_dict(self) -> dict:
        """JSON-able (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def section(self, name: str) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["section"] == name}

    def architecture_differences(self, other: "HiDiffConfig") -> list:
        """[(field, self's value, other's value)] of the architecture fields that differ."""
        return [(k, getattr(self, k), getattr(other, k)) for k in ARCHITECTURE_FIELDS
                if getattr(self, k) != getattr(other, k)]

    @property
    def default_steps(self) -> int:
        return int(self.inference_steps or self.num_diffusion_steps)

    # ------------------------------------------------------------------ consistency
    def check(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise HiDiffConfigurationError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        T = self.num_diffusion_steps
        if not (isinstance(T, int) and T >= 1):
            raise HiDiffConfigurationError(f"num_diffusion_steps must be a positive integer, got {T!r}")
        for name in ("refiner_width", "refiner_max_width", "refiner_blocks_per_stage", "inference_samples"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise HiDiffConfigurationError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.inference_steps is not None and not 1 <= self.inference_steps <= T:
            raise HiDiffConfigurationError(f"inference_steps must lie in 1..num_diffusion_steps={T} (or be None "
                                           f"for T), got {self.inference_steps}")
        bad = [k for k in self.decision_extra_steps if not 1 <= int(k) <= T]
        if bad:
            raise HiDiffConfigurationError(f"decision_extra_steps {bad} must lie in 1..num_diffusion_steps={T}")
        if not 1 <= self.min_train_timestep <= T:
            raise HiDiffConfigurationError(f"min_train_timestep must lie in 1..{T}, got {self.min_train_timestep}")
        unknown = [c for c in self.decision_combine if c not in COMBINES[1:4]]
        if unknown:
            raise HiDiffConfigurationError(f"decision_combine {unknown} not among {COMBINES[1:4]}")
        if math.isnan(self.decision_max_hd95_increase) or self.decision_max_hd95_increase < 0:
            raise HiDiffConfigurationError("decision_max_hd95_increase must be ≥ 0 (inf: Dice alone decides)")
        # contradictions: refused rather than one setting silently ignored
        if not self.alternate_training and self.joint_step:
            raise HiDiffConfigurationError(
                "alternate_training = False (after the warm-up only the refiner trains) contradicts joint_step = "
                "True (one refiner pass updates both networks): set joint_step = False as well, as "
                "nnUNetTrainerHiDiff_V1 does")
        if self.joint_step and self.lambda_diff == 0:
            raise HiDiffConfigurationError(
                "lambda_diff = 0 with joint_step = True would leave the refiner untrained (its only gradient is "
                "λ_diff·L_diff): set joint_step = False (Algorithm 1: the refiner step learns L_diff on its own)")


ARCHITECTURE_FIELDS = tuple(f.name for f in fields(HiDiffConfig) if f.metadata["section"] == "architecture")


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def settings_table() -> str:
    """The markdown table of every field (docs/reference/settings.md holds it; a test keeps the two equal)."""
    rows = ["| Setting (class attribute) | Section | Acts in | Default | Meaning |", "|---|---|---|---|---|"]
    for f in fields(HiDiffConfig):
        default = "`None`" if f.default is None else f"`{_plain(f.default)!r}`".replace("|", "\\|")
        rows.append(f"| `{f.name}` | {f.metadata['section']} | {f.metadata['acts']} | {default} | "
                    f"{f.metadata['doc'].replace('|', '/')} |")
    return "\n".join(rows) + "\n"
