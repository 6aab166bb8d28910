"""The per-fold refinement decision (training/validation.py) and its folder handling, without training."""
import math

import pytest

from nnunetv2_hidiff.training.validation import decide, replace_folder

NAN = float("nan")


def _c(steps, dice, hd95):
    return {"refine": True, "steps": steps, "dice": dice, "hd95": hd95}


def test_refine_only_when_dice_rises_and_hd95_does_not_worsen():
    seg = {"dice": 0.80, "hd95": 2.0}
    assert decide(seg, [_c(10, 0.82, 1.9)]) == {**decide(seg, [_c(10, 0.82, 1.9)]), "refine": True, "steps": 10}
    assert not decide(seg, [_c(10, 0.82, 2.1)])["refine"]  # better Dice, worse HD95
    assert not decide(seg, [_c(10, 0.79, 1.0)])["refine"]  # better HD95, worse Dice
    assert not decide(seg, [_c(10, 0.80, 2.0)])["refine"]  # a tie keeps the segmentor
    assert not decide(seg, [_c(10, 0.805, 2.0)], min_dice_gain=0.01)["refine"]
    assert not decide(seg, [])["refine"]


def test_best_candidate_wins_and_nan_hd95_is_worse_than_a_number():
    seg = {"dice": 0.80, "hd95": 2.0}
    d = decide(seg, [_c(10, 0.82, 1.9), _c(2, 0.83, 2.0), _c(1, 0.90, 5.0)])
    assert d["refine"] and d["steps"] == 2 and "0.8300" in d["reason"]
    assert not decide(seg, [_c(10, 0.9, NAN)])["refine"]
    assert decide({"dice": 0.5, "hd95": NAN}, [_c(10, 0.6, 3.0)])["refine"]
    assert decide({"dice": 0.5, "hd95": NAN}, [_c(10, 0.6, NAN)])["refine"]
    assert math.isnan(NAN)


@pytest.mark.parametrize("move", [False, True])
def test_replace_folder_swaps_in_a_complete_copy(tmp_path, move):
    src, dst = tmp_path / "validation", tmp_path / "validation_refined"
    src.mkdir()
    (src / "a.nii.gz").write_text("new")
    dst.mkdir()
    (dst / "stale.nii.gz").write_text("old")
    replace_folder(str(src), str(dst), move=move)
    assert sorted(p.name for p in dst.iterdir()) == ["a.nii.gz"]
    assert src.exists() != move
    assert not any(p.name.endswith((".tmp", ".old")) for p in tmp_path.iterdir())


def test_combined_candidates_compete_like_refined_ones():
    """A candidate that combines the segmentor with new refined components is chosen like any other; at equal
    Dice the lower HD95 wins; the decision names how the output is combined."""
    seg = {"dice": 0.80, "hd95": 2.0}
    combined = {**_c(10, 0.81, 1.5), "combine": "new_components"}
    d = decide(seg, [_c(10, 0.81, 1.9), combined])
    assert d["refine"] and d["combine"] == "new_components" and "does not reach" in d["reason"]
    assert decide(seg, [_c(10, 0.82, 1.9), combined])["combine"] == "none"
    assert decide(seg, [{**combined, "dice": 0.79}])["combine"] == "none"
    assert not decide(seg, [{**combined, "dice": 0.79}])["refine"]

    union = {**_c(1, 0.81, 1.5), "combine": "union"}
    d = decide(seg, [combined, union])  # equal Dice and HD95: the first candidate stays
    assert d["combine"] == "new_components"
    d = decide(seg, [combined, {**union, "hd95": 1.4}])
    assert d["combine"] == "union" and d["steps"] == 1 and "refined foreground" in d["reason"]


def test_gated_candidates_compete_and_the_decision_carries_the_gate():
    seg = {"dice": 0.80, "hd95": 2.0}
    union = {**_c(1, 0.81, 1.5), "combine": "union"}
    gated = {**_c(1, 0.815, 1.6), "combine": "gated", "gate": [0.5, 0.8]}
    d = decide(seg, [union, gated])
    assert d["combine"] == "gated" and d["gate"] == [0.5, 0.8] and "exceeds 0.5 on the segmentor's" in d["reason"]
    assert "gate" not in decide(seg, [union, {**gated, "dice": 0.805}])  # the union wins: no gate in the decision
    assert "gate" not in decide(seg, [{**gated, "hd95": 2.5}])  # the segmentor alone


def test_the_cascade_input_of_a_fold_is_its_decided_candidates(tmp_path, monkeypatch):
    """nnU-Net writes predicted_next_stage/ on every validation run; after the candidates ran, this fold's files
    there are the decided candidate's (not the last one's), and other folds' files are left alone."""
    from types import SimpleNamespace

    from nnunetv2_hidiff.networks.config import HiDiffConfig
    from nnunetv2_hidiff.networks.hidiff_network import FORCEABLE
    from nnunetv2_hidiff.training import validation

    class Net:
        output_space = "log"
        decision = None

        def force(self, **settings):
            for k, value in settings.items():
                setattr(self, k, value)

        def set_decision(self, decision):
            self.decision = decision

    net = Net()
    net.force(**{k: None for k in FORCEABLE})
    config = HiDiffConfig()
    base = tmp_path / "model"
    out = base / "fold_0"
    out.mkdir(parents=True)
    next_stage = base / "predicted_next_stage" / "3d_cascade_fullres"
    next_stage.mkdir(parents=True)
    (next_stage / "other_fold_case.npz").write_text("fold 1's")

    def name():
        return "segmentor" if not net.refine else f"{net.combine}_{net.steps}"

    def run_validation(save_probabilities):  # what nnU-Net's perform_actual_validation leaves behind
        (out / "validation").mkdir(exist_ok=True)
        (out / "validation" / "case_a.nii.gz").write_text(name())
        (next_stage / "case_a.npz").write_text(name())

    winner = f"none_{config.default_steps + 1}"  # an extra step count, neither the first nor the last run
    assert winner[5:].isdigit() and int(winner[5:]) in config.decision_extra_steps

    def score(trainer, folder):
        return {"foreground_mean": {"Dice": 0.9 if name() == winner else 0.5, "HD95": 1.0}}

    monkeypatch.setattr(validation, "extend_validation_summary", score)
    trainer = SimpleNamespace(hidiff=net, hidiff_configuration=config, output_folder=str(out),
                              output_folder_base=str(base), do_split=lambda: (["case_b"], ["case_a"]), local_rank=0,
                              configuration_manager=SimpleNamespace(next_stage_names=["3d_cascade_fullres"]),
                              print_to_log_file=lambda *a, **k: None, validated_checkpoint=None)
    decision = validation.validate_and_decide(trainer, run_validation)
    assert (decision["refine"], decision["steps"], decision["combine"]) == (True, int(winner[5:]), "none")
    assert (out / "validation" / "case_a.nii.gz").read_text() == winner
    assert (next_stage / "case_a.npz").read_text() == winner
    assert (next_stage / "other_fold_case.npz").read_text() == "fold 1's"
