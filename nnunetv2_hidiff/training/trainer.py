"""nnUNetTrainerHiDiff: collaborative training of segmentor f (nnU-Net's SGD) and refiner g.

Default = the configuration measured best on 901 (README, "The default configuration"): width-8 binary refiner,
prior-residual head, BCE share in L_diff, one joint refiner pass per iteration, 1 DDIM step at prediction; the
paper's (width 32, Algorithm 1, T steps) is nnUNetTrainerHiDiff_paper. Per iteration, after an optional warm-up:
  joint (default): one refiner forward/backward of L_disc + λ_diff·L_diff updates both networks, g's EMA too;
  Algorithm 1 (joint_step = False): (1) refiner step, f frozen: y_t ~ q(y_t | y0, p), p = softmax(f(x))
  detached; minimise L_diff (Eq. 13) w.r.t. g; update g's EMA; (2) segmentor step, g frozen: minimise
  L_disc + λ_diff·L_diff (Eq. 17) w.r.t. f, L_diff reaching f through p and the features fed to g. One segmentor
  forward serves both steps; step 2 uses the refiner just updated. "g frozen": no gradients for g's parameters,
  g in eval mode (BatchNorm statistics neither used from the batch nor updated).

Everything else (data loading, augmentation, deep supervision, folds, validation, export, logging,
``--c``) is nnU-Net's, reached by overriding its named hooks. Configuration lives in class attributes,
so variants are one-line subclasses (see variants.py).
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunetv2_hidiff.atomic import atomic_torch_save
from nnunetv2_hidiff.diffusion import diffusion_loss
from nnunetv2_hidiff.evaluation.metrics import nan_mean
from nnunetv2_hidiff.networks import HiDiffConfig, SegmentorOutput, build_hidiff_network

from .checkpointing import (build_checkpoint, load_whole_segmentor, read_checkpoint, restore_checkpoint,
                            unwrap_and_compile)
from .clean_batches import clean_train_step, clean_training_batches
from .common import (HiDiffConfigurationError, apply_budget, apply_inference_mirroring,  # noqa: F401
                     check_supported, optimizer_step, perturbed_prior, pseudo_dice_counts, record_epoch_time,
                     start_epoch_timer, start_message, track_nonfinite, write_start_record)
from .distributed import gathered, rank_seed, use_cpu_when_no_cuda, wrap_networks
from .ema import ModelEMA
from .fold_record import update_fold_record
from .inference_settings import apply_inference_settings, warn_prediction_variables
from .oof_priors import OutOfFoldPriors, oof_template
from .progress import HiDiffLocalLogger
from .validation import validate_and_decide

# written to the fold's training log (for people) when a whole segmentor is loaded; programs read the fold
# record's "warm_start" instead (fold_record.py)
WARM_START_MESSAGE = "Loaded the whole segmentor from {path}: no segmentor warm-up."


class nnUNetTrainerHiDiff(nnUNetTrainer):
    # The HiDiff configuration: every field of HiDiffConfig (networks/config.py documents each and holds the one set
    # of defaults; docs/reference/settings.md is the table) is a class attribute of this trainer, set below the
    # class. Variants override them (variants.py); HiDiffConfig.from_attributes reads and checks them in one place.
    # The default is the configuration measured best on 901 (width-8 binary refiner, prior-residual head, BCE share
    # in L_diff, one joint refiner pass per iteration, 1 DDIM step); the paper's is nnUNetTrainerHiDiff_paper.

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # refuse before nnU-Net's __init__, which creates the fold's output folder and a log file
        check_supported(self.__class__.__name__, plans, configuration, dataset_json)
        self.hidiff_configuration = HiDiffConfig.from_attributes(type(self))  # refuses contradictory attributes
        super().__init__(plans, configuration, fold, dataset_json, device)
        use_cpu_when_no_cuda(self)  # DDP (-num_gpus) on a CPU process group: the tests' gloo runs
        if self.segmentor_optimizer == "adamw":  # else nnU-Net's initial_lr 1e-2 and weight_decay 3e-5
            self.initial_lr, self.weight_decay = self.learning_rate, self.hidiff_weight_decay
        apply_budget(self)
        self.num_warmup_epochs = (self.warmup_epochs if self.warmup_epochs is not None
                                  else int(round(self.warmup_fraction * self.num_epochs)))
        self.save_every = 1  # checkpoint_latest.pth every epoch (written atomically)
        self.logger.local_logger = HiDiffLocalLogger()
        self.hidiff = None  # HiDiffNetwork, set in initialize()
        self.refiner_optimizer = self.refiner_lr_scheduler = self.refiner_ema = None
        self.refiner_grad_scaler = (torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None)
        # the diffusion's random numbers: reproducible, different per fold and per DDP rank
        self.diffusion_seed = rank_seed(20240703 + (fold if isinstance(fold, int) else 0), self.local_rank)
        self.diffusion_rng = torch.Generator(device=self.device).manual_seed(self.diffusion_seed)
        self.segmentor_ddp = self.refiner_ddp = None  # the DDP wrappers (distributed.py) under -num_gpus
        self.nonfinite_in_a_row = self.overflow_in_a_row = 0
        self.warm_start_source: Optional[str] = None
        self.validated_checkpoint: Optional[str] = None  # the file --val/--val_best loaded
        self.oof_priors: Optional[OutOfFoldPriors] = None  # loaded in on_train_start when configured
        self.clean_batches = None  # unaugmented training batches for the refiner (clean_batches.py)

    # ------------------------------------------------------------------ set-up
    def hidiff_config(self) -> dict:
        config = {k: getattr(self, k) for k in ("binary_refiner", "use_xformer", "refiner_width",
                                                "num_diffusion_steps")}
        return {**config, "prior_residual": True} if self.prior_residual else config  # older checkpoints match

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """HiDiffNetwork of the class's HiDiffConfig from the plan. This is also what nnU-Net's predictor builds
        and loads each fold's state dict into (with the fold's stored configuration and decision): the
        nnUNet_HiDiff_* prediction variables act there only (inference_settings); the trainer switches them off."""
        network = build_hidiff_network(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            config=HiDiffConfig.from_attributes(cls), trainer_name=cls.__name__)
        network.environment_settings = apply_inference_settings
        return network

    def initialize(self):
        # under DDP, nnU-Net would wrap the whole network in one DistributedDataParallel; HiDiff's two networks with
        # their own optimizers get one wrapper each (distributed.py); the batch split and the loss stay nnU-Net's
        ddp, self.is_ddp = self.is_ddp, False
        try:
            super().initialize()
        finally:
            self.is_ddp = ddp
        # nnU-Net compiles the whole network on CUDA; only the segmentor's own calls would benefit, and the wrapper
        # would put "_orig_mod." into every checkpoint key. Compile in place instead (keys unchanged).
        self.hidiff = unwrap_and_compile(self.network, self.compile_backend)
        self.hidiff.environment_settings = None  # prediction variables never act in training or validation
        warn_prediction_variables(self)
        if ddp:
            self._set_batch_size_and_oversample()
            self.loss = self._build_loss()
            self.segmentor_ddp, self.refiner_ddp = wrap_networks(self)
        self.refiner_ema = ModelEMA(self.hidiff.refiner, self.refiner_ema_decay)
        # Until training starts, nnU-Net sees the segmentor alone, so that `-pretrained_weights` (which
        # requires every key of the network in the file) loads a plain nnUNetTrainer checkpoint into it.
        self.network = self.hidiff.segmentor
        self._load_pretrained_segmentor()

    def _load_pretrained_segmentor(self) -> None:
        path = os.environ.get("nnUNet_HiDiff_pretrained_segmentor") or self.pretrained_segmentor
        if not path:
            return
        path = path.replace("{fold}", str(self.fold))  # one setting for a whole cross-validation
        load_whole_segmentor(self.hidiff.segmentor, path, self.device)
        self.num_warmup_epochs = 0
        self.warm_start_source = path
        if self.local_rank == 0:
            update_fold_record(self.output_folder, warm_start=path)
        self.print_to_log_file(WARM_START_MESSAGE.format(path=path))

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        apply_inference_mirroring(self)
        return result

    def configure_optimizers(self):
        net = self.network  # the HiDiffNetwork while initialize() runs
        if self.segmentor_optimizer == "sgd":  # nnU-Net's recipe (nnUNetTrainer.configure_optimizers)
            seg_opt = torch.optim.SGD(net.segmentor.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                      momentum=0.99, nesterov=True)
        else:
            seg_opt = torch.optim.AdamW(net.segmentor.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        self.refiner_optimizer = torch.optim.AdamW(net.refiner.parameters(), self.learning_rate,
                                                   weight_decay=self.hidiff_weight_decay)
        self.refiner_lr_scheduler = PolyLRScheduler(self.refiner_optimizer, self.learning_rate, self.num_epochs)
        return seg_opt, PolyLRScheduler(seg_opt, self.initial_lr, self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        self.hidiff.segmentor.decoder.deep_supervision = enabled

    def diffusion_active(self) -> bool:
        return self.current_epoch >= self.num_warmup_epochs

    # ------------------------------------------------------------------ training
    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.network = self.hidiff
        super().on_train_start()
        write_start_record(self, "hidiff", self.warm_start_source, self.num_warmup_epochs,
                           config=self.hidiff_configuration.to_dict())
        template = oof_template(self)
        self.oof_priors = OutOfFoldPriors.load(self, template) if template else None  # named in the fold record
        self.clean_batches = clean_training_batches(self)  # None unless refiner_batches = "clean"
        self.print_to_log_file(start_message(self))

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.refiner_lr_scheduler.step(self.current_epoch)
        start_epoch_timer(self)

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _to_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return data, target

    def _segment(self, data):
        """The segmentor's training forward (through its DDP wrapper under -num_gpus)."""
        if self.segmentor_ddp is None:
            return self.hidiff.segment(data)
        logits, skips = self.segmentor_ddp(data)
        return SegmentorOutput(logits, skips)

    def prepare_diffusion(self, data, target, keys=None):
        """Segmentor forward (with grad) and the diffusion sample of Algorithm 1 for one batch.

        Returns a dict: seg (SegmentorOutput), l_disc, prior p (B,K,H,W), y0 (one-hot), t (B,), y_t, eps;
        only seg and l_disc when L_disc is not finite (a bad batch the caller skips). With out-of-fold priors, p
        comes from the segmentors that left the batch's cases (``keys``) out.
        """
        with self._autocast():
            seg = self._segment(data) if self.alternate_training else self.hidiff.segment(data)
            l_disc = self.loss(seg.logits, target)
        if not torch.isfinite(l_disc):
            return dict(seg=seg, l_disc=l_disc)
        logits = self.hidiff.top_logits(seg.logits)
        if self.oof_priors is not None:
            with self._autocast():
                logits = self.oof_priors.replace(data, keys, logits)
        prior = self.training_prior(logits)
        labels = (target[0] if isinstance(target, list) else target)[:, 0].long()
        y0 = F.one_hot(labels, prior.shape[1]).movedim(-1, 1).to(prior.dtype)
        diffusion = self.hidiff.diffusion
        t = diffusion.sample_timesteps(data.shape[0], self.device, self.diffusion_rng, low=self.min_train_timestep)
        y_t, eps = diffusion.q_sample(y0, prior.detach(), t, generator=self.diffusion_rng)
        return dict(seg=seg, l_disc=l_disc, prior=prior, y0=y0, t=t, y_t=y_t, eps=eps)

    def training_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """p for the diffusion terms: softmax of the logits, perturbed (common.perturbed_prior); differentiable."""
        return perturbed_prior(logits, self.prior_temperature_max, self.prior_logit_noise, self.diffusion_rng)

    def _l_diff(self, data, s: dict, prior, features, frozen: bool = False):
        refiner = self.hidiff.refiner if frozen or self.refiner_ddp is None else self.refiner_ddp
        with self._autocast():
            eps_logits = refiner(data, s["y_t"], prior, s["t"], features).float()
        return diffusion_loss(self.hidiff.diffusion, eps_logits, s["eps"], s["y_t"], s["y0"], prior, s["t"],
                              gamma=self.focal_gamma, lambda_focal=self.lambda_focal, lambda_bce=self.lambda_bce,
                              boundary_weight=self.boundary_weight)

    def refiner_step(self, data, s: dict):
        """Step (1): update g on L_diff with the segmentor's outputs detached. Returns (loss, ok)."""
        l_ref = self._l_diff(data, s, s["prior"].detach(), [f.detach() for f in s["seg"].features])
        ok = optimizer_step(l_ref.total, self.refiner_optimizer, self.hidiff.refiner, self.refiner_grad_scaler)
        if ok:
            self.refiner_ema.update(self.hidiff.refiner)
        return l_ref, ok

    def segmentor_step(self, data, s: dict, with_diffusion: bool = True):
        """Step (2): update f on L_disc + λ_diff·L_diff (Eq. 17) with g frozen. Returns (loss, ok)."""
        loss = s["l_disc"]
        if with_diffusion and self.lambda_diff:
            refiner = self.hidiff.refiner
            refiner.eval()
            refiner.requires_grad_(False)
            try:
                loss = loss + self.lambda_diff * self._l_diff(data, s, s["prior"], s["seg"].features, True).total
            finally:
                refiner.requires_grad_(True)
                refiner.train()
        ok = optimizer_step(loss, self.optimizer, self.hidiff.segmentor, self.grad_scaler)
        return loss, ok

    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        out = {**dict.fromkeys(("loss", "refiner_loss", "refiner_kl", "refiner_focal"), float("nan")), "skipped": 0}
        clean = self.clean_batches is not None and self.diffusion_active()
        s = self.prepare_diffusion(data, target, batch.get("keys")) if self.diffusion_active() and not clean else None
        if clean:  # segmentor: nnU-Net's step; refiner: an unaugmented batch (clean_batches.py)
            out.update(clean_train_step(self, data, target))
            ok = out.pop("ok")
        elif s is None:  # warm-up: nnU-Net's own step on L_disc, with our optimizer
            with self._autocast():
                l_disc = self.loss(self._segment(data).logits, target)
            ok = optimizer_step(l_disc, self.optimizer, self.hidiff.segmentor, self.grad_scaler)
            out["loss"] = float(l_disc.detach())
        elif not torch.isfinite(s["l_disc"]):
            ok = False  # the batch itself is bad (e.g. NaN in the image): skip both steps
        elif self.joint_step:  # one refiner pass: g on L_diff, f on L_disc + λ_diff·L_diff, both at once
            l_ref = self._l_diff(data, s, s["prior"], s["seg"].features)
            ok = optimizer_step(s["l_disc"] + self.lambda_diff * l_ref.total, (self.optimizer, self.refiner_optimizer),
                                (self.hidiff.segmentor, self.hidiff.refiner), self.grad_scaler)
            if ok:
                self.refiner_ema.update(self.hidiff.refiner)
            out.update(loss=float(s["l_disc"].detach() + self.lambda_diff * l_ref.total.detach()),
                       refiner_loss=float(l_ref.total.detach()), refiner_kl=float(l_ref.kl.detach()),
                       refiner_focal=float(l_ref.focal.detach()))
        else:
            l_ref, ok_ref = self.refiner_step(data, s)
            out.update(refiner_loss=float(l_ref.total.detach()), refiner_kl=float(l_ref.kl.detach()),
                       refiner_focal=float(l_ref.focal.detach()))
            if self.alternate_training:
                l_seg, ok_seg = self.segmentor_step(data, s)
                out["loss"] = float(l_seg.detach())
            else:
                ok_seg = True
                out["loss"] = float(s["l_disc"].detach())
            ok = ok_ref and ok_seg
        out["skipped"] = track_nonfinite(self, ok)
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        outputs = collate_outputs(train_outputs)
        self.logger.log("train_losses", nan_mean(gathered(outputs["loss"])), self.current_epoch)
        for key, log_key in (("refiner_loss", "refiner_losses"), ("refiner_kl",) * 2, ("refiner_focal",) * 2):
            self.logger.log(log_key, nan_mean(gathered(outputs[key])), self.current_epoch)
        self.logger.log("nonfinite_steps", int(np.sum(gathered(outputs["skipped"]))), self.current_epoch)
        record_epoch_time(self)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        self.network.eval()
        self._ema_context = self.refiner_ema.applied_to(self.hidiff.refiner)
        self._ema_context.__enter__()

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's loss and pseudo Dice, both on the segmentor in every epoch (warm-up or not), so that the
        EMA pseudo Dice that selects checkpoint_best never mixes segmentor and refined epochs; one segmentor
        forward. Whether refinement helps is decided on the fold's validation cases (validation.py)."""
        data, target = self._to_device(batch)
        with self._autocast():
            logits = self.hidiff.segment(data).logits
            loss = self.loss(logits, target)
            output = self.hidiff.top_logits(logits)
        return {"loss": loss.detach().cpu().numpy(),
                **pseudo_dice_counts(output, target[0] if isinstance(target, list) else target)}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._ema_context.__exit__(None, None, None)
        super().on_validation_epoch_end(val_outputs)

    def on_epoch_end(self):
        self.print_to_log_file(f"refiner L_diff {np.round(self.logger.get_value('refiner_losses', step=-1), 4)}"
                               if self.diffusion_active() else "refiner not trained yet (segmentor warm-up)")
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (sliding window, export, summary.json) with the EMA refiner, for the
        segmentor alone and refined; then the per-fold refinement decision (validation.py)."""
        self.network = self.hidiff
        with self.refiner_ema.applied_to(self.hidiff.refiner):
            validate_and_decide(self, super().perform_actual_validation, save_probabilities)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        atomic_torch_save(build_checkpoint(self), filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, str):
            self.validated_checkpoint = filename_or_checkpoint
        restore_checkpoint(self, read_checkpoint(self, filename_or_checkpoint))
        self.network = self.hidiff


for _name, _default in HiDiffConfig.defaults().items():  # the configuration's one set of defaults (see above)
    setattr(nnUNetTrainerHiDiff, _name, _default)
