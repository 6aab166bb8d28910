"""Find trainer classes by name and read their training budget from data: class attributes and fold records.

A trainer's budget is (epochs, iterations per epoch); validation iterations and warm-up epochs are reported but
not compared (they do not change how many training iterations run). Sources, first match wins:

* the fold records (``fold_k/hidiff_fold.json``, written by our trainers; see
  ``nnunetv2_hidiff.training.fold_record``) of the trainer's existing folds: their ``budget`` says what the folds
  were trained with. Records that disagree with each other make the budget unknown (the note says why);
* the class attributes of our trainers (subclasses of nnUNetTrainerHiDiff or nnUNetTrainerBaseline):
  ``budget_epochs``, ``budget_iterations_per_epoch``, ``budget_val_iterations_per_epoch`` (None = nnU-Net's
  1000 / 250 / 50, which ``apply_budget`` keeps) and, for HiDiff, ``warmup_epochs`` (None =
  ``round(warmup_fraction · epochs)``; a warm start sets it to 0 at run time, which the records then show);
* nnU-Net's own ``nnUNetTrainer`` itself: nnU-Net's defaults.

Any other trainer (nnU-Net's variants such as nnUNetTrainer_5epochs, user trainers) without records has an
unknown budget: nothing is instantiated and no source code is read, so an equal-budget check refuses it
(``--allow-unequal-budgets`` overrides) until its folds exist and carry records.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field, replace
from typing import Dict, Mapping, Optional, Sequence

NNUNET_EPOCHS, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS = 1000, 250, 50
FROM_RECORDS, FROM_CLASS, UNKNOWN = "fold records", "class attributes", "unknown"


class BenchmarkError(Exception):
    """Bad benchmark input (unknown dataset/trainer, missing data, unequal budgets); the message says what."""


@dataclass(frozen=True)
class Budget:
    """Training budget; equality compares epochs and iterations per epoch only."""
    epochs: Optional[int]
    iterations_per_epoch: Optional[int]
    val_iterations_per_epoch: Optional[int] = field(default=None, compare=False)
    warmup_epochs: Optional[int] = field(default=None, compare=False)  # HiDiff only (segmentor-only epochs)
    source: str = field(default=UNKNOWN, compare=False)  # FROM_RECORDS, FROM_CLASS or UNKNOWN
    note: str = field(default="", compare=False)  # why it is unknown, when there is more to say

    @property
    def known(self) -> bool:
        return self.epochs is not None and self.iterations_per_epoch is not None

    def __str__(self) -> str:
        e = "?" if self.epochs is None else self.epochs
        i = "?" if self.iterations_per_epoch is None else self.iterations_per_epoch
        text = f"{e} epoch{'' if e == 1 else 's'} × {i} iteration{'' if i == 1 else 's'}"
        if self.warmup_epochs:
            text += f" ({self.warmup_epochs} warm-up epoch{'' if self.warmup_epochs == 1 else 's'})"
        return text + (f" ({self.note})" if self.note else "")


@contextlib.contextmanager
def _env(extra: Dict[str, str]):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def find_trainer_class(name: str, ext_trainer_path: Optional[str] = None) -> type:
    """The trainer class called ``name``: from nnunetv2_hidiff.training, else nnU-Net's own search (nnU-Net's
    trainer folder, then the ``nnUNet_extTrainer`` paths; ``ext_trainer_path`` replaces that variable for the
    search). Raises BenchmarkError for an unknown name."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_hidiff.trainer_lookup import all_trainers

    cls = all_trainers().get(name)
    if isinstance(cls, type) and issubclass(cls, nnUNetTrainer):
        return cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    extra = {"nnUNet_extTrainer": ext_trainer_path} if ext_trainer_path else {}
    try:
        with _env(extra), contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its search
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        where = ext_trainer_path or os.environ.get("nnUNet_extTrainer", "")
        raise BenchmarkError(f"unknown trainer {name!r}: not in nnunetv2_hidiff.training, nnU-Net's trainers or "
                             f"the nnUNet_extTrainer paths ({where or 'unset'})") from None


