"""Find trainer classes by name and read their training budget without instantiating them.

A trainer's budget is (epochs, iterations per epoch). nnU-Net sets ``self.num_epochs`` /
``self.num_iterations_per_epoch`` in ``__init__`` (1000 × 250 in nnUNetTrainer; its variants such as
nnUNetTrainer_5epochs assign another literal after ``super().__init__``); our trainers declare class attributes
``budget_epochs`` / ``budget_iterations_per_epoch`` that ``apply_budget`` copies in their ``__init__``.

:func:`trainer_budget` therefore walks the class's MRO from the most derived class and, for each class that
defines its own ``__init__``, takes the first of

* a literal assignment ``self.num_epochs = <int>`` in that ``__init__``'s source (it runs after ``super().__init__``
  and so overrides every base class), or
* a call of ``apply_budget`` in that ``__init__`` when the (most derived) ``budget_epochs`` is not None.

This reads nnU-Net's own variants, ours, and user trainers written the usual way, without building a network
or touching data. When nothing is found (no source available, computed values) the budget is "unknown", and an
equal-budget check refuses it (``--allow-unequal-budgets`` overrides). Validation iterations are not compared:
they do not train.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

BUDGET_ATTRS = {"num_epochs": "budget_epochs", "num_iterations_per_epoch": "budget_iterations_per_epoch"}


class BenchmarkError(Exception):
    """Bad benchmark input (unknown dataset/trainer, missing data, unequal budgets); the message says what."""


@dataclass(frozen=True)
class Budget:
    epochs: Optional[int]
    iterations_per_epoch: Optional[int]

    @property
    def known(self) -> bool:
        return self.epochs is not None and self.iterations_per_epoch is not None

    def __str__(self) -> str:
        e = "?" if self.epochs is None else self.epochs
        i = "?" if self.iterations_per_epoch is None else self.iterations_per_epoch
        return f"{e} epoch{'' if e == 1 else 's'} × {i} iteration{'' if i == 1 else 's'}"


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

    import nnunetv2_hidiff.training as ours
    from nnunetv2_hidiff.training import trainer as ours_trainer, variants as ours_variants

    for module in (ours, ours_variants, ours_trainer):
        cls = getattr(module, name, None)
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


def _init_source(cls: type) -> Optional[str]:
    init = cls.__dict__.get("__init__")
    if init is None:
        return None
    try:
        return inspect.getsource(init)
    except (OSError, TypeError):
        return ""  # defined but unreadable: stops nothing, proves nothing


def _resolve(cls: type, target: str) -> Optional[int]:
    budget_attr = BUDGET_ATTRS[target]
    literal = re.compile(rf"self\.{target}\s*=\s*(\d+)\s*(?:#.*)?$", re.M)
    for klass in cls.__mro__:
        src = _init_source(klass)
        if src is None:
            continue
        found = literal.findall(src)
        if found:
            return int(found[-1])
        if "apply_budget(" in src and getattr(cls, budget_attr, None) is not None:
            return int(getattr(cls, budget_attr))
    return None


def trainer_budget(cls: type) -> Budget:
    """(epochs, iterations per epoch) of a trainer class; None parts when they cannot be determined."""
    return Budget(_resolve(cls, "num_epochs"), _resolve(cls, "num_iterations_per_epoch"))


def check_equal_budgets(budgets: Dict[str, Budget]) -> None:
    """Raise BenchmarkError unless every budget is known and all are equal."""
    unknown = [name for name, b in budgets.items() if not b.known]
    listing = "; ".join(f"{name}: {b}" for name, b in budgets.items())
    if unknown:
        raise BenchmarkError(f"cannot determine the training budget of {', '.join(unknown)} ({listing}); "
                             f"pass --allow-unequal-budgets to compare anyway")
    if len(set(budgets.values())) > 1:
        raise BenchmarkError(f"the trainers have different training budgets ({listing}); compare trainers at equal "
                             f"budgets (e.g. nnUNetTrainerBaseline_50epochs vs nnUNetTrainerHiDiff_50epochs) or pass "
                             f"--allow-unequal-budgets")


def resolve_trainers(names: Sequence[str], ext_trainer_path: Optional[str] = None) -> Dict[str, Budget]:
    """Budget per trainer name (raises BenchmarkError for unknown or duplicate names)."""
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise BenchmarkError(f"trainer listed more than once: {', '.join(dup)}")
    return {name: trainer_budget(find_trainer_class(name, ext_trainer_path)) for name in names}
