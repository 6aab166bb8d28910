"""networks/combine.py: the segmentor's mask plus the refined components it does not reach (issue 12)."""
import pytest
import torch

from nnunetv2_hidiff.networks.combine import combine_new_components, combine_outputs, new_components, reconstruct


def _masks_2d():
    seg = torch.zeros(1, 12, 12, dtype=torch.bool)
    ref = torch.zeros_like(seg)
    seg[0, 1:4, 1:4] = True            # a segmentor component
    ref[0, 2:4, 2:7] = True            # refinement extends it: reached through the union
    ref[0, 4, 7] = True                # ... and goes on diagonally (8-connectivity): reached
    ref[0, 8:11, 8:11] = True          # a component only refinement found: new
    ref[0, 9, 1] = True                # a single new pixel
    return seg, ref


def test_new_components_are_exactly_the_unreached_refined_components():
    seg, ref = _masks_2d()
    expected = torch.zeros_like(seg)
    expected[0, 8:11, 8:11] = True
    expected[0, 9, 1] = True
    assert torch.equal(new_components(seg, ref), expected)
    assert not new_components(seg, seg).any()          # nothing new in the segmentor's own mask
    assert torch.equal(new_components(torch.zeros_like(seg), ref), ref)  # empty segmentor: all refined is new
    # a long winding refined path (many reconstruction iterations) is reached end to end
    seg2, ref2 = torch.zeros(1, 9, 9, dtype=torch.bool), torch.zeros(1, 9, 9, dtype=torch.bool)
    seg2[0, 0, 0] = True
    for r in range(0, 9, 2):
        ref2[0, r, :] = True
        if r + 1 < 9:
            ref2[0, r + 1, 8 if (r // 2) % 2 == 0 else 0] = True
    assert not new_components(seg2, ref2).any()


def test_reconstruct_3d_uses_26_connectivity_and_checks_shapes():
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 1, 1, 1] = mask[0, 3, 3, 3] = True
    marker = torch.zeros_like(mask)
    marker[0, 0, 0, 0] = True
    out = reconstruct(marker, mask)
    assert out[0, 1, 1, 1] and out[0, 0, 0, 0] and not out[0, 3, 3, 3]
    with pytest.raises(ValueError, match="marker and mask"):
        reconstruct(marker, mask[..., :2])


def test_combined_logits_keep_the_segmentor_and_add_only_new_components():
    seg, ref = _masks_2d()
    seg_logits = torch.stack([(~seg).float() * 3, seg.float() * 3, torch.zeros_like(seg, dtype=torch.float)], 1)
    ref_logits = torch.stack([(~ref).float() * 2, torch.zeros_like(ref, dtype=torch.float), ref.float() * 2], 1)
    # refinement calls its pixels class 2: class 2 has no segmentor mask, so every class-2 component is new
    out = combine_new_components(seg_logits, ref_logits)
    label = out.argmax(1)
    assert torch.equal(label == 1, seg & ~ref)
    assert torch.equal(label == 2, ref)
    keep = ~ref
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep],
                               torch.log_softmax(seg_logits, 1).permute(0, 2, 3, 1)[keep])
    # same class: only the unreached components change the segmentor's label map
    ref_logits = torch.stack([(~ref).float() * 2, ref.float() * 2, torch.zeros_like(ref, dtype=torch.float)], 1)
    label = combine_new_components(seg_logits, ref_logits).argmax(1)
    assert torch.equal(label == 1, seg | new_components(seg, ref))
    torch.testing.assert_close(torch.softmax(combine_new_components(seg_logits, seg_logits), 1),
                               torch.softmax(seg_logits, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        combine_new_components(seg_logits, ref_logits[:, :2])


def test_union_adds_all_refined_foreground_on_segmentor_background_only():
    seg, ref = _masks_2d()
    seg_logits = torch.stack([(~seg).float() * 3, seg.float() * 3, torch.zeros_like(seg, dtype=torch.float)], 1)
    ref_logits = torch.stack([(~ref).float() * 2, torch.zeros_like(ref, dtype=torch.float), ref.float() * 2], 1)
    label = combine_outputs(seg_logits, ref_logits, "union").argmax(1)
    assert torch.equal(label == 1, seg)            # the segmentor's class-1 pixels stay class 1 ...
    assert torch.equal(label == 2, ref & ~seg)     # ... refined class 2 is added only on segmentor background
    with pytest.raises(ValueError, match="combine must be"):
        combine_outputs(seg_logits, ref_logits, "none")


def test_average_is_the_mean_of_both_outputs_probabilities_and_can_remove_pixels():
    g = torch.Generator().manual_seed(0)
    seg_logits, ref_logits = torch.randn(2, 3, 7, 9, generator=g) * 3, torch.randn(2, 3, 7, 9, generator=g) * 3
    out = combine_outputs(seg_logits, ref_logits, "average")
    expected = (torch.softmax(seg_logits, 1) + torch.softmax(ref_logits, 1)) / 2
    torch.testing.assert_close(out.exp(), expected)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 7, 9))   # log-probabilities: one scale for the window
    torch.testing.assert_close(combine_outputs(seg_logits, seg_logits, "average"), torch.log_softmax(seg_logits, 1))
    # symmetric, unlike union and new_components: a confident refined background removes a segmentor pixel
    seg = torch.tensor([[0.0, 1.0]]).view(1, 2, 1, 1)     # segmentor: foreground, p = 0.73
    ref = torch.tensor([[4.0, 0.0]]).view(1, 2, 1, 1)     # refined: background, p = 0.98
    assert combine_outputs(seg, ref, "average").argmax(1).item() == 0
    assert combine_outputs(seg, ref, "union").argmax(1).item() == 1


