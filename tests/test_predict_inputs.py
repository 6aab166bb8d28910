"""nnunetv2_hidiff_predict checks its inputs before nnU-Net starts: every bad file is named with its problem on one
line, nothing is predicted (exit status 2), and --skip-bad-inputs predicts the good cases (issue 44, item 6)."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from tiny_dataset import BIN, nnunet_env, run_cli

HIDIFF, PLAIN = "nnUNetTrainerHiDiff_smoke", "nnUNetTrainerBaseline_smoke"


def _fake_model(root, folder, channel_names):
    """A model folder holding just dataset.json (with these channels) and plans.json, as nnU-Net's trainer
    copies them from the preprocessed dataset."""
    from nnunetv2_hidiff.cli.input_check import load_model_files

    pre = root / "pre" / "Dataset990_Tiny"
    folder.mkdir()
    dataset_json = json.loads((pre / "dataset.json").read_text())
    dataset_json["channel_names"] = channel_names
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    return load_model_files(str(folder))


def _image(path, shape=(4, 40, 32), spacing=(1.5, 1.0, 2.0)):
    im = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    im.SetSpacing(spacing)
    sitk.WriteImage(im, str(path))


def _problems(check):
    for _, reason in check.problems + check.warnings:
        assert "\n" not in reason and reason
    return {path.rsplit("/", 1)[-1]: reason for path, reason in check.problems}


def test_check_names_each_bad_file_of_a_one_channel_model(tiny_nnunet, tmp_path):
    from nnunetv2_hidiff.cli.input_check import check_inputs

    model = _fake_model(tiny_nnunet, tmp_path / "model", {"0": "MRI"})
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    good = tiny_nnunet / "raw" / "Dataset990_Tiny" / "imagesTs" / "tiny_006_0000.nii.gz"
    shutil.copy(good, imgs)
    (imgs / "case_999_0000.nii.gz").write_text("not a nifti")
    shutil.copy(good, imgs / "two_0000.nii.gz")
    shutil.copy(good, imgs / "two_0001.nii.gz")  # a second channel for a one-channel model
    shutil.copy(good, imgs / "other_0000.nii")  # another file ending: nnU-Net ignores it
    shutil.copy(good, imgs / "noindex.nii.gz")  # no _XXXX channel index
    check = check_inputs(str(imgs), *model)
    assert check.good_case_ids == ["tiny_006"] and check.good_cases["tiny_006"] == [str(imgs / good.name)]
    assert sorted(check.bad_cases) == ["case_999", "two"]
    problems = _problems(check)
    assert set(problems) == {"case_999_0000.nii.gz", "two_0001.nii.gz", "noindex.nii.gz"}
    assert problems["case_999_0000.nii.gz"].startswith("cannot be read by SimpleITKIO: Unable to determine ImageIO")
    assert problems["two_0001.nii.gz"] == "channel 0001, but the model takes 1 channel(s) per case (_0000)"
    assert "4-digit channel index" in problems["noindex.nii.gz"]
    assert check.warnings == [(str(imgs / "other_0000.nii"),
                               "ignored: it does not end with .nii.gz, the model's file ending")]

    only_ignored = tmp_path / "only_ignored"
    only_ignored.mkdir()
    shutil.copy(good, only_ignored / "tiny_006_0000.nii")
    check = check_inputs(str(only_ignored), *model)
    assert not check.good_cases and len(check.warnings) == 1
    assert check.problems == [(str(only_ignored), "no input image: no file ends with .nii.gz, the file ending of "
                                                  "the model's dataset.json")]
    assert check_inputs(str(tmp_path / "absent"), *model).problems == [
        (str(tmp_path / "absent"), "the input folder does not exist")]


def test_check_compares_the_channels_of_a_case(tiny_nnunet, tmp_path):
    from nnunetv2_hidiff.cli.input_check import check_inputs

    model = _fake_model(tiny_nnunet, tmp_path / "model", {"0": "T1", "1": "T2"})
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("ok_0000", "ok_0001", "shape_0000", "spacing_0000", "missing_0000"):
        _image(imgs / f"{name}.nii.gz")
    _image(imgs / "shape_0001.nii.gz", shape=(4, 30, 32))
    _image(imgs / "spacing_0001.nii.gz", spacing=(1.5, 1.0, 3.0))
    check = check_inputs(str(imgs), *model)
    assert check.good_case_ids == ["ok"] and sorted(check.bad_cases) == ["missing", "shape", "spacing"]
    problems = _problems(check)
    assert set(problems) == {"shape_0001.nii.gz", "spacing_0001.nii.gz", "missing_0001.nii.gz"}
    assert problems["shape_0001.nii.gz"] == ("shape (4, 30, 32) differs from (4, 40, 32) of shape_0000.nii.gz, "
                                             "another channel of case shape")
    assert problems["spacing_0001.nii.gz"].startswith("spacing (3, 1, 1.5) differs from (2, 1, 1.5) of spacing_0000")
    assert problems["missing_0001.nii.gz"] == "missing: the model takes 2 channel file(s) per case (_0000, _0001)"


def test_wrapper_reads_nnunet_arguments_as_nnunet_does():
    from nnunetv2_hidiff.cli.predict import nnunet_arguments, parse

    known = nnunet_arguments(["-device", "cpu", "-chk", "checkpoint_best.pth", "-prev_stage_predictions", "x",
                              "-i", "in", "-o", "out", "-d", "990", "-c", "2d", "-f", "0", "1", "--disable_tta"])
    assert (known.i, known.o, known.d, known.c, known.p, known.tr) == ("in", "out", "990", "2d", "nnUNetPlans",
                                                                       "nnUNetTrainer")
    assert nnunet_arguments(["-i", "in", "-o", "out", "-d", "990"]) is None  # nnU-Net's parser complains
    assert nnunet_arguments(["-h"]) is None
    args, rest = parse(["--steps", "2", "--", "-i", "in", "--skip-bad-inputs", "-o", "out"])
    assert args.skip_bad_inputs and rest == ["-i", "in", "-o", "out"]
    assert not parse(["-i", "in"])[0].skip_bad_inputs


@pytest.fixture(scope="module")
def trained_model(tiny_nnunet, tmp_path_factory):
    """(env, trainer) of a trained fold 0: test_trainer_cli's HiDiff smoke fold if it trained it already, else a
    plain smoke fold trained here into a results folder of its own (the input check does not depend on the
    trainer, and the HiDiff smoke fold's ten validations take minutes on two cores)."""
    env = nnunet_env(tiny_nnunet)
    fold = tiny_nnunet / "results" / "Dataset990_Tiny" / f"{HIDIFF}__nnUNetPlans__2d" / "fold_0"
    if (fold / "checkpoint_final.pth").is_file():
        return env, HIDIFF
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("predict_inputs_results"))
    run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", PLAIN, "-device", "cpu"], env)
    return env, PLAIN