def _int_or_none(value) -> Optional[int]:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def record_budget(record: Optional[dict]) -> Optional[Budget]:
    """The ``budget`` of one fold record, None when the record has none."""
    b = (record or {}).get("budget")
    if not isinstance(b, dict):
        return None
    return Budget(_int_or_none(b.get("epochs")), _int_or_none(b.get("iterations_per_epoch")),
                  _int_or_none(b.get("val_iterations_per_epoch")), _int_or_none(b.get("warmup_epochs")),
                  FROM_RECORDS)


def records_budget(records: Mapping[int, Optional[dict]]) -> Optional[Budget]:
    """The budget the trainer's existing folds were trained with (fold -> record), None without any record budget;
    unknown (with a note) when the folds' records disagree."""
    found = {fold: b for fold, b in ((f, record_budget(records[f])) for f in sorted(records)) if b is not None}
    if not found:
        return None
    if len(set(found.values())) == 1:  # equal epochs × iterations; warm-up kept only where all folds agree
        first = next(iter(found.values()))
        warmups = {b.warmup_epochs for b in found.values()}
        return replace(first, warmup_epochs=first.warmup_epochs if len(warmups) == 1 else None)
    listing = ", ".join(f"fold {f}: {b}" for f, b in found.items())
    return Budget(None, None, source=FROM_RECORDS, note=f"the fold records disagree: {listing}")


def class_budget(cls: type) -> Budget:
    """The budget from our trainers' class attributes (nnU-Net's defaults for nnUNetTrainer itself); unknown for
    any other trainer class."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff
    from nnunetv2_hidiff.training.variants import nnUNetTrainerBaseline

    if cls is nnUNetTrainer:
        return Budget(NNUNET_EPOCHS, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS, None, FROM_CLASS)
    if not issubclass(cls, (nnUNetTrainerHiDiff, nnUNetTrainerBaseline)):
        return Budget(None, None)

    def attr(name: str, default: int) -> int:
        value = getattr(cls, name, None)
        return default if value is None else int(value)

    epochs = attr("budget_epochs", NNUNET_EPOCHS)
    warmup = None
    if issubclass(cls, nnUNetTrainerHiDiff):
        warmup = attr("warmup_epochs", int(round(cls.warmup_fraction * epochs)))
    return Budget(epochs, attr("budget_iterations_per_epoch", NNUNET_ITERATIONS),
                  attr("budget_val_iterations_per_epoch", NNUNET_VAL_ITERATIONS), warmup, FROM_CLASS)


def trainer_budget(cls: type, records: Optional[Mapping[int, Optional[dict]]] = None) -> Budget:
    """The trainer's budget: from its fold records (fold -> record or None) when they have one, else from the
    class attributes; parts are None when they cannot be determined."""
    from_records = records_budget(records or {})
    return from_records if from_records is not None else class_budget(cls)


def check_equal_budgets(budgets: Dict[str, Budget]) -> None:
    """Raise BenchmarkError unless every budget is known and all are equal."""
    unknown = [name for name, b in budgets.items() if not b.known]
    listing = "; ".join(f"{name}: {b}" for name, b in budgets.items())
    if unknown:
        raise BenchmarkError(f"cannot determine the training budget of {', '.join(unknown)} ({listing}): only our "
                             f"trainers' class attributes and fold records tell it; pass --allow-unequal-budgets "
                             f"to compare anyway")
    if len(set(budgets.values())) > 1:
        raise BenchmarkError(f"the trainers have different training budgets ({listing}); compare trainers at equal "
                             f"budgets (e.g. nnUNetTrainerBaseline_50epochs vs nnUNetTrainerHiDiff_50epochs) or pass "
                             f"--allow-unequal-budgets")


def resolve_trainers(names: Sequence[str], ext_trainer_path: Optional[str] = None,
                     records: Optional[Mapping[str, Mapping[int, Optional[dict]]]] = None) -> Dict[str, Budget]:
    """Budget per trainer name, from its fold records (trainer -> fold -> record) where it has any, else its class
    (raises BenchmarkError for unknown or duplicate names)."""
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise BenchmarkError(f"trainer listed more than once: {', '.join(dup)}")
    records = records or {}
    return {name: trainer_budget(find_trainer_class(name, ext_trainer_path), records.get(name)) for name in names}
