"""nnUNetTrainerHiDiff: alternate-collaborative training of segmentor f and refiner g (Algorithm 1).

Every iteration (after an optional warm-up in which the segmentor trains alone):
  (1) refiner step, f frozen: y_t ~ q(y_t | y0, p) with p = softmax(f(x)) detached; minimise L_diff
      (Eq. 13) w.r.t. g; update g's EMA;
  (2) segmentor step, g frozen: minimise L_hybrid = L_disc + λ_diff·L_diff (Eq. 17) w.r.t. f, with the
      gradient of L_diff reaching f through the prior p and the segmentor features fed to g.
One segmentor forward serves both steps (f does not change in step 1); g runs once per step, so step 2
uses the refiner just updated in step 1. "g frozen" means: no gradients for g's parameters, and g in
eval mode, so its BatchNorm statistics are neither used from the batch nor updated.

Everything else (data loading, augmentation, deep supervision, folds, validation, export, logging,
``--c``) is nnU-Net's, reached by overriding its named hooks. Configuration lives in class attributes,
so variants are one-line subclasses (see variants.py).
"""
from __future__ import annotations

import os
import warnings
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
from nnunetv2_hidiff.networks import build_hidiff_network

from .checkpointing import get_rng_states, set_rng_states
from .ema import ModelEMA
from .inference_settings import apply_inference_settings
from .progress import HiDiffLocalLogger


# written to the fold's training log when a whole segmentor is loaded; the benchmark reads it back to report
# warm-started folds (benchmark/runner.py: warm_start_source)
WARM_START_MESSAGE = "Loaded the whole segmentor from {path}: no segmentor warm-up."


class HiDiffConfigurationError(RuntimeError):
    """A dataset, plan or checkpoint this trainer cannot use; the message says why and what to do."""


def apply_budget(trainer) -> None:
    """Apply the class attributes budget_epochs / budget_iterations_per_epoch /
    budget_val_iterations_per_epoch (None keeps nnU-Net's 1000 / 250 / 50)."""
    for attr, target in (("budget_epochs", "num_epochs"), ("budget_iterations_per_epoch", "num_iterations_per_epoch"),
                         ("budget_val_iterations_per_epoch", "num_val_iterations_per_epoch")):
        if getattr(trainer, attr, None) is not None:
            setattr(trainer, target, getattr(trainer, attr))


def apply_inference_mirroring(trainer) -> None:
    """Honour the class attribute inference_mirroring (False: no mirroring TTA in validation and prediction).
    Call after nnU-Net's configure_rotation_dummyDA_mirroring_and_inital_patch_size."""
    if not trainer.inference_mirroring:
        trainer.inference_allowed_mirroring_axes = None


def extend_validation_summary(trainer) -> None:
    """Add HD95, sensitivity, accuracy, NaN ratios and the small-object report to the fold's
    validation/summary.json (nnU-Net's keys are kept). A failure is logged, not raised: nnU-Net's own
    summary is already complete at this point."""
    from nnunetv2.configuration import default_num_processes

    from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_fold

    if trainer.local_rank != 0:
        return
    try:
        result = evaluate_fold(trainer.output_folder, num_processes=default_num_processes)
        trainer.print_to_log_file("HiDiff metrics added to validation/summary.json: foreground HD95",
                                  result["foreground_mean"].get("HD95"))
    except EvaluationError as e:
        trainer.print_to_log_file(f"Could not add HiDiff metrics to validation/summary.json: {e}")