def test_bad_input_file_stops_prediction_or_is_skipped(trained_model, tiny_nnunet, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    good = tiny_nnunet / "raw" / "Dataset990_Tiny" / "imagesTs" / "tiny_006_0000.nii.gz"
    shutil.copy(good, imgs)
    bad = imgs / "case_999_0000.nii.gz"
    bad.write_text("not a nifti")
    (tmp_path / "tmp").mkdir()
    env, trainer = trained_model
    env = dict(env, TMPDIR=str(tmp_path / "tmp"))
    args = ["-i", imgs, "-d", "990", "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta",
            "-npp", "1", "-nps", "1"]

    def predict(*options, out):
        return subprocess.run([str(BIN / "nnunetv2_hidiff_predict"), *options, "--", "-o", str(out), *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=300)

    stopped = predict(out=tmp_path / "stopped")
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 2, stopped.stderr
    assert "Traceback" not in stopped.stderr + stopped.stdout
    assert [line for line in lines if line.startswith(f"{bad}: ")] == [
        f'{bad}: cannot be read by SimpleITKIO: Unable to determine ImageIO reader for "{bad}"']
    assert lines[-1] == (f"nnunetv2_hidiff_predict: 1 bad input file(s) in {imgs}, nothing predicted. Fix or remove "
                         f"them, or add --skip-bad-inputs to predict the other 1 case(s).")
    assert not (tmp_path / "stopped").exists()

    no_model = subprocess.run([str(BIN / "nnunetv2_hidiff_predict"), "-o", str(tmp_path / "none"),
                               *map(str, args), "-tr", "nnUNetTrainerNoSuch"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr
    assert no_model.stderr.strip().splitlines()[-1].startswith("nnunetv2_hidiff_predict: no trained model in ")
    assert "nnUNetTrainerNoSuch__nnUNetPlans__2d (no dataset.json or plans.json there)" in no_model.stderr
    assert not (tmp_path / "none").exists()

    skipped = predict("--skip-bad-inputs", out=tmp_path / "skipped")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert f"{bad}: cannot be read" in skipped.stderr
    assert ("--skip-bad-inputs: leaving out 1 case(s) with a bad file (case_999), predicting the other 1."
            in skipped.stderr)
    predicted = sorted(p.name for p in (tmp_path / "skipped").glob("*.nii.gz"))
    assert predicted == ["tiny_006.nii.gz"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "skipped" / "tiny_006.nii.gz")))
    assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(good))).shape
    assert list((tmp_path / "tmp").iterdir()) == []  # the folder of links to the good cases is gone
