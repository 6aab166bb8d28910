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
