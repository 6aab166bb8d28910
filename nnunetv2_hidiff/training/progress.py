"""nnU-Net's local logger with the refiner's losses registered and drawn into progress.png."""
from __future__ import annotations

from os.path import join

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

HIDIFF_LOG_KEYS = ("refiner_losses", "refiner_kl", "refiner_focal", "nonfinite_steps")


class HiDiffLocalLogger(LocalLogger):
    """Registers HiDiff's per-epoch keys (nnU-Net's logger asserts keys exist before use) and adds a
    fourth panel with the refiner's L_diff, KL and focal terms to progress.png."""

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for key in HIDIFF_LOG_KEYS:
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        for key in HIDIFF_LOG_KEYS:  # checkpoints of older runs may lack a key
            self.my_fantastic_logging.setdefault(key, [])

    def plot_progress_png(self, output_folder: str):
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        if epoch < 0:
            return
        # a single epoch is a point, not a line: draw markers while there are few epochs
        with plt.rc_context({"lines.marker": "o" if epoch < 2 else "None"}):
            self._plot(log, epoch, output_folder)

    @staticmethod
    def _plot(log: dict, epoch: int, output_folder: str) -> None:
        x = list(range(epoch + 1))
        fig, axes = plt.subplots(4, 1, figsize=(15, 24))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:epoch + 1], color="b", label="loss_tr (segmentor)", linewidth=2)
        ax.plot(x, log["val_losses"][:epoch + 1], color="r", label="loss_val", linewidth=2)
        ax2 = ax.twinx()
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice")
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=2)
        ax.set(xlabel="epoch", ylabel="loss")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.3, 1))
        durations = [e - s for e, s in zip(log["epoch_end_timestamps"][:epoch + 1], log["epoch_start_timestamps"])]
        axes[1].plot(x, durations, color="b", label="epoch duration", linewidth=2)
        axes[1].set(xlabel="epoch", ylabel="time [s]", ylim=(0, max(durations + [1]) * 1.1))
        axes[1].legend(loc=(0, 1))
        axes[2].plot(x, log["lrs"][:epoch + 1], color="b", label="learning rate", linewidth=2)
        axes[2].set(xlabel="epoch", ylabel="learning rate")
        axes[2].legend(loc=(0, 1))
        ax = axes[3]
        ax.plot(x, log["refiner_losses"][:epoch + 1], color="k", label="refiner L_diff", linewidth=2)
        ax.plot(x, log["refiner_kl"][:epoch + 1], color="m", ls="--", label="KL (Eq. 11)")
        ax.plot(x, log["refiner_focal"][:epoch + 1], color="c", ls="--", label="focal (Eq. 12)")
        ax.set(xlabel="epoch", ylabel="refiner loss (NaN during warm-up)")
        ax.legend(loc=(0, 1))
        fig.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
