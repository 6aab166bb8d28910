"""Combining the segmentor's mask with the refined one (issue 12): keep the segmentor, add what refinement finds.

On DRIVE the refined output loses Dice against its segmentor but lowers HD95 by a quarter, and the HD95 gain comes
from pixels refinement *adds* (benchmarks/refined_changes.py). Two combinations keep the segmentor's prediction
and take only additions from the refined one:

* ``COMBINE_UNION``: the segmentor's foreground plus the refined foreground where the segmentor predicts
  background (per class: a pixel the segmentor gives to class k stays k);
* ``COMBINE_NEW_COMPONENTS``: the segmentor's prediction everywhere except on refined foreground components
  that the segmentor's mask of the same class does not reach: connected pieces of vessel (or organ) that only the
  refiner found. Where refinement moves boundaries, removes pixels or extends the segmentor's own components,
  the segmentor's prediction stands.

A third one is symmetric: ``COMBINE_AVERAGE``, the mean of the segmentor's softmax p and the refined ŷ0
(normalised over the classes), i.e. a two-member ensemble of the segmentor and its refiner. It can remove
pixels as well as add them: a pixel changes label only where the refiner disagrees more confidently than the
segmentor agrees.

The fourth one follows the Dice break-even of a relabelled pixel (benchmarks/label_changes.py): adding a pixel to
a class raises its Dice only if such additions are right more often than D/2, removing one only if removals are
right more often than 1 − D/2 (D = the class's Dice). ``COMBINE_GATED`` takes the refined label only where it
differs from the segmentor's *and* the refined probability of that label (ŷ0 normalised over the classes) exceeds a
gate: ``gate_add`` where the segmentor predicts background (an addition), ``gate_remove`` where it predicts a
foreground class (a removal or a change of class). Gates (0.5, 0.5) give the refined output of a binary task,
(0.5, 1) the union, (1, 1) the segmentor; the decision chooses the gates on the fold's validation cases.

"Reach" is geodesic: a refined pixel is kept out when it is connected to the segmentor's mask through pixels
of the union of both masks (8-connectivity in 2d, 26 in 3d), computed by morphological reconstruction (iterated
3×3(×3) max-pooling inside the union), so it runs on the device with the rest of the forward pass. In nnU-Net's
sliding window it is applied per patch: a component cut by the patch border is judged on its part in the patch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

COMBINE_NONE, COMBINE_NEW_COMPONENTS, COMBINE_UNION, COMBINE_AVERAGE = "none", "new_components", "union", "average"
COMBINE_GATED = "gated"
# order = stored decision mode
COMBINES = (COMBINE_NONE, COMBINE_NEW_COMPONENTS, COMBINE_UNION, COMBINE_AVERAGE, COMBINE_GATED)


def check_gate(gate) -> Tuple[float, float]:
    """(gate_add, gate_remove) as floats in [0, 1]; one clear error otherwise."""
    try:
        add, remove = (float(g) for g in gate)
    except (TypeError, ValueError):
        raise ValueError(f"a gate is two probabilities (add, remove), got {gate!r}") from None
    if not (0.0 <= add <= 1.0 and 0.0 <= remove <= 1.0):
        raise ValueError(f"gate probabilities must lie in [0, 1], got {gate!r}")
    return add, remove


def gate_name(gate) -> str:
    """Folder/record suffix of a gate: (0.5, 0.8) -> 'a500_r800' (per mille)."""
    add, remove = check_gate(gate)
    return f"a{round(add * 1000)}_r{round(remove * 1000)}"


def reconstruct(marker: torch.Tensor, mask: torch.Tensor, max_iterations: int = 100_000) -> torch.Tensor:
    """Morphological reconstruction by dilation: the pixels of ``mask`` connected (8/26-connectivity) to
    ``marker & mask``. marker, mask: bool (B, *sp), 2 or 3 spatial dims."""
    if marker.shape != mask.shape or marker.dim() not in (3, 4):
        raise ValueError(f"marker and mask must be equal bool (B, *sp) with 2 or 3 spatial dims, got "
                         f"{tuple(marker.shape)} and {tuple(mask.shape)}")
    pool = F.max_pool2d if marker.dim() == 3 else F.max_pool3d
    m = mask.unsqueeze(1).float()
    current = marker.unsqueeze(1).float() * m
    for _ in range(max_iterations):
        grown = pool(current, kernel_size=3, stride=1, padding=1) * m
        if torch.equal(grown, current):
            break
        current = grown
    return current.squeeze(1) > 0


def new_components(segmentor_mask: torch.Tensor, refined_mask: torch.Tensor) -> torch.Tensor:
    """The pixels of ``refined_mask`` whose component in (segmentor ∪ refined) contains no segmentor pixel:
    bool (B, *sp)."""
    reached = reconstruct(segmentor_mask, segmentor_mask | refined_mask)
    return refined_mask & ~reached


def combine_outputs(segmentor_logits: torch.Tensor, refined_logits: torch.Tensor,
                    combine: str = COMBINE_NEW_COMPONENTS, gate: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Per-class log-probabilities (B, K, *sp): the segmentor's log-softmax, except where the refined output adds
    foreground (classes 1..K-1, argmax masks): with ``COMBINE_UNION`` wherever the segmentor predicts background,
    with ``COMBINE_NEW_COMPONENTS`` on the refined components that the segmentor's mask of the same class does not
    reach; there the refined output's log-softmax is used. Both are normalised so that nnU-Net's sliding window
    averages values of one scale; the result's argmax is the segmentor's argmax plus the additions.
    With ``COMBINE_AVERAGE``: log((softmax(segmentor) + softmax(refined)) / 2) everywhere. With ``COMBINE_GATED``
    (``gate`` = (gate_add, gate_remove) required): the refined log-softmax where the refined label differs from the
    segmentor's and its refined probability exceeds gate_add (segmentor background) or gate_remove (otherwise)."""
    if segmentor_logits.shape != refined_logits.shape:
        raise ValueError(f"segmentor logits {tuple(segmentor_logits.shape)} and refined logits "
                         f"{tuple(refined_logits.shape)} differ in shape")
    if combine not in COMBINES[1:]:
        raise ValueError(f"combine must be one of {COMBINES[1:]}, got {combine!r}")
    if combine == COMBINE_AVERAGE:
        mean = (torch.softmax(segmentor_logits.float(), 1) + torch.softmax(refined_logits.float(), 1)) / 2
        return torch.log(mean.clamp_min(1e-12)).to(segmentor_logits.dtype)
    seg_label, ref_label = segmentor_logits.argmax(1), refined_logits.argmax(1)
    if combine == COMBINE_GATED:
        if gate is None:
            raise ValueError("combine='gated' needs a gate (gate_add, gate_remove)")
        add_gate, remove_gate = check_gate(gate)
        confidence = torch.softmax(refined_logits.float(), 1).amax(1)  # the refined probability of ref_label
        take = (ref_label != seg_label) & (confidence > torch.where(seg_label == 0, add_gate, remove_gate))
    elif combine == COMBINE_UNION:
        take = (seg_label == 0) & (ref_label > 0)
    else:
        take = torch.zeros_like(seg_label, dtype=torch.bool)
        for k in range(1, segmentor_logits.shape[1]):
            take |= new_components(seg_label == k, ref_label == k)
    seg_log, ref_log = (torch.log_softmax(v.float(), dim=1) for v in (segmentor_logits, refined_logits))
    return torch.where(take.unsqueeze(1), ref_log, seg_log).to(segmentor_logits.dtype)


def combine_new_components(segmentor_logits: torch.Tensor, refined_logits: torch.Tensor) -> torch.Tensor:
    """:func:`combine_outputs` with ``COMBINE_NEW_COMPONENTS``."""
    return combine_outputs(segmentor_logits, refined_logits, COMBINE_NEW_COMPONENTS)
