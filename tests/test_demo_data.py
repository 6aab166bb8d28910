"""The data subset shipped for the demo is a valid nnU-Net raw dataset with its licence noted."""
import json
from pathlib import Path

from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

DEMO = Path(__file__).resolve().parents[1] / "demo" / "Dataset991_HippocampusMini"


def test_demo_dataset_is_valid_and_small():
    meta = json.loads((DEMO / "dataset.json").read_text())
    assert meta["licence"] == "CC-BY-SA 4.0" and "source" in meta
    assert (DEMO / "LICENSE.md").read_text().count("CC BY-SA 4.0") >= 1
    assert meta["numTraining"] == len(list((DEMO / "imagesTr").glob("*.nii.gz"))) == 24
    assert len(list((DEMO / "imagesTs").glob("*.nii.gz"))) == len(list((DEMO / "labelsTs").glob("*.nii.gz"))) == 6
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 5 * 2 ** 20
    verify_dataset_integrity(str(DEMO), num_processes=1)  # raises on any inconsistency


def test_shipped_model_is_small_loads_strictly_and_never_trained_on_the_held_out_cases(monkeypatch):
    """demo/model holds one exported fold: float16 weights that load strictly into the network its trainer builds
    (found by name as nnUNetv2_predict finds it, through nnUNet_extTrainer), its fold record holds a decision, and
    its validation cases include every held-out demo case."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folders = [p for p in (DEMO.parent / "model").iterdir() if p.is_dir()]
    assert len(folders) == 1
    model = folders[0]
    checkpoint_file = model / "fold_0" / "checkpoint_final.pth.xz"  # the demo unpacks it into its work folder
    assert checkpoint_file.stat().st_size < 5 * 2 ** 20
    import io
    import lzma

    with lzma.open(checkpoint_file) as f:
        checkpoint = torch.load(io.BytesIO(f.read()), weights_only=False)
    assert model.name.startswith(checkpoint["trainer_name"] + "__") and "optimizer_state" not in checkpoint
    pm = PlansManager(str(model / "plans.json"))
    monkeypatch.setenv("nnUNet_extTrainer", str(DEMO.parents[1] / "trainers"))
    trainer = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    net = trainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3, enable_deep_supervision=False)
    net.load_state_dict(checkpoint["network_weights"])  # strict
    record = json.loads((model / "fold_0" / "hidiff_fold.json").read_text())
    assert record["trainer"] == checkpoint["trainer_name"] and {"refine", "steps", "reason"} <= set(record["decision"])
    assert record["validation"]["refined"]["steps"] >= 1  # the demo's "refined, N steps" row reads it
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    validation_cases = {Path(c["reference_file"]).name for c in summary["metric_per_case"]}
    held_out = {p.name for p in (DEMO / "labelsTs").glob("*.nii.gz")}
    assert len(held_out) == 6 and held_out <= validation_cases