class nnUNetTrainerHiDiff(nnUNetTrainer):
    # ---- HiDiff configuration (paper Sec. III-A.2 unless noted); variants override these ----
    binary_refiner = True  # BBDM (XNOR convolutions, TB/TA); False = real-valued twin
    use_xformer = True  # (B)X-Former at the bottleneck
    refiner_width = 32
    num_diffusion_steps = 10  # T
    focal_gamma = 2.0  # γ of Eq. 12; 0 = BCE
    lambda_focal = 1.0  # Eq. 13
    lambda_diff = 1.0  # Eq. 17
    alternate_training = True  # False (Table X, V1): after warm-up only the refiner trains
    learning_rate = 1e-4  # AdamW for both networks, poly decay
    hidiff_weight_decay = 0.0  # the authors' AdamW uses none
    # warm-up: the paper pre-trains the segmentor for 40k iterations = 160 of nnU-Net's 250-iteration
    # epochs, i.e. 16 % of the default 1000 epochs. Skipped when a whole segmentor is loaded (below).
    warmup_epochs: Optional[int] = None  # None → round(warmup_fraction · num_epochs)
    warmup_fraction = 0.16
    # a finished plain nnU-Net checkpoint of the same plan whose *whole* segmentor (segmentation heads
    # included) is loaded before training; the warm-up is then skipped. The environment variable
    # nnUNet_HiDiff_pretrained_segmentor overrides it. (nnU-Net's -pretrained_weights also works but, by
    # nnU-Net's design, does not transfer the segmentation heads, so the warm-up is kept in that case.)
    pretrained_segmentor: Optional[str] = None
    refiner_ema_decay = 0.9999
    # prediction defaults (nnUNet_HiDiff_* environment variables override them at predict time)
    inference_steps: Optional[int] = None  # None → T
    inference_mirroring = True  # False: no mirroring test-time augmentation in validation/prediction
    max_nonfinite_in_a_row = 5
    # training budget (None keeps nnU-Net's 1000 × 250 iterations, 50 validation iterations)
    budget_epochs: Optional[int] = None
    budget_iterations_per_epoch: Optional[int] = None
    budget_val_iterations_per_epoch: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # refuse before nnU-Net's __init__, which creates the fold's output folder and a log file
        self._check_supported(plans, configuration, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.learning_rate
        self.weight_decay = self.hidiff_weight_decay
        apply_budget(self)
        self.num_warmup_epochs = (self.warmup_epochs if self.warmup_epochs is not None
                                  else int(round(self.warmup_fraction * self.num_epochs)))
        self.save_every = 1  # checkpoint_latest.pth every epoch (written atomically)
        self.logger.local_logger = HiDiffLocalLogger()
        self.hidiff = None  # HiDiffNetwork, set in initialize()
        self.refiner_optimizer = self.refiner_lr_scheduler = self.refiner_ema = None
        self.refiner_grad_scaler = (torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None)
        self.diffusion_rng = torch.Generator(device=self.device).manual_seed(20240703 + fold if isinstance(fold, int) else 20240703)
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------ set-up
    @classmethod
    def _check_supported(cls, plans: dict, configuration: str, dataset_json: dict) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        name = cls.__name__
        plans_manager = PlansManager(plans)
        patch_size = plans_manager.get_configuration(configuration).patch_size
        label_manager = plans_manager.get_label_manager(dataset_json)
        if len(patch_size) != 2:
            raise HiDiffConfigurationError(
                f"{name} supports 2d configurations only; configuration '{configuration}' has a "
                f"{len(patch_size)}D patch. Train with '-c 2d'.")
        if label_manager.has_regions:
            raise HiDiffConfigurationError(
                f"{name} does not support region-based training (dataset.json 'regions_class_order'); "
                f"use plain labels.")
        if label_manager.has_ignore_label:
            raise HiDiffConfigurationError(
                f"{name} does not support an ignore label (dataset.json label 'ignore'): the diffusion "
                f"target y0 needs a class for every pixel.")
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # nnU-Net's is_ddp
            raise HiDiffConfigurationError(f"{name} does not support multi-GPU (DDP) training.")

    def hidiff_config(self) -> dict:
        return {k: getattr(self, k) for k in ("binary_refiner", "use_xformer", "refiner_width",
                                              "num_diffusion_steps")}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """HiDiffNetwork from the plan (also what nnUNetv2_predict builds: eval forward = refinement;
        prediction settings come from nnUNet_HiDiff_* environment variables, see inference_settings)."""
        network = build_hidiff_network(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            binary=cls.binary_refiner, use_xformer=cls.use_xformer, refiner_width=cls.refiner_width,
            num_diffusion_steps=cls.num_diffusion_steps)
        if cls.inference_steps is not None:
            network.num_inference_steps = cls.inference_steps
        apply_inference_settings(network)
        return network

    def initialize(self):
        super().initialize()
        self.hidiff = self.network
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
        try:
            weights = torch.load(path, map_location=self.device, weights_only=False)["network_weights"]
        except Exception as e:
            raise HiDiffConfigurationError(f"{path}: cannot read the segmentor checkpoint ({e}); expected a "
                                           f"checkpoint_final.pth of a plain nnU-Net training") from None
        try:
            self.hidiff.segmentor.load_state_dict(weights)
        except RuntimeError as e:
            raise HiDiffConfigurationError(f"{path}: not a segmentor of this plan and dataset "
                                           f"({str(e).splitlines()[0]} ...)") from None
        self.num_warmup_epochs = 0
        self.print_to_log_file(WARM_START_MESSAGE.format(path=path))

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        apply_inference_mirroring(self)
        return result

    def configure_optimizers(self):
        net = self.network  # the HiDiffNetwork while initialize() runs
        seg_opt = torch.optim.AdamW(net.segmentor.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        self.refiner_optimizer = torch.optim.AdamW(net.refiner.parameters(), self.initial_lr,
                                                   weight_decay=self.weight_decay)
        self.refiner_lr_scheduler = PolyLRScheduler(self.refiner_optimizer, self.initial_lr, self.num_epochs)
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
        self.print_to_log_file(f"HiDiff: {self.hidiff_config()}, λ_diff={self.lambda_diff}, "
                               f"λ_focal={self.lambda_focal}, γ={self.focal_gamma}, alternate={self.alternate_training}, "
                               f"warm-up epochs={self.num_warmup_epochs}, refiner EMA={self.refiner_ema_decay}")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.refiner_lr_scheduler.step(self.current_epoch)

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _to_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return data, target

    def _optimizer_step(self, loss, optimizer, module, scaler) -> bool:
        """Backward + clipped step; returns False (and changes nothing) when loss or gradients are not finite."""
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return False
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), 12)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            return False
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return True

    def prepare_diffusion(self, data, target):
        """Segmentor forward (with grad) and the diffusion sample of Algorithm 1 for one batch.

        Returns a dict: seg (SegmentorOutput), l_disc, prior p (B,K,H,W), y0 (one-hot), t (B,), y_t, eps;
        only seg and l_disc when L_disc is not finite (a bad batch the caller skips).
        """
        with self._autocast():
            seg = self.hidiff.segment(data)
            l_disc = self.loss(seg.logits, target)
        if not torch.isfinite(l_disc):
            return dict(seg=seg, l_disc=l_disc)
        prior = self.hidiff.prior_from_logits(seg.logits)
        labels = (target[0] if isinstance(target, list) else target)[:, 0].long()
        y0 = F.one_hot(labels, prior.shape[1]).movedim(-1, 1).to(prior.dtype)
        diffusion = self.hidiff.diffusion
        t = diffusion.sample_timesteps(data.shape[0], device=self.device, generator=self.diffusion_rng)
        y_t, eps = diffusion.q_sample(y0, prior.detach(), t, generator=self.diffusion_rng)
        return dict(seg=seg, l_disc=l_disc, prior=prior, y0=y0, t=t, y_t=y_t, eps=eps)

    def _l_diff(self, data, s: dict, prior, features):
        with self._autocast():
            eps_logits = self.hidiff.refiner_forward(data, s["y_t"], prior, s["t"], features).float()
        return diffusion_loss(self.hidiff.diffusion, eps_logits, s["eps"], s["y_t"], s["y0"], prior, s["t"],
                              gamma=self.focal_gamma, lambda_focal=self.lambda_focal)

    def refiner_step(self, data, s: dict):
        """Step (1): update g on L_diff with the segmentor's outputs detached. Returns (loss, ok)."""
        l_ref = self._l_diff(data, s, s["prior"].detach(), [f.detach() for f in s["seg"].features])
        ok = self._optimizer_step(l_ref.total, self.refiner_optimizer, self.hidiff.refiner, self.refiner_grad_scaler)
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
                loss = loss + self.lambda_diff * self._l_diff(data, s, s["prior"], s["seg"].features).total
            finally:
                refiner.requires_grad_(True)
                refiner.train()
        ok = self._optimizer_step(loss, self.optimizer, self.hidiff.segmentor, self.grad_scaler)
        return loss, ok

    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        nan = float("nan")
        out = {"loss": nan, "refiner_loss": nan, "refiner_kl": nan, "refiner_focal": nan, "skipped": 0}
        s = self.prepare_diffusion(data, target) if self.diffusion_active() else None
        if s is None:  # warm-up: nnU-Net's own step on L_disc, with our optimizer
            with self._autocast():
                l_disc = self.loss(self.hidiff.segment(data).logits, target)
            ok = self._optimizer_step(l_disc, self.optimizer, self.hidiff.segmentor, self.grad_scaler)
            out["loss"] = float(l_disc.detach())
        elif not torch.isfinite(s["l_disc"]):
            ok = False  # the batch itself is bad (e.g. NaN in the image): skip both steps
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
        if ok:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            out["skipped"] = 1
            self.print_to_log_file(f"Non-finite loss or gradient in epoch {self.current_epoch}: step skipped "
                                   f"({self.nonfinite_in_a_row} in a row).")
            if self.nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
                raise RuntimeError(
                    f"{self.nonfinite_in_a_row} training steps in a row had a non-finite loss or gradient "
                    f"(limit max_nonfinite_in_a_row={self.max_nonfinite_in_a_row}); stopping. Check the "
                    f"preprocessed data for NaN/Inf and consider a lower learning rate. The last good "
                    f"checkpoint is {self.output_folder}/checkpoint_latest.pth (resume with --c).")
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        outputs = collate_outputs(train_outputs)
        self.logger.log("train_losses", nan_mean(outputs["loss"]), self.current_epoch)
        for key in ("refiner_loss", "refiner_kl", "refiner_focal"):
            log_key = "refiner_losses" if key == "refiner_loss" else key
            self.logger.log(log_key, nan_mean(outputs[key]), self.current_epoch)
        self.logger.log("nonfinite_steps", int(np.sum(outputs["skipped"])), self.current_epoch)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        self.network.eval()
        self._ema_context = self.refiner_ema.applied_to(self.hidiff.refiner)
        self._ema_context.__enter__()

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's loss on the segmentor; pseudo Dice on the refined prediction once diffusion runs."""
        data, target = self._to_device(batch)
        with self._autocast():
            logits = self.hidiff.segment(data).logits
            loss = self.loss(logits, target)
            output = self.hidiff.predict(data) if self.diffusion_active() else self.hidiff.top_logits(logits)
        target = target[0] if isinstance(target, list) else target
        axes = [0] + list(range(2, output.ndim))
        predicted = torch.zeros(output.shape, device=output.device, dtype=torch.float32)
        predicted.scatter_(1, output.argmax(1, keepdim=True), 1)
        onehot = torch.zeros_like(predicted).scatter_(1, target.long(), 1)
        tp = (predicted * onehot).sum(axes)[1:]
        fp = (predicted * (1 - onehot)).sum(axes)[1:]
        fn = ((1 - predicted) * onehot).sum(axes)[1:]
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(),
                "fn_hard": fn.cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._ema_context.__exit__(None, None, None)
        super().on_validation_epoch_end(val_outputs)

    def on_epoch_end(self):
        self.print_to_log_file("refiner L_diff", np.round(self.logger.get_value("refiner_losses", step=-1), 4),
                               "(warm-up)" if not self.diffusion_active() else "")
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (sliding window, export, summary.json) with the EMA refiner."""
        self.network = self.hidiff
        with self.refiner_ema.applied_to(self.hidiff.refiner):
            super().perform_actual_validation(save_probabilities)
        extend_validation_summary(self)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        with self.refiner_ema.applied_to(self.hidiff.refiner):  # what nnUNetv2_predict loads
            exported = {k: v.detach().clone() for k, v in self.hidiff.state_dict().items()}
        checkpoint = {
            "network_weights": exported,
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "hidiff": {
                "config": self.hidiff_config(),
                "refiner_weights": {k: v.detach().clone() for k, v in self.hidiff.refiner.state_dict().items()},
                "refiner_optimizer_state": self.refiner_optimizer.state_dict(),
                "refiner_grad_scaler_state": (self.refiner_grad_scaler.state_dict()
                                              if self.refiner_grad_scaler is not None else None),
                "refiner_ema": self.refiner_ema.state_dict(),
                "num_warmup_epochs": self.num_warmup_epochs,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "diffusion_rng_state": self.diffusion_rng.get_state(),
                "rng_states": get_rng_states(),
            },
        }
        atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the given checkpoint"
        if isinstance(filename_or_checkpoint, str):
            try:
                checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
            except Exception as e:
                raise HiDiffConfigurationError(f"{source}: cannot read the checkpoint ({e}). The file may be "
                                               f"truncated or not a PyTorch checkpoint.") from None
        else:
            checkpoint = filename_or_checkpoint
        if "hidiff" not in checkpoint:
            raise HiDiffConfigurationError(
                f"{source} was written by {checkpoint.get('trainer_name', 'another trainer')}, not by a HiDiff "
                f"trainer. To start HiDiff from a plain nnU-Net model, set "
                f"nnUNet_HiDiff_pretrained_segmentor=<its checkpoint_final.pth> and train without --c.")
        h = checkpoint["hidiff"]
        if h["config"] != self.hidiff_config():
            raise HiDiffConfigurationError(
                f"{source} holds a HiDiff model with {h['config']} ({checkpoint['trainer_name']}), but "
                f"{self.__class__.__name__} builds {self.hidiff_config()}.")
        self.hidiff.load_state_dict(checkpoint["network_weights"])
        self.hidiff.refiner.load_state_dict(h["refiner_weights"])
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.refiner_optimizer.load_state_dict(h["refiner_optimizer_state"])
        for scaler, state in ((self.grad_scaler, checkpoint["grad_scaler_state"]),
                              (self.refiner_grad_scaler, h["refiner_grad_scaler_state"])):
            if scaler is not None and state is not None:
                scaler.load_state_dict(state)
        self.refiner_ema.load_state_dict(h["refiner_ema"])
        self.num_warmup_epochs = h["num_warmup_epochs"]
        self.nonfinite_in_a_row = h["nonfinite_in_a_row"]
        self.diffusion_rng.set_state(h["diffusion_rng_state"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_rng_states(h["rng_states"])
        self.network = self.hidiff
