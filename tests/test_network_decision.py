"""The refinement decision and the configuration a HiDiffNetwork carries in its state dict (issue 44): explicit
decisions, forced settings, legacy decision buffers, and architecture checks at load."""
import pytest
import torch

from test_networks_hidiff import HIPPO_PLANS, _build


def _refining(steps=3, combine="none", gate=None, **kw):
    return {"refine": True, "steps": steps, "combine": combine, "gate": gate, "transition": "renoise", "samples": 1,
            "seed": 0, **kw}


def test_decision_travels_in_the_state_dict_and_forced_settings_win(capsys):
    """The per-fold decision is in the state dict with every setting: a strict load carries it; a network without a
    decision predicts the segmentor alone and says so once; settings forced by the user override the decision."""
    from nnunetv2_hidiff.training.inference_settings import apply_inference_settings

    net = _build(str(HIPPO_PLANS), ds=False)
    net.eval()
    x = torch.randn(1, 1, 56, 40)
    other = _build(str(HIPPO_PLANS), ds=False).eval()
    other.load_state_dict(net.state_dict())  # no decision
    assert other.decision is None and other.settings()["refine"] is False
    torch.testing.assert_close(other(x), net.segmentor(x))
    other(x)
    assert capsys.readouterr().err.count("carries no refinement decision") == 1
    net.set_decision({"refine": False})
    other.load_state_dict(net.state_dict())
    assert other.decision == {"refine": False, "steps": 0, "combine": "none", "gate": None, "transition": None,
                              "samples": None, "seed": None}
    torch.testing.assert_close(other(x), net.segmentor(x))  # the segmentor alone, as decided
    assert "carries no refinement decision" not in capsys.readouterr().err
    apply_inference_settings(other, {"nnUNet_HiDiff_refine": "1"})
    assert other.settings()["refine"] and other.settings()["steps"] == 10  # the configuration's steps (here T)
    net.set_decision(_refining(steps=3, samples=2, seed=5, transition="sample"))
    other.refine = None
    other.load_state_dict(net.state_dict())
    assert {k: other.settings()[k] for k in ("refine", "steps", "samples", "seed", "transition")} == \
        {"refine": True, "steps": 3, "samples": 2, "seed": 5, "transition": "sample"}
    apply_inference_settings(other, {"nnUNet_HiDiff_steps": "5", "nnUNet_HiDiff_seed": "1"})
    assert other.settings()["steps"] == 5 and other.settings()["seed"] == 1 and other.settings()["samples"] == 2
    with pytest.raises(ValueError, match="steps must lie in 1..10"):
        net.set_decision(_refining(steps=11))
    with pytest.raises(ValueError, match="names every setting.*samples"):
        net.set_decision({"refine": True, "steps": 2, "combine": "none", "transition": "renoise", "seed": 0})


def test_legacy_decision_buffers_load_explicitly():
    """State dicts written before 2026-12-07 carried buffers [mode, steps (0 = the network's default)]: they load
    with the loading class's configuration; [1, 0] (never validated, or refine at the default) predicts the
    segmentor alone; [2, 0] is new_components at the configuration's steps; [0, 0] the segmentor alone."""
    net = _build(str(HIPPO_PLANS), ds=False, inference_steps=2)
    weights = {k: v for k, v in net.state_dict().items() if k != "_extra_state"}
    other = _build(str(HIPPO_PLANS), ds=False, inference_steps=2)
    for buffer, expected in (([1, 0], None), ([0, 0], False), ([2, 0], (2, "new_components")),
                             ([5, 4], (4, "gated"))):
        other.load_state_dict({**weights, "inference_decision": torch.tensor(buffer),
                               "inference_gate": torch.tensor([600, 900])})
        if expected is None:
            assert other.decision is None
        elif expected is False:
            assert other.decision["refine"] is False
        else:
            assert (other.decision["steps"], other.decision["combine"]) == expected
            assert other.decision["transition"] == "renoise" and other.decision["samples"] == 1
    assert other.decision["gate"] == [0.6, 0.9]


