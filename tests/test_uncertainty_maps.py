"""Uncertainty maps at prediction (``nnunetv2_hidiff_predict --uncertainty``) through the real command-line tools.

Every source writes one map per case, with the input image's geometry and values in [0, 1], plus rows of
uncertainty.csv; the label maps next to them are plain nnUNetv2_predict's; ``samples`` maps are reproducible for a
seed; ``softmax`` is the normalised entropy of the probabilities nnU-Net exports; bad requests get one line.
The module trains into its own nnUNet_results folder (the tiny dataset's raw and preprocessed data are shared).
"""
import csv
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk

from tiny_dataset import BIN, nnunet_env, run_cli

HIDIFF, PLAIN = "nnUNetTrainerHiDiff_uncSmoke", "nnUNetTrainerBaseline_uncSmoke"
TRAINERS = '''from nnunetv2_hidiff.training.variants import nnUNetTrainerBaseline_smoke, nnUNetTrainerHiDiff_smoke


class nnUNetTrainerHiDiff_uncSmoke(nnUNetTrainerHiDiff_smoke):
    inference_mirroring = True
    decision_extra_steps, decision_combine, decision_gates = (), (), ()  # two validation runs only


class nnUNetTrainerBaseline_uncSmoke(nnUNetTrainerBaseline_smoke):
    inference_mirroring = True
'''
COMMON = ["-d", "990", "-c", "2d", "-device", "cpu", "-npp", "1", "-nps", "1"]


@pytest.fixture(scope="module")
def models(tiny_nnunet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uncertainty")
    (tmp / "ext").mkdir()
    (tmp / "ext" / "uncertainty_trainers.py").write_text(TRAINERS)
    env = dict(nnunet_env(tiny_nnunet, ext_trainers=[tmp / "ext"]), nnUNet_results=str(tmp / "results"))
    jobs = [(HIDIFF, "0"), (PLAIN, "0"), (PLAIN, "1")]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda j: run_cli("nnUNetv2_train", ["990", "2d", j[1], "-tr", j[0], "-device", "cpu"], env),
                      jobs))
    return {"env": env, "tmp": tmp, "images": tiny_nnunet / "raw" / "Dataset990_Tiny" / "imagesTs"}


def _hidiff_predict(m, out, ours, theirs, check=True):
    """nnunetv2_hidiff_predict OURS -- -i IMAGES -o OUT COMMON THEIRS"""
    argv = [str(BIN / "nnunetv2_hidiff_predict"), *map(str, ours), "--", "-i", str(m["images"]), "-o", str(out),
            *COMMON, *map(str, theirs)]
    proc = subprocess.run(argv, env=m["env"], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _cases(m):
    return sorted(p.name.replace("_0000.nii.gz", "") for p in m["images"].glob("*_0000.nii.gz"))


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _check_maps(m, out, sources):
    cases = _cases(m)
    rows = list(csv.DictReader(open(out / "uncertainty.csv")))
    assert sorted((r["case"], r["source"]) for r in rows) == sorted((c, s) for c in cases for s in sources)
    for case in cases:
        image = sitk.ReadImage(str(m["images"] / f"{case}_0000.nii.gz"))
        for source in sources:
            u = sitk.ReadImage(str(out / f"uncertainty_{source}" / f"{case}.nii.gz"))
            assert u.GetPixelIDValue() == sitk.sitkFloat32
            assert (u.GetSize(), u.GetSpacing(), u.GetOrigin(), u.GetDirection()) == \
                (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
            a = sitk.GetArrayFromImage(u)
            assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1 and a.max() > 0, (source, a.max())
            row = next(r for r in rows if r["case"] == case and r["source"] == source)
            assert float(row["mean_image"]) == pytest.approx(float(a.mean()), abs=1e-5)
            assert row["measure"] == "normalised entropy of the mean" and float(row["seconds"]) > 0


def test_plain_model_writes_softmax_mirroring_and_folds_maps_next_to_its_plain_prediction(models, tmp_path):
    out = tmp_path / "plain"
    _hidiff_predict(models, out, ["--uncertainty", "softmax", "mirroring", "folds"], ["-f", "0", "1", "-tr", PLAIN])
    _check_maps(models, out, ("softmax", "mirroring", "folds"))
    run_cli("nnUNetv2_predict", ["-i", models["images"], "-o", tmp_path / "reference", *COMMON, "-f", "0", "1",
                                 "-tr", PLAIN], models["env"])
    for case in _cases(models):
        np.testing.assert_array_equal(_array(out / f"{case}.nii.gz"), _array(tmp_path / "reference" / f"{case}.nii.gz"))
    # the folds' maps differ from one model's: two folds disagree somewhere
    assert any(not np.array_equal(_array(out / "uncertainty_folds" / f"{c}.nii.gz"),
                                  _array(out / "uncertainty_softmax" / f"{c}.nii.gz")) for c in _cases(models))


def test_softmax_map_is_the_normalised_entropy_of_the_exported_probabilities(models, tmp_path):
    from nnunetv2_hidiff.evaluation.uncertainty_metrics import normalized_entropy

    out = tmp_path / "softmax"
    _hidiff_predict(models, out, ["--uncertainty", "softmax"], ["-f", "0", "-tr", PLAIN, "--save_probabilities"])
    for case in _cases(models):
        probabilities = np.load(out / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(_array(out / "uncertainty_softmax" / f"{case}.nii.gz"),
                                   normalized_entropy(probabilities), atol=1e-5)


def test_hidiff_samples_maps_follow_the_seed_and_leave_the_prediction_alone(models, tmp_path):
    ours, theirs = ["--uncertainty", "samples", "softmax", "--uncertainty-samples", "3"], ["-f", "0", "-tr", HIDIFF]
    _hidiff_predict(models, tmp_path / "a", ["--seed", "3", *ours], theirs)
    _check_maps(models, tmp_path / "a", ("samples", "softmax"))
    _hidiff_predict(models, tmp_path / "b", ["--seed", "3", *ours], theirs)
    _hidiff_predict(models, tmp_path / "c", ["--seed", "4", *ours], theirs)
    run_cli("nnunetv2_hidiff_predict", ["--seed", "3", "--", "-i", models["images"], "-o", tmp_path / "plain",
                                        *COMMON, "-f", "0", "-tr", HIDIFF], models["env"])
    differs = False
    for case in _cases(models):
        a, b, c = (_array(tmp_path / x / "uncertainty_samples" / f"{case}.nii.gz") for x in "abc")
        np.testing.assert_array_equal(a, b)
        differs |= not np.array_equal(a, c)
        np.testing.assert_array_equal(_array(tmp_path / "a" / f"{case}.nii.gz"),
                                      _array(tmp_path / "plain" / f"{case}.nii.gz"))
    assert differs, "another seed drew the same samples"


@pytest.mark.parametrize("ours, theirs, message", [
    (["--uncertainty", "samples"], ["-f", "0", "-tr", PLAIN], "--uncertainty samples needs a HiDiff model"),
    (["--uncertainty", "folds"], ["-f", "0", "-tr", PLAIN], "--uncertainty folds needs at least two folds"),
    (["--uncertainty", "samples", "--uncertainty-samples", "1"], ["-f", "0", "-tr", HIDIFF],
     "--uncertainty-samples must be at least 2"),
    (["--uncertainty", "entropy"], ["-f", "0", "-tr", PLAIN], "unknown source(s) entropy"),
])
def test_bad_requests_get_one_line_and_predict_nothing(models, tmp_path, ours, theirs, message):
    out = tmp_path / "out"
    proc = _hidiff_predict(models, out, ours, theirs, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not list(out.glob("*.nii.gz"))
