"""The trainer catalogue: product trainers apart from the experiments, every class keeping its configuration and
its name (a committed result stays reproducible by its trainer name), and the docs' trainer table matching the code.
"""
import contextlib
import csv
import inspect
import io
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "trainer_configurations.json"
TABLE = REPO / "docs" / "reference" / "trainers.md"
TRAINER_TOKEN = re.compile(r"nnUNetTrainer[A-Za-z0-9]*(?:_[A-Za-z0-9]+)*")


def _config_names():
    from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff
    from nnunetv2_hidiff.training.variants import nnUNetTrainerBaseline

    names = set()
    for cls in (nnUNetTrainerHiDiff, nnUNetTrainerBaseline):
        names |= {k for k, v in vars(cls).items()
                  if not k.startswith("_") and not callable(v) and not isinstance(v, (property, classmethod,
                                                                                       staticmethod))}
    return sorted(names)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def configuration_of(cls) -> dict:
    from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff

    kind = "hidiff" if issubclass(cls, nnUNetTrainerHiDiff) else "baseline"
    return {"kind": kind, **{k: _plain(getattr(cls, k)) for k in _config_names() if hasattr(cls, k)}}


def test_every_trainer_keeps_the_configuration_its_results_were_trained_with():
    """tests/data/trainer_configurations.json holds every class's configuration (all class attributes of
    nnUNetTrainerHiDiff and nnUNetTrainerBaseline) as it was when the experiment classes moved out of
    training/variants.py; a class whose configuration changes, or one that disappears, fails here. A deliberate change
    of a product default updates the file in the same commit and says so."""
    from nnunetv2_hidiff.trainer_lookup import all_trainers

    expected = json.loads(SNAPSHOT.read_text())
    current = {name: configuration_of(cls) for name, cls in all_trainers().items()}
    assert sorted(current) == sorted(expected)
    changed = {name: {k: (expected[name].get(k), current[name].get(k))
                      for k in set(expected[name]) | set(current[name]) if expected[name].get(k) != current[name].get(k)}
               for name in expected if current[name] != expected[name]}
    assert not changed


