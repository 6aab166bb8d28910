"""Plan presets: derived plans files, recomputed topology, nnU-Net compatibility, error messages."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_hidiff.planning.cli import main
from nnunetv2_hidiff.planning.presets import (PlanningError, bottleneck_size, create_plans, derive_plans,
                                              load_preset, recompute_topology)

DATA = Path(__file__).parent / "data" / "plans"
PRESETS = Path(__file__).parent.parent / "plans" / "presets"
DATASETS = {901: "Dataset901_Hippocampus", 902: "Dataset902_DRIVE"}


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    """A tmp nnUNet_preprocessed with the real 901/902 plans and dataset.json (nnunetv2.paths reads env lazily)."""
    pre = tmp_path / "preprocessed"
    for name in DATASETS.values():
        (pre / name).mkdir(parents=True)
        shutil.copy(DATA / f"{name}_nnUNetPlans.json", pre / name / "nnUNetPlans.json")
        shutil.copy(DATA / f"{name}_dataset.json", pre / name / "dataset.json")
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    return pre


def _arch(plans: dict, conf: str = "2d") -> dict:
    return plans["configurations"][conf]["architecture"]["arch_kwargs"]


def test_drive_256_preset_recomputes_topology(preprocessed):
    src = preprocessed / DATASETS[902] / "nnUNetPlans.json"
    before = _md5(src)
    res = create_plans("902", "2d", batch_size=4, patch_size=[256, 256], plans_name="nnUNetPlans_hidiffCPU")
    assert _md5(src) == before  # source untouched
    assert Path(res.path) == preprocessed / DATASETS[902] / "nnUNetPlans_hidiffCPU.json"
    new = json.loads(Path(res.path).read_text())
    conf = new["configurations"]["2d"]
    a = _arch(new)
    assert new["plans_name"] == "nnUNetPlans_hidiffCPU"
    assert conf["batch_size"] == 4 and conf["patch_size"] == [256, 256]
    assert conf["data_identifier"] == "nnUNetPlans_2d"  # preprocessed data shared with nnUNetPlans
    # nnU-Net's planner on a 256x256 isotropic patch: pool while the edge is >= 8 -> 6 poolings, 4x4 bottleneck
    assert a["n_stages"] == 7
    assert a["strides"] == [[1, 1]] + [[2, 2]] * 6
    assert a["kernel_sizes"] == [[3, 3]] * 7
    assert a["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512]
    assert a["n_conv_per_stage"] == [2] * 7 and a["n_conv_per_stage_decoder"] == [2] * 6
    assert bottleneck_size(conf["patch_size"], a["strides"]) == [4, 4]
    assert all(p % int(np.prod([s[i] for s in a["strides"]])) == 0 for i, p in enumerate(conf["patch_size"]))
    # everything else equals the source
    old = json.loads(src.read_text())
    for k in set(old["configurations"]["2d"]) - {"batch_size", "patch_size", "architecture"}:
        assert conf[k] == old["configurations"]["2d"][k]
    assert {k: v for k, v in a.items() if k not in ("n_stages", "strides", "kernel_sizes", "features_per_stage",
                                                    "n_conv_per_stage", "n_conv_per_stage_decoder")} == \
        {k: v for k, v in _arch(old).items() if k not in ("n_stages", "strides", "kernel_sizes",
                                                          "features_per_stage", "n_conv_per_stage",
                                                          "n_conv_per_stage_decoder")}


def test_topology_equals_nnunet_planner_on_source_patch():
    """Recomputing for the source's own patch size reproduces nnU-Net's planned topology (sanity of the reuse)."""
    for name in DATASETS.values():
        src = json.loads((DATA / f"{name}_nnUNetPlans.json").read_text())
        for conf_name, conf in src["configurations"].items():
            arch, padded = recompute_topology(conf["architecture"]["arch_kwargs"], conf["spacing"],
                                              conf["patch_size"])
            assert padded == conf["patch_size"]
            src_arch = conf["architecture"]["arch_kwargs"]
            for k in ("n_stages", "strides", "kernel_sizes", "features_per_stage", "n_conv_per_stage",
                      "n_conv_per_stage_decoder"):
                assert json.loads(json.dumps(arch[k])) == src_arch[k], (name, conf_name, k)


def test_batch_only_keeps_topology_and_patch(preprocessed):
    res = create_plans("Dataset901_Hippocampus", "2d", batch_size=32)
    new = res.derived.plans
    old = json.loads((DATA / "Dataset901_Hippocampus_nnUNetPlans.json").read_text())
    assert res.derived.plans_name == "nnUNetPlans_hidiff_b32"  # default name
    assert new["configurations"]["2d"]["batch_size"] == 32
    assert new["configurations"]["2d"]["patch_size"] == old["configurations"]["2d"]["patch_size"]
    assert new["configurations"]["2d"]["architecture"] == old["configurations"]["2d"]["architecture"]
    assert new["configurations"]["3d_fullres"] == old["configurations"]["3d_fullres"]


def test_odd_patch_is_padded_like_nnunet_and_3d_works():
    src = json.loads((DATA / "Dataset902_DRIVE_nnUNetPlans.json").read_text())
    d = derive_plans(src, "p", "2d", patch_size=[250, 200])
    conf = d.plans["configurations"]["2d"]
    assert conf["patch_size"] == [256, 224]
    assert any("padded" in c for c in d.changes)
    src3 = json.loads((DATA / "Dataset901_Hippocampus_nnUNetPlans.json").read_text())
    d3 = derive_plans(src3, "p3", "3d_fullres", batch_size=2, patch_size=[24, 32, 24])
    a = _arch(d3.plans, "3d_fullres")
    assert d3.plans["configurations"]["3d_fullres"]["patch_size"] == [24, 32, 24]
    assert a["n_stages"] == 3 and a["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert a["features_per_stage"] == [32, 64, 128]


def test_derived_plans_load_build_and_run_in_nnunet(preprocessed):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    res = create_plans("902", "2d", batch_size=4, patch_size=[256, 256], plans_name="nnUNetPlans_hidiffCPU")
    pm = PlansManager(res.path)
    cm = pm.get_configuration("2d")
    assert pm.plans_name == "nnUNetPlans_hidiffCPU" and cm.batch_size == 4 and cm.patch_size == [256, 256]
    net = nnUNetTrainer.build_network_architecture(pm, cm, 3, 2, enable_deep_supervision=False)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 2, 256, 256)

    # the plans identifier works with plain nnU-Net (no nnUNetv2_preprocess needed for the plans itself)
    trainer = get_trainer_from_args("902", "2d", 0, "nnUNetTrainer", plans_identifier="nnUNetPlans_hidiffCPU",
                                    device=torch.device("cpu"))
    assert trainer.configuration_manager.patch_size == [256, 256]
    assert trainer.configuration_manager.batch_size == 4
    assert trainer.preprocessed_dataset_folder == str(preprocessed / DATASETS[902] / "nnUNetPlans_2d")
    assert "nnUNetTrainer__nnUNetPlans_hidiffCPU__2d" in trainer.output_folder


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.json")))
def test_shipped_presets_are_valid(preset, preprocessed, capsys):
    p = load_preset(str(PRESETS / preset))
    dataset_id = int(p["dataset"][7:10])
    assert main(["-d", str(dataset_id), "--preset", str(PRESETS / preset)]) == 0
    out = capsys.readouterr().out
    new = json.loads((preprocessed / p["dataset"] / f"{p['plans_name']}.json").read_text())
    conf = new["configurations"][p["configuration"]]
    assert conf["batch_size"] == p["batch_size"]
    if "patch_size" in p:
        assert conf["patch_size"] == p["patch_size"]
    assert f"-p {p['plans_name']}" in out
    # running a preset twice is idempotent
    assert main(["--preset", str(PRESETS / preset)]) == 0
    assert "unchanged" in capsys.readouterr().out


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_cli_errors(preprocessed, tmp_path, capsys, monkeypatch):
    err = _err(capsys, ["-d", "902", "-c", "3d_fullres", "--batch-size", "2"])
    assert "configuration '3d_fullres' is not in the plans; available: 2d" in err
    assert "nnUNetv2_plan_and_preprocess" in _err(capsys, ["-d", "902", "--source-plans", "nope", "--batch-size", "2"])
    assert "expected one folder, found none" in _err(capsys, ["-d", "903", "--batch-size", "2"])
    assert "larger than both the source patch" in _err(capsys, ["-d", "901", "--patch-size", "128", "40"])
    assert "too small for a U-Net" in _err(capsys, ["-d", "902", "--patch-size", "6", "6"])
    assert "has 3 axes" in _err(capsys, ["-d", "902", "--patch-size", "64", "64", "64"])
    assert "equals the source plans" in _err(capsys, ["-d", "902", "--batch-size", "2", "--plans-name",
                                                      "nnUNetPlans"])
    assert "no '__'" in _err(capsys, ["-d", "902", "--batch-size", "2", "--plans-name", "a__b"])
    assert "nothing to change" in _err(capsys, ["-d", "902"])
    assert "does not match the preset" in _err(capsys, ["-d", "901", "--preset",
                                                        str(PRESETS / "Dataset902_DRIVE_cpu.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"batchsize": 3}')
    assert "unknown preset key(s) ['batchsize']" in _err(capsys, ["-d", "902", "--preset", str(bad)])

    # an existing different file is not replaced without --overwrite
    assert main(["-d", "902", "--batch-size", "2", "--plans-name", "mine"]) == 0
    target = preprocessed / DATASETS[902] / "mine.json"
    before = _md5(target)
    assert "already exists with different content" in _err(capsys, ["-d", "902", "--batch-size", "3",
                                                                     "--plans-name", "mine"])
    assert _md5(target) == before
    assert main(["-d", "902", "--batch-size", "3", "--plans-name", "mine", "--overwrite"]) == 0
    assert json.loads(target.read_text())["configurations"]["2d"]["batch_size"] == 3
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".plans_")]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    monkeypatch.delenv("nnUNet_preprocessed")
    assert "nnUNet_preprocessed is not set" in _err(capsys, ["-d", "902", "--batch-size", "2"])
    with pytest.raises(PlanningError):
        create_plans("902", batch_size=2)
