"""One refinement decision for all folds on their pooled validation cases (``nnunetv2_hidiff_decide``), on fold
folders written by hand (records, per-case summaries, checkpoints): no training."""
import json
import math

import pytest
import torch

from nnunetv2_hidiff.cli.decide import main as decide_main
from nnunetv2_hidiff.training.fold_record import read_fold_record
from nnunetv2_hidiff.training.pooled_decision import pooled_score

NAN = float("nan")
OUTPUTS = {  # record name: folder, refine, steps, combine, gate
    "segmentor": ("validation_segmentor", False, 0, "none", None),
    "refined": ("validation_refined", True, 1, "none", None),
    "union": ("validation_union", True, 1, "union", None),
    "gated_a800_r800_2steps": ("validation_gated_a800_r800_2steps", True, 2, "gated", [0.8, 0.8]),
}


def _case(name, dice1, dice2, hd1, hd2):
    return {"reference_file": f"/ref/{name}.nii.gz", "prediction_file": f"/pred/{name}.nii.gz",
            "metrics": {"1": {"Dice": dice1, "HD95": hd1}, "2": {"Dice": dice2, "HD95": hd2}}}


def _fold(root, k, cases_by_output, own):
    """fold_k with one folder per output (summary.json + a marker), validation/ = the fold's own choice, a record
    with that decision and a checkpoint whose decision buffers say "segmentor alone"."""
    fold = root / f"fold_{k}"
    validation = {}
    for name, (folder, refine, steps, combine, gate) in OUTPUTS.items():
        (fold / folder).mkdir(parents=True)
        (fold / folder / "summary.json").write_text(json.dumps({"metric_per_case": cases_by_output[name]}))
        (fold / folder / "which.txt").write_text(name)
        validation[name] = {"folder": folder, "refine": refine, "steps": steps, "combine": combine,
                            **({"gate": gate} if gate else {}), "dice": 0.0, "hd95": 0.0}
    (fold / "validation").mkdir()
    (fold / "validation" / "which.txt").write_text(own)
    entry = validation[own]
    decision = {"refine": entry["refine"], "steps": entry["steps"], "combine": entry["combine"], "reason": "own",
                "checkpoint": "checkpoint_final.pth", "candidates": []}
    (fold / "hidiff_fold.json").write_text(json.dumps({"kind": "hidiff", "validation": validation,
                                                       "decision": decision}))
    state = {"format": 1, "trainer": "nnUNetTrainerHiDiff", "decision": {"refine": False},
             "config": {"inference_transition": "renoise", "inference_samples": 1, "inference_seed": 0}}
    torch.save({"network_weights": {"w": torch.ones(2), "_extra_state": state}}, fold / "checkpoint_final.pth")
    return fold


def _outputs(seg, refined, union, gated):
    return {"segmentor": seg, "refined": refined, "union": union, "gated_a800_r800_2steps": gated}


@pytest.fixture
def model(tmp_path):
    """Fold 0 decided the union on its own, fold 1 the segmentor; pooled, the union raises Dice (0.005 on fold 0,
    -0.001 on fold 1) at an equal HD95, and the refined output alone loses."""
    low = [_case("a", 0.70, 0.60, 2.0, 3.0), _case("b", 0.80, 0.90, 1.0, NAN)]
    _fold(tmp_path, 0, _outputs(low, [_case("a", 0.6, 0.6, 2.0, 3.0), _case("b", 0.6, 0.6, 1.0, NAN)],
                                [_case("a", 0.71, 0.61, 2.0, 3.0), _case("b", 0.80, 0.90, 1.0, NAN)],
                                [_case("a", 0.70, 0.60, 2.0, 3.0), _case("b", 0.80, 0.90, 1.0, NAN)]), "union")
    high = [_case("c", 0.90, 0.80, 1.0, 1.0)]
    _fold(tmp_path, 1, _outputs(high, [_case("c", 0.5, 0.5, 1.0, 1.0)], [_case("c", 0.899, 0.799, 1.0, 1.0)],
                                [_case("c", 0.90, 0.80, 1.0, 1.0)]), "segmentor")
    return tmp_path