def test_experiment_trainers_live_apart_and_are_shallow():
    """Experiment classes sit in nnunetv2_hidiff.experiments, each with a docstring that names its evidence (or says
    that none is committed), and derive from one product trainer plus configuration parts without methods."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_hidiff import experiments
    from nnunetv2_hidiff.experiments import _parts
    from nnunetv2_hidiff.training import trainer, variants

    product = {n for m in (trainer, variants) for n, c in vars(m).items()
               if inspect.isclass(c) and issubclass(c, nnUNetTrainer) and c.__module__ == m.__name__}
    assert {"nnUNetTrainerHiDiff", "nnUNetTrainerHiDiff_paper", "nnUNetTrainerHiDiff_cpu",
            "nnUNetTrainerBaseline"} <= product
    assert len(experiments.__all__) == len(set(experiments.__all__)) >= 30
    assert not product & set(experiments.__all__)
    for name in experiments.__all__:
        cls = getattr(experiments, name)
        assert cls.__module__.startswith("nnunetv2_hidiff.experiments."), name
        doc = cls.__doc__ or ""
        assert cls.__doc__ is not None and ("Evidence:" in doc or "No committed result" in doc
                                           or "docs/" in doc), name
        trainer_bases = [b for b in cls.__bases__ if issubclass(b, nnUNetTrainer)]
        assert len(trainer_bases) == 1 and trainer_bases[0].__name__ in product, name
        for part in (b for b in cls.__bases__ if not issubclass(b, nnUNetTrainer)):
            assert part.__module__ == _parts.__name__ and not any(callable(v) for k, v in vars(part).items()
                                                                  if not k.startswith("__")), (name, part)
        assert not any(inspect.isfunction(v) for v in vars(cls).values()), f"{name} defines methods"


def _names_in_results() -> set:
    """Every trainer a committed result or the shipped demo names: in folder and file names (nnU-Net's
    <trainer>__<plans>__<configuration> folders and this project's hidiff_fold_<suffix>_fold<k> records), in the
    trainer column of every CSV, and in the "trainer" field of every JSON record."""
    names = set()
    for root in (REPO / "benchmark_results", REPO / "demo"):
        for path in root.rglob("*"):
            rel = path.relative_to(REPO)
            for part in rel.parts:
                names |= set(TRAINER_TOKEN.findall(part.split("__")[0]))
                m = re.match(r"hidiff_fold_(.+?)_fold\d", part)
                if m:
                    names.add(f"nnUNetTrainerHiDiff_{m.group(1)}")
            if path.suffix == ".csv":
                with path.open() as f:
                    reader = csv.DictReader(f)
                    if reader.fieldnames and "trainer" in reader.fieldnames:
                        names |= {row["trainer"] for row in reader if row["trainer"]}
            elif path.suffix == ".json" and path.stat().st_size < 2_000_000:
                try:
                    data = json.loads(path.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(data, dict) and isinstance(data.get("trainer"), str):
                    names.add(data["trainer"])
    # file-name tokens carry fold suffixes (nnUNetTrainerBaseline_5epochs_fold0.log and the like)
    return {re.sub(r"_fold_?\d.*$", "", n) for n in names if n.startswith("nnUNetTrainer")}


@pytest.mark.parametrize("folder", ["trainers", "packaged"])
def test_every_trainer_with_committed_results_resolves_through_nnunets_own_lookup(monkeypatch, folder):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_hidiff.cli.trainers_dir import FOLDER

    path = REPO / "trainers" if folder == "trainers" else FOLDER
    monkeypatch.setenv("nnUNet_extTrainer", str(path))
    names = _names_in_results()
    assert {"nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500", "nnUNetTrainerBaseline_5epochs",
            "nnUNetTrainerBaseline_cpuWarm700", "nnUNetTrainerHiDiff_cpuWarm100"} <= names
    assert len(names) >= 25
    missing = []
    for name in sorted(names):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cls = recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            missing.append(name)
            continue
        assert cls.__name__ == name
    assert not missing, f"committed results name trainers nnU-Net cannot find: {missing}"


def test_the_docs_trainer_table_lists_exactly_the_classes_in_the_code():
    """docs/reference/trainers.md has one row per class, product and experiments: none missing, none invented, and
    each row in the section of the module that defines it."""
    from nnunetv2_hidiff.trainer_lookup import all_trainers

    trainers = all_trainers()
    rows, section = {}, None
    for line in TABLE.read_text().splitlines():
        m = re.match(r"^#+ .*`(nnunetv2_hidiff\.[a-z_.]+)`", line)
        if m:
            section = m.group(1)
        m = re.match(r"^\| `(nnUNetTrainer\w+)` \|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = section
    assert sorted(rows) == sorted(trainers)
    wrong = {n: (s, trainers[n].__module__) for n, s in rows.items() if s != trainers[n].__module__}
    assert not wrong


def test_the_configuration_has_one_set_of_defaults_and_every_trainer_states_a_consistent_one():
    """Every HiDiffConfig field is a class attribute of nnUNetTrainerHiDiff with the dataclass's default (no second
    set of defaults), every HiDiff trainer's attributes form a valid configuration, and contradictory attributes are
    refused naming both."""
    import dataclasses

    from nnunetv2_hidiff.networks.config import HiDiffConfig, HiDiffConfigurationError
    from nnunetv2_hidiff.trainer_lookup import all_trainers
    from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff

    defaults = HiDiffConfig.defaults()
    assert {k: getattr(nnUNetTrainerHiDiff, k) for k in defaults} == defaults
    names = {k for k, v in vars(nnUNetTrainerHiDiff).items() if not k.startswith("_") and not callable(v)
             and not isinstance(v, (property, classmethod, staticmethod))}
    assert names == set(defaults)  # no trainer setting outside the configuration
    hidiff = [c for c in all_trainers().values() if issubclass(c, nnUNetTrainerHiDiff)]
    assert len(hidiff) > 40
    for cls in hidiff:
        config = HiDiffConfig.from_attributes(cls)
        assert HiDiffConfig.from_dict(config.to_dict()) == config
        assert json.loads(json.dumps(config.to_dict())) == config.to_dict()

    class Contradiction(nnUNetTrainerHiDiff):
        alternate_training = False

    with pytest.raises(HiDiffConfigurationError, match="Contradiction: alternate_training = False .* joint_step = "
                                                       "True.*set joint_step = False"):
        HiDiffConfig.from_attributes(Contradiction)

    class NoDiffusionLoss(nnUNetTrainerHiDiff):
        lambda_diff = 0.0

    with pytest.raises(HiDiffConfigurationError, match="lambda_diff = 0 with joint_step = True"):
        HiDiffConfig.from_attributes(NoDiffusionLoss)
    with pytest.raises(HiDiffConfigurationError, match="unknown HiDiff configuration fields"):
        HiDiffConfig.from_dict({"refiner_depth": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        HiDiffConfig().refiner_width = 16


def test_settings_reference_page_lists_every_setting():
    """docs/reference/settings.md holds the table settings_table() renders from the configuration's fields."""
    from nnunetv2_hidiff.networks.config import settings_table

    text = (REPO / "docs" / "reference" / "settings.md").read_text()
    start = "<!-- settings table: generated by nnunetv2_hidiff.networks.config.settings_table; a test keeps it equal -->"
    end = "<!-- end of settings table -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == settings_table().strip()