def test_gated_takes_the_refined_label_only_above_its_gate_and_spans_segmentor_to_refined():
    """combine 'gated': an addition (segmentor background) needs a refined probability above gate_add, a removal or
    change of class above gate_remove; (0.5, 0.5) is the refined output, (0.5, 1) the union, (1, 1) the segmentor."""
    from nnunetv2_hidiff.networks.combine import check_gate, gate_name

    # one pixel per case: segmentor label (confident), refined probabilities of the three classes
    seg_labels = torch.tensor([0, 0, 1, 1, 2, 0])
    ref_probs = torch.tensor([[0.40, 0.60, 0.00],    # addition at 0.60
                              [0.15, 0.85, 0.00],    # addition at 0.85
                              [0.70, 0.30, 0.00],    # removal at 0.70
                              [0.05, 0.00, 0.95],    # change of class at 0.95
                              [0.00, 0.20, 0.80],    # agreement: nothing to take
                              [0.90, 0.10, 0.00]])   # agreement on background
    seg_logits = (torch.nn.functional.one_hot(seg_labels, 3).float() * 5).T.reshape(1, 3, 1, 6)
    ref_logits = torch.log(ref_probs.clamp_min(1e-6)).T.reshape(1, 3, 1, 6)

    def labels(gate):
        return combine_outputs(seg_logits, ref_logits, "gated", gate).argmax(1).flatten().tolist()

    refined = ref_probs.argmax(1).tolist()
    assert labels((0.5, 0.5)) == refined == [1, 1, 0, 2, 2, 0]
    assert labels((1.0, 1.0)) == seg_labels.tolist()
    assert labels((0.5, 1.0)) == combine_outputs(seg_logits, ref_logits, "union").argmax(1).flatten().tolist() \
        == [1, 1, 1, 1, 2, 0]
    assert labels((0.7, 1.0)) == [0, 1, 1, 1, 2, 0]      # only the confident addition
    assert labels((1.0, 0.8)) == [0, 0, 1, 2, 2, 0]      # only the confident change of class
    assert labels((0.5, 0.6)) == [1, 1, 0, 2, 2, 0]      # all additions, the removal at 0.70 too
    # where it takes the refined label, the output is the refined log-softmax; elsewhere the segmentor's
    out = combine_outputs(seg_logits, ref_logits, "gated", (0.7, 1.0))
    torch.testing.assert_close(out[..., 1], torch.log_softmax(ref_logits, 1)[..., 1])
    torch.testing.assert_close(out[..., 0], torch.log_softmax(seg_logits, 1)[..., 0])
    assert gate_name((0.5, 0.8)) == "a500_r800" and check_gate(["0.6", 1]) == (0.6, 1.0)
    with pytest.raises(ValueError, match="needs a gate"):
        combine_outputs(seg_logits, ref_logits, "gated")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        combine_outputs(seg_logits, ref_logits, "gated", (0.5, 1.5))
    with pytest.raises(ValueError, match="two probabilities"):
        check_gate((0.5,))
