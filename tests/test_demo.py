"""The demo's report pieces on synthetic inputs: the overlay figure, the results table, the decision line."""
import math

import numpy as np

from nnunetv2_hidiff.cli import demo


def _record(refine: bool, **decision) -> dict:
    candidates = [{"refine": False, "steps": 0, "combine": "none", "dice": 0.85, "hd95": 1.7},
                  {"refine": True, "steps": 1, "combine": "none", "dice": 0.84, "hd95": 1.8},
                  {"refine": True, "steps": 2, "combine": "union", "dice": 0.86, "hd95": 1.6}]
    reason = ("refinement with 2 steps (the segmentor's foreground plus the refined foreground) raised the "
              "foreground Dice 0.8500 -> 0.8600 (HD95 1.700 -> 1.600)" if refine else
              "no refined candidate raised the foreground Dice without worsening HD95")
    return {"validation": {"segmentor": {"cases": 52, "steps": 0}, "refined": {"cases": 52, "steps": 1}},
            "decision": {"refine": refine, "steps": 0, "combine": "none", "reason": reason,
                         "candidates": candidates, **decision}}


def test_decision_line_names_the_decided_output_and_why():
    line = demo.decision_line(_record(False))
    assert "on its 52 validation cases: segmentor alone, because no refined candidate raised" in line
    assert "best refined candidate segmentor + refined foreground, 2 steps: Dice 0.8600" in line  # the best by Dice
    line = demo.decision_line(_record(True, steps=2, combine="union"))
    assert "segmentor + refined foreground, 2 steps, because refinement with 2 steps" in line
    assert "best refined candidate" not in line and line.endswith("(Dice +0.010000, HD95 -0.100000 mm)")
    assert demo.decided_output({"refine": True, "steps": 1, "combine": "none"}) == "refined, 1 step"
    assert demo.decided_output({"refine": True, "steps": 3, "combine": "gated", "gate": [0.5, 0.8]}) == \
        "refined where gated 0.5,0.8, 3 steps"
    assert demo.default_steps(_record(False), "unused") == 1  # from the fold's "refined" validation run


def test_results_table_has_one_aligned_line_per_output():
    rows = [{"name": "segmentor alone", "dice": 0.8761, "hd95": 1.3212, "seconds": 0.68},
            {"name": "refined, 1 step", "dice": 0.8702, "hd95": 1.4, "seconds": 1.234},
            {"name": "as decided (segmentor alone)", "dice": 0.8761, "hd95": math.nan, "seconds": None}]
    lines = demo.results_table(rows)
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["output", "Dice", "HD95", "mm", "s/case"]
    assert lines[1].split()[-3:] == ["0.876", "1.32", "0.68"]
    assert lines[2].split()[-3:] == ["0.870", "1.40", "1.23"]
    assert lines[3].split()[-3:] == ["0.876", "nan", "-"]


def test_overlay_draws_five_panels_per_row_with_their_dice(tmp_path):
    import matplotlib.image

    reference = np.zeros((20, 16), np.uint8)
    reference[5:10, 4:8], reference[10:15, 4:8] = 1, 2
    shifted = np.roll(reference, 1, axis=0)
    rows = [{"name": f"case_{i}", "z": 3, "image": np.random.default_rng(i).random((20, 16)), "reference": reference,
             "layers": {"segmentor alone": reference, "refined": shifted, "as decided": reference},
             "case_dice": {"segmentor alone": 1.0, "refined": 0.8, "as decided": 1.0}} for i in range(2)]
    target = tmp_path / "overlay.png"
    labels = demo.draw_overlay(rows, target)
    assert target.is_file() and matplotlib.image.imread(str(target)).ndim == 3
    assert [len(r) for r in labels] == [5, 5] and len(demo.OVERLAY_PANELS) == 5
    first = labels[0]
    assert first[0] == "case_0, slice 3" and first[1] == "reference"
    assert first[2] == "segmentor alone\nDice 1.000 slice, 1.000 case"
    assert first[3].startswith("refined\nDice ") and first[3].endswith(", 0.800 case")
    assert math.isclose(float(first[3].split()[2]), demo.mean_dice(shifted, reference))
    # a sixth panel: a float map (an uncertainty, say) is drawn as a heat map without a Dice
    rows[0]["layers"]["uncertainty"] = np.random.default_rng(0).random((20, 16))
    labels = demo.draw_overlay(rows[:1], tmp_path / "six.png", panels=(*demo.OVERLAY_PANELS, "uncertainty"))
    assert labels[0][-1] == "uncertainty" and len(labels[0]) == 6