def _stored(fold):
    """(the decision stored in the fold's checkpoint, its weight w)."""
    weights = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    return weights["_extra_state"]["decision"], weights["w"].tolist()


def test_pooled_score_is_nnunet_foreground_mean_over_all_cases():
    cases = [_case("a", 0.7, 0.6, 2.0, 3.0), _case("b", 0.8, 0.9, 1.0, NAN), _case("c", 0.9, 0.8, 1.0, 1.0)]
    score = pooled_score(cases)
    assert score["dice"] == pytest.approx(((0.7 + 0.8 + 0.9) / 3 + (0.6 + 0.9 + 0.8) / 3) / 2)
    assert score["hd95"] == pytest.approx(((2.0 + 1.0 + 1.0) / 3 + (3.0 + 1.0) / 2) / 2)  # NaN left out per class
    assert math.isnan(pooled_score([_case("a", 0.0, 0.0, NAN, NAN)])["hd95"])


def test_pooled_decision_is_written_into_every_fold(model, capsys):
    decide_main(["-i", str(model), "-f", "0", "1"])
    assert "Pooled decision: refine" in capsys.readouterr().out
    for k, own in ((0, "union"), (1, "segmentor")):
        fold = model / f"fold_{k}"
        assert (fold / "validation" / "which.txt").read_text() == "union"
        assert (fold / "validation" / "summary.json").read_text() == (fold / "validation_union" / "summary.json").read_text()
        decision, w = _stored(fold)
        assert decision == {"refine": True, "steps": 1, "combine": "union", "gate": None, "transition": "renoise",
                            "samples": 1, "seed": 0} and w == [1.0, 1.0]  # every setting explicit
        record = read_fold_record(fold)["decision"]
        assert (record["refine"], record["steps"], record["combine"]) == (True, 1, "union")
        assert record["pooled"] == {"folds": ["fold_0", "fold_1"], "cases": 3}
        assert record["fold_decision"]["combine"] == ("union" if own == "union" else "none")
        assert record["fold_decision"]["refine"] == (own == "union")
        assert record["checkpoint"] == "checkpoint_final.pth"
        union = next(c for c in record["candidates"] if c["combine"] == "union")
        assert union["dice"] == pytest.approx(((0.71 + 0.80 + 0.899) / 3 + (0.61 + 0.90 + 0.799) / 3) / 2)
    # run again with a gain the union does not reach: the segmentor everywhere, and the folds' own decisions kept
    decide_main(["-i", str(model), "-f", "0", "1", "--min-dice-gain", "0.01"])
    for k, own_refines in ((0, True), (1, False)):
        fold = model / f"fold_{k}"
        assert (fold / "validation" / "which.txt").read_text() == "segmentor"
        assert _stored(fold)[0]["refine"] is False
        record = read_fold_record(fold)["decision"]
        assert not record["refine"] and record["fold_decision"]["refine"] == own_refines