def test_architecture_mismatch_at_load_names_the_field_and_the_fix():
    """prior_residual adds no parameters: a checkpoint of one head loads into a network of the other only by its
    stored configuration, which refuses it; non-architecture fields are taken from the checkpoint."""
    from nnunetv2_hidiff.networks import HiDiffConfigurationError

    residual = _build(str(HIPPO_PLANS), ds=False, prior_residual=True, inference_steps=3)
    residual.trainer_name = "nnUNetTrainerA"
    plain = _build(str(HIPPO_PLANS), ds=False, prior_residual=False)
    plain.trainer_name = "nnUNetTrainerB"
    with pytest.raises(HiDiffConfigurationError, match=r"prior_residual = True in the checkpoint \(nnUNetTrainerA\), "
                                                       r"False in nnUNetTrainerB.*-tr nnUNetTrainerA"):
        plain.load_state_dict(residual.state_dict())
    steps_other = _build(str(HIPPO_PLANS), ds=False, prior_residual=True, inference_steps=7)
    steps_other.load_state_dict(residual.state_dict())
    assert steps_other.config.inference_steps == 3  # the stored configuration wins over the building class's


def test_decision_to_combine_segmentor_and_new_refined_components():
    """A decision that combines: the segmentor's output plus the refined components it does not reach (and union,
    average, gated); forcing refinement on gives the refined output alone, forcing combine gives the combination."""
    from nnunetv2_hidiff.networks.combine import combine_new_components, combine_outputs
    from nnunetv2_hidiff.training.inference_settings import apply_inference_settings

    net = _build(str(HIPPO_PLANS), ds=False)
    net.eval()
    x = torch.randn(1, 1, 56, 40)
    net.set_decision(_refining(steps=10))
    refined = net(x)
    segmentor = net.segmentor(x)
    net.set_decision(_refining(steps=10, combine="new_components"))
    assert net.settings()["combine"] == "new_components"
    torch.testing.assert_close(net(x), combine_new_components(segmentor, refined))
    other = _build(str(HIPPO_PLANS), ds=False)
    other.load_state_dict(net.state_dict())
    other.eval()
    torch.testing.assert_close(other(x), net(x))
    apply_inference_settings(other, {"nnUNet_HiDiff_refine": "1"})  # forced refinement: the refined output alone
    assert other.settings()["combine"] == "none"
    torch.testing.assert_close(other(x), refined)
    apply_inference_settings(other, {"nnUNet_HiDiff_combine": "new_components"})
    torch.testing.assert_close(other(x), net(x))
    for combine in ("union", "average"):
        net.set_decision(_refining(steps=10, combine=combine))
        assert net.settings()["combine"] == combine
        torch.testing.assert_close(net(x), combine_outputs(segmentor, refined, combine))
    net.set_decision(_refining(steps=10, combine="gated", gate=(0.6, 0.9)))
    assert net.settings()["combine"] == "gated" and net.settings()["gate"] == (0.6, 0.9)
    torch.testing.assert_close(net(x), combine_outputs(segmentor, refined, "gated", (0.6, 0.9)))
    other.refine, other.combine = None, None
    other.load_state_dict(net.state_dict())  # the gate travels with the decision
    torch.testing.assert_close(other(x), net(x))
    apply_inference_settings(other, {"nnUNet_HiDiff_gate": "0.5,1"})  # a forced gate wins over the stored one
    assert other.settings()["gate"] == (0.5, 1.0)
    torch.testing.assert_close(other(x), combine_outputs(segmentor, refined, "gated", (0.5, 1.0)))
    with pytest.raises(ValueError, match="nnUNet_HiDiff_gate='0.5' must be two probabilities"):
        apply_inference_settings(other, {"nnUNet_HiDiff_gate": "0.5"})
    with pytest.raises(ValueError, match="needs a gate"):
        net.set_decision(_refining(combine="gated"))
    net.set_decision({"refine": False, "combine": "new_components"})  # no refinement: nothing to combine
    assert net.decision["combine"] == "none"
    torch.testing.assert_close(net(x), segmentor)
    with pytest.raises(ValueError, match="nnUNet_HiDiff_combine='all' must be one of"):
        apply_inference_settings(net, {"nnUNet_HiDiff_combine": "all"})
    with pytest.raises(ValueError, match="combine must be one of"):
        net.set_decision(_refining(combine="all"))
