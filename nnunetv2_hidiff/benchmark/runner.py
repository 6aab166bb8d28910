"""Which training runs are needed, running nnU-Net's CLIs as logged subprocesses, and timing.

Fold states (nnU-Net's results layout ``$nnUNet_results/<Dataset>/<T>__<P>__<C>/fold_k``):

* ``complete``: ``checkpoint_final.pth`` and ``validation/summary.json`` exist → nothing to run;
* ``needs_validation``: ``checkpoint_final.pth`` without the summary (validation interrupted) →
  ``nnUNetv2_train ... --val``;
* ``interrupted``: ``checkpoint_latest.pth`` or ``checkpoint_best.pth`` → ``nnUNetv2_train ... --c`` (nnU-Net
  resumes from latest, else best);
* ``missing``: none of these → ``nnUNetv2_train``.

Every subprocess gets this process's environment with the folder of our trainer re-export prepended to
``nnUNet_extTrainer`` (a user-set value is kept after it); its output goes to a log file, not the terminal.

What a finished fold says about itself (warm start, budget, outputs) is read from its ``hidiff_fold.json`` and
output folders (nnunetv2_hidiff.training.fold_record), never from log text.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .collect import OUTPUT_ORDER, REFINED, SEGMENTOR

COMPLETE, NEEDS_VALIDATION, INTERRUPTED, MISSING = "complete", "needs_validation", "interrupted", "missing"
ACTION = {NEEDS_VALIDATION: "validate", INTERRUPTED: "resume", MISSING: "train"}
EXTRA_ARGS = {"validate": ["--val"], "resume": ["--c"], "train": []}

def cli_path(name: str) -> str:
    """An nnU-Net console script next to this Python interpreter (falls back to the bare name on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def trainers_dir() -> Path:
    """The trainer folder shipped inside the package (what ``nnunetv2_hidiff_trainers`` prints): nnU-Net searches
    it for our trainers by name, in a clone and in an installed wheel alike."""
    from nnunetv2_hidiff.nnunet_trainers import FOLDER

    return Path(FOLDER)


def ext_trainer_path(ours: Path, environ: Optional[Dict[str, str]] = None) -> str:
    """``nnUNet_extTrainer`` with ``ours`` first and any user-set paths after it (no duplicates)."""
    environ = os.environ if environ is None else environ
    user = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    paths = [str(ours)] + [p for p in user if os.path.abspath(p) != os.path.abspath(str(ours))]
    return os.pathsep.join(paths)


def subprocess_env(ours: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["nnUNet_extTrainer"] = ext_trainer_path(ours, env)
    return env


def fold_folder(trainer_dir: Path, fold: int) -> Path:
    return trainer_dir / f"fold_{fold}"


def fold_state(folder: Path) -> str:
    if (folder / "checkpoint_final.pth").is_file():
        return COMPLETE if (folder / "validation" / "summary.json").is_file() else NEEDS_VALIDATION
    if (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_best.pth").is_file():
        return INTERRUPTED
    return MISSING


@dataclass
class Job:
    trainer: str
    fold: int
    folder: Path
    state: str

    @property
    def action(self) -> Optional[str]:
        return ACTION.get(self.state)


def refreshed(job: Job) -> Job:
    """``job`` with its fold state read again, just before it runs: another process (a second benchmark, a
    hand-started ``nnUNetv2_train``) may have finished or started the fold since the benchmark planned its runs.
    A fold that is now complete has ``action`` None and is not run again."""
    return Job(job.trainer, job.fold, job.folder, fold_state(job.folder))


@dataclass
class JobResult:
    job: Job
    returncode: int
    seconds: float
    log_file: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and fold_state(self.job.folder) == COMPLETE


def train_command(dataset: str, configuration: str, job: Job, plans: str, device: str) -> List[str]:
    return [cli_path("nnUNetv2_train"), dataset, configuration, str(job.fold), "-tr", job.trainer, "-p", plans,
            "-device", device, *EXTRA_ARGS[job.action]]


def run_logged(cmd: List[str], env: Dict[str, str], log_file: Path) -> tuple:
    """Run ``cmd`` with stdout+stderr streamed into ``log_file``; returns (returncode, seconds)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        except OSError as e:  # e.g. the console script is missing
            log.write(f"could not start: {e}\n")
            rc = 127
    return rc, time.perf_counter() - start


def log_name(trainer: str, label: str, action: str) -> str:
    return f"{trainer}__{label}__{action}__{time.strftime('%Y%m%d-%H%M%S')}.log"


def checkpoint_training_seconds(checkpoint: Path) -> Optional[float]:
    """Sum of (epoch end − epoch start) over the epochs logged in an nnU-Net checkpoint (training epochs only:
    no start-up, no final validation); None when unavailable."""
    import torch

    try:
        logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
        starts, ends = logging["epoch_start_timestamps"], logging["epoch_end_timestamps"]
    except Exception:  # missing/corrupt file or an unusual logger: timing is informative only
        return None
    n = min(len(starts), len(ends))
    return float(sum(float(ends[i]) - float(starts[i]) for i in range(n))) if n else None


def fold_record(folder: Path) -> Optional[dict]:
    """The fold's ``hidiff_fold.json`` (see nnunetv2_hidiff.training.fold_record), None without one (older runs,
    foreign trainers) or when it is unreadable."""
    from nnunetv2_hidiff.training.fold_record import read_fold_record

    return read_fold_record(folder)


def fold_records(trainer_dir: Path, folds: Sequence[int]) -> Dict[int, Optional[dict]]:
    """fold -> record (or None) for the given folds of one trainer's results folder."""
    return {f: fold_record(fold_folder(trainer_dir, f)) for f in folds}


def warm_start_source(folder: Path) -> Optional[str]:
    """The segmentor checkpoint a HiDiff fold started from (``nnUNet_HiDiff_pretrained_segmentor``): the fold
    record's ``warm_start``; None for a fold trained from scratch, by another trainer or without a record."""
    source = (fold_record(folder) or {}).get("warm_start")
    return str(source) if source else None


def validation_outputs(folder: Path, hidiff: bool) -> List[Tuple[str, Path]]:
    """(output, summary.json) pairs to collect from a complete fold: ``validation/`` (``segmentor``) for plain
    trainers; for HiDiff ``validation_refined/`` (``refined``) and ``validation_segmentor/`` (``segmentor``),
    those that exist, and ``validation/`` as ``refined`` for a fold of the older layout that has neither."""
    from nnunetv2_hidiff.training.fold_record import OUTPUT_FOLDERS, VALIDATION

    if not hidiff:
        return [(SEGMENTOR, folder / VALIDATION / "summary.json")]
    found = [(o, folder / OUTPUT_FOLDERS[o] / "summary.json") for o in OUTPUT_ORDER]
    found = [(o, f) for o, f in found if f.is_file()]
    return found or [(REFINED, folder / VALIDATION / "summary.json")]


# ---------------------------------------------------------------- wall time
MEASURED, FROM_CHECKPOINT = "measured", "checkpoint"


def checkpoint_id(folder: Path) -> Optional[List[int]]:
    """(mtime_ns, size) of the fold's checkpoint_final.pth, None if absent: tells whether it was rewritten."""
    from nnunetv2_hidiff.training.fold_record import file_identity

    return file_identity(folder / "checkpoint_final.pth")


def trained_checkpoint_id(folder: Path) -> Optional[List[int]]:
    """checkpoint_id as training left it: where nnunetv2_hidiff_decide has since written a pooled decision into
    checkpoint_final.pth (and nothing else rewrote it), the identity its record says the file had before."""
    current = checkpoint_id(folder)
    decision = (fold_record(folder) or {}).get("decision") or {}
    rewritten = decision.get("checkpoint_rewritten") if isinstance(decision, dict) else None
    if (isinstance(rewritten, dict) and decision.get("checkpoint") == "checkpoint_final.pth"
            and current is not None and rewritten.get("to") == current):
        return rewritten.get("from")
    return current


class TimingStore:
    """``OUTDIR/timings.json``: measured seconds of fresh ``nnUNetv2_train`` runs started by the benchmark, per
    trainer and fold. A record is valid while the fold's ``checkpoint_final.pth`` is the one that run wrote (same
    mtime and size, or rewritten since by nothing but a pooled decision), so a later ``--collect-only`` still
    reports the measured time."""

    def __init__(self, path: Path):
        import json

        self.path = path
        try:
            self.data = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            self.data = {}

    def record(self, trainer: str, fold: int, folder: Path, seconds: float) -> None:
        self.data.setdefault(trainer, {})[str(fold)] = {"seconds": seconds, "checkpoint": checkpoint_id(folder)}

    def measured(self, trainer: str, fold: int, folder: Path) -> Optional[float]:
        rec = self.data.get(trainer, {}).get(str(fold))
        if rec and rec.get("checkpoint") is not None and rec["checkpoint"] == trained_checkpoint_id(folder):
            return float(rec["seconds"])
        return None

    def save(self) -> None:
        import json

        from nnunetv2_hidiff.atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def fold_wall_time(store: TimingStore, trainer: str, fold: int, folder: Path) -> tuple:
    """(seconds or None, source): the measured subprocess time of a fresh training (start-up, all epochs and the
    validation), else the epoch durations stored in checkpoint_final.pth (training epochs only)."""
    seconds = store.measured(trainer, fold, folder)
    if seconds is not None:
        return seconds, MEASURED
    return checkpoint_training_seconds(folder / "checkpoint_final.pth"), FROM_CHECKPOINT


def pool_decision(trainer_dir: Path, folds: Sequence[int]) -> str:
    """Write one refinement decision, made on the pooled validation cases of ``folds``, into each of them (what
    ``nnunetv2_hidiff_decide`` does); returns a status line. Raises PooledDecisionError naming a fold's bad file."""
    from nnunetv2_hidiff.training.pooled_decision import apply_pooled_decision, decide_pooled, describe

    decision, records = decide_pooled([str(fold_folder(trainer_dir, f)) for f in folds])
    written = sum(apply_pooled_decision(fold, record, decision) for fold, record in records.items())
    return (f"pooled decision over folds {', '.join(map(str, folds))}: {describe(decision)}; "
            + (f"written into {written} fold(s)" if written else "every fold already carried it"))