def test_gated_decision_stores_its_gate_and_steps(model):
    # make the gated 2-step output the best on both folds
    for k in (0, 1):
        fold = model / f"fold_{k}"
        cases = json.loads((fold / "validation_segmentor" / "summary.json").read_text())["metric_per_case"]
        for c in cases:
            c["metrics"]["1"]["Dice"] += 0.05
        (fold / "validation_gated_a800_r800_2steps" / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    decide_main(["-i", str(model), "-f", "0", "1"])
    for k in (0, 1):
        fold = model / f"fold_{k}"
        assert (fold / "validation" / "which.txt").read_text() == "gated_a800_r800_2steps"
        decision = _stored(fold)[0]
        assert (decision["steps"], decision["combine"], decision["gate"]) == (2, "gated", [0.8, 0.8])
        assert read_fold_record(fold)["decision"]["gate"] == [0.8, 0.8]


def test_bad_folds_are_refused_before_anything_is_written(model, capsys):
    before = {k: ((model / f"fold_{k}" / "hidiff_fold.json").read_text(), _stored(model / f"fold_{k}"))
              for k in (0, 1)}
    bad = model / "fold_1" / "validation_union" / "summary.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        decide_main(["-i", str(model), "-f", "0", "1"])
    assert str(bad) in str(e.value) and "summary.json" in str(e.value)
    record = model / "fold_1" / "hidiff_fold.json"
    record.write_text(json.dumps({"kind": "hidiff"}))
    with pytest.raises(SystemExit) as e:
        decide_main(["-i", str(model), "-f", "0", "1"])
    assert str(record) in str(e.value) and "no validated HiDiff decision" in str(e.value)
    with pytest.raises(SystemExit) as e:
        decide_main(["-i", str(model), "-f", "0", "7"])
    assert "fold_7" in str(e.value)
    assert (model / "fold_0" / "hidiff_fold.json").read_text() == before[0][0]
    assert _stored(model / "fold_0") == before[0][1]
    assert (model / "fold_0" / "validation" / "which.txt").read_text() == "union"


def test_dry_run_writes_nothing(model, capsys):
    record = (model / "fold_1" / "hidiff_fold.json").read_text()
    decide_main(["-i", str(model), "-f", "0", "1", "--dry-run"])
    assert "Pooled decision: refine" in capsys.readouterr().out
    assert (model / "fold_1" / "hidiff_fold.json").read_text() == record
    assert (model / "fold_1" / "validation" / "which.txt").read_text() == "segmentor"
    assert _stored(model / "fold_1")[0] == {"refine": False}


def test_a_decision_already_carried_is_not_written_again_and_the_trained_checkpoint_is_remembered(model, capsys):
    import os

    from nnunetv2_hidiff.benchmark.runner import TimingStore, trained_checkpoint_id
    from nnunetv2_hidiff.training.fold_record import file_identity

    fold = model / "fold_0"
    checkpoint = fold / "checkpoint_final.pth"
    os.utime(checkpoint, ns=(1_000_000_000, 1_000_000_000))  # "as training left it"
    trained = file_identity(checkpoint)
    store = TimingStore(model / "timings.json")
    store.record("T", 0, fold, 123.0)  # the benchmark measured this fold's training
    decide_main(["-i", str(model), "-f", "0", "1"])
    assert "Written into 2 folds." in capsys.readouterr().out
    first = file_identity(checkpoint)
    assert first != trained
    assert read_fold_record(fold)["decision"]["checkpoint_rewritten"] == {"from": trained, "to": first}
    assert trained_checkpoint_id(fold) == trained and store.measured("T", 0, fold) == 123.0
    # the same decision again: nothing is written, the checkpoint keeps its identity
    record_text = (fold / "hidiff_fold.json").read_text()
    decide_main(["-i", str(model), "-f", "0", "1"])
    assert "Written into 0 folds (2 already carried it)." in capsys.readouterr().out
    assert file_identity(checkpoint) == first and (fold / "hidiff_fold.json").read_text() == record_text
    # another decision rewrites it again: the record still names the identity training left
    decide_main(["-i", str(model), "-f", "0", "1", "--min-dice-gain", "0.01"])
    second = file_identity(checkpoint)
    assert read_fold_record(fold)["decision"]["checkpoint_rewritten"] == {"from": trained, "to": second}
    assert store.measured("T", 0, fold) == 123.0
    # anything else that rewrites the checkpoint (a new training) ends the measured time's validity
    os.utime(checkpoint, ns=(2_000_000_000, 2_000_000_000))
    assert trained_checkpoint_id(fold) == file_identity(checkpoint) and store.measured("T", 0, fold) is None
