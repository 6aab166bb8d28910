"""Per-voxel uncertainty maps at prediction: ``nnunetv2_hidiff_predict --uncertainty SOURCE [SOURCE ...]``.

Every map is the normalised entropy of a mean predictive distribution, H(p̄) / log K (K classes; 0: all passes
agree with certainty, 1: uniform), computed from nnU-Net's own pipeline for the model (its preprocessing, sliding
window and resampling back to the input's geometry). The sources differ in what is averaged:

* ``softmax``: one pass, the model's own output with the prediction's settings (mirroring as asked; for a HiDiff
  fold its decided output): H(p) / log K of the probabilities nnU-Net exports.
* ``folds``: the folds given with ``-f`` (nnU-Net's ensemble), each predicted alone: p̄ = the mean of the folds'
  exported probabilities (nnU-Net's ensemble averages logits: its label map may differ from argmax p̄ on a few
  voxels; the label map written is nnU-Net's). At least two folds.
* ``mirroring``: the 2^m mirrored passes of nnU-Net's test-time augmentation (m mirror axes) of each tile:
  p̄ = their mean per tile.
* ``samples``: N refiner samples of a HiDiff model (``--uncertainty-samples``, default 8), one batch per tile, each
  from its own y_T ~ B(p) and noise, with the steps, transition and seed the prediction uses: p̄ = the mean of the
  samples' ŷ0 per tile (the refined output, whatever ``combine`` the decision chose). N = 1 is refused (one
  sample has no spread).

For ``mirroring`` and ``samples`` the per-tile maps are averaged over overlapping tiles with nnU-Net's Gaussian
weights, as nnU-Net averages logits, and resampled to the input's geometry like probabilities. With several folds,
their per-tile maps are averaged.

Files (``-o OUT``): the label maps are nnUNetv2_predict's own, unchanged; the maps go to ``OUT/uncertainty_<source>/``
with the case's file name (so that nnU-Net's tools, which read every file of the prediction folder, still work),
and ``OUT/uncertainty.csv`` gets one row per case and source (case, source, measure, mean over the predicted
foreground, mean over the image, seconds beyond plain prediction). Maps are written as float32 with the input's
spacing, origin and direction by SimpleITK for SimpleITK-read datasets (NIfTI, NRRD, MHA); other readers get the
map × 255 rounded to integers through the dataset's own writer (divide by 255 to read it back).
"""
from __future__ import annotations

import csv
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

SOURCES = ("samples", "softmax", "mirroring", "folds")
MEASURE = "normalised entropy of the mean"
CSV_NAME = "uncertainty.csv"
CSV_COLUMNS = ("case", "source", "measure", "mean_foreground", "mean_image", "seconds")
DEFAULT_SAMPLES = 8
QUANTISATION = 255  # integer formats: map × 255, rounded


class UncertaintyRequestError(Exception):
    """A request that cannot be served (one line for the user)."""


def map_folder(output_folder: str, source: str) -> str:
    return os.path.join(output_folder, f"uncertainty_{source}")


# ------------------------------------------------------------------------------------------------ formulas (torch)
def normalised_entropy(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """-Σ p log p / log K over ``dim`` (K = its size), in [0, 1]; 0·log 0 = 0."""
    k = p.shape[dim]
    p = p.float().clamp(0, 1)
    h = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-12)), torch.zeros_like(p))).sum(dim)
    return (h / np.log(k)).clamp(0, 1) if k > 1 else torch.zeros_like(h)


class SpreadNetwork(nn.Module):
    """A trained network wrapped for nnU-Net's sliding window: per tile, the normalised entropy of the mean of
    several passes (``mirroring``: the mirrored passes; ``samples``: refiner samples) in output channel 0, zeros in
    the other channels. ``load_state_dict`` goes to the wrapped network, so nnU-Net's per-fold loading works."""

    def __init__(self, network: nn.Module, source: str, num_outputs: int, mirror_axes: Sequence[int] = (),
                 samples: int = DEFAULT_SAMPLES):
        super().__init__()
        if source not in ("mirroring", "samples"):
            raise ValueError(f"SpreadNetwork source must be 'mirroring' or 'samples', got {source!r}")
        self.network, self.source, self.num_outputs = network, source, num_outputs
        self.mirror_axes, self.samples = tuple(mirror_axes), int(samples)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def passes(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, K, *sp) probabilities of the passes."""
        if self.source == "mirroring":
            import itertools

            axes = [a + 2 for a in self.mirror_axes]
            combos = [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            outs = []
            for c in combos:
                logits = self.network(torch.flip(x, c) if c else x)
                outs.append(torch.softmax((torch.flip(logits, c) if c else logits).float(), 1))
            return torch.stack(outs)
        net = self.network
        seg = net.segment(x)
        prior = net.prior_from_logits(net.top_logits(seg.logits))
        settings = dict(net.settings(), samples=self.samples)
        return net.refine_prior(x, prior, seg.features, settings=settings, return_samples=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = normalised_entropy(self.passes(x).mean(0), dim=1)
        out = torch.zeros((x.shape[0], self.num_outputs, *x.shape[2:]), device=x.device, dtype=torch.float32)
        out[:, 0] = u
        return out


# ------------------------------------------------------------------------------------------------ geometry
def _to_input_geometry(preprocessed_map: torch.Tensor, predictor, properties: dict) -> np.ndarray:
    """A (*sp) map on the preprocessed grid -> the input image's grid, as nnU-Net's export resamples probabilities
    (export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape), outside the crop 0."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    spacing_transposed = [properties["spacing"][i] for i in pm.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = cm.spacing if len(cm.spacing) == len(shape) else [spacing_transposed[0], *cm.spacing]
    resampled = cm.resampling_fn_probabilities(preprocessed_map[None].float(), shape, current, spacing_transposed)
    resampled = np.asarray(resampled.cpu() if torch.is_tensor(resampled) else resampled, dtype=np.float32)[0]
    full = np.zeros(properties["shape_before_cropping"], dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    if torch.is_tensor(full):
        full = full.cpu().numpy()
    return np.clip(full.transpose(pm.transpose_backward), 0, 1)


def _probabilities(predictor, data: torch.Tensor, properties: dict) -> np.ndarray:
    """(K, *input shape) probabilities of the predictor's current folds, exported as nnU-Net exports them."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties,
        return_probabilities=True)
    return np.asarray(probabilities, dtype=np.float32)


def write_map(u: np.ndarray, path: str, properties: dict, writer) -> None:
    """Write a [0, 1] map (input geometry, nnU-Net's axis order) with the dataset's geometry; see module docstring."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    u = np.clip(np.asarray(u, dtype=np.float32), 0, 1)
    stuff = properties.get("sitk_stuff")
    if isinstance(writer, SimpleITKIO) and stuff is not None:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(u[0] if len(stuff["spacing"]) == 2 else u)
        image.SetSpacing(stuff["spacing"])
        image.SetOrigin(stuff["origin"])
        image.SetDirection(stuff["direction"])
        tmp = path + ".tmp" + os.path.splitext(path)[1] if not path.endswith(".nii.gz") else path[:-7] + ".tmp.nii.gz"
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
        return
    writer.write_seg(np.rint(u * QUANTISATION).astype(np.uint16), path, properties)


# ------------------------------------------------------------------------------------------------ the request
def check_request(sources: Sequence[str], predictor, folds: Sequence, samples: int) -> None:
    """One clear UncertaintyRequestError for a request the model cannot serve."""
    from nnunetv2_hidiff.networks.hidiff_network import HiDiffNetwork

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise UncertaintyRequestError(f"unknown uncertainty source(s) {unknown}; choose from {', '.join(SOURCES)}")
    if predictor.label_manager.has_regions:
        raise UncertaintyRequestError("--uncertainty supports per-class (softmax) models; this model is "
                                      "region-based (sigmoid outputs)")
    if "folds" in sources and len(folds) < 2:
        raise UncertaintyRequestError(f"--uncertainty folds needs at least two folds (-f), got {list(folds)}")
    if "samples" in sources:
        network = getattr(predictor.network, "_orig_mod", predictor.network)
        if not isinstance(network, HiDiffNetwork):
            raise UncertaintyRequestError(f"--uncertainty samples needs a HiDiff model (a refiner to sample); this "
                                          f"model's network is {type(network).__name__}: use softmax, mirroring "
                                          f"or folds")
        if samples < 2:
            raise UncertaintyRequestError(f"--uncertainty-samples must be at least 2 (one sample has no spread), "
                                          f"got {samples}")
    if "mirroring" in sources and not predictor.allowed_mirroring_axes:
        raise UncertaintyRequestError("--uncertainty mirroring: this model was trained without mirroring (no "
                                      "mirror axes), so there is nothing to spread over")


def build_predictor(model_folder: str, folds, checkpoint: str, device: torch.device, step_size: float,
                    use_mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint)
    return predictor


def case_map(source: str, predictor, data: torch.Tensor, properties: dict, samples: int) -> np.ndarray:
    """The ``source`` map of one preprocessed case, on the input image's grid."""
    if source == "softmax":
        return normalised_entropy(torch.from_numpy(_probabilities(predictor, data, properties)), dim=0).numpy()
    if source == "folds":
        all_parameters = predictor.list_of_parameters
        try:
            mean = None
            for parameters in all_parameters:
                predictor.list_of_parameters = [parameters]
                p = _probabilities(predictor, data, properties)
                mean = p if mean is None else mean + p
        finally:
            predictor.list_of_parameters = all_parameters
        return normalised_entropy(torch.from_numpy(mean / len(all_parameters)), dim=0).numpy()
    network, mirroring = predictor.network, predictor.use_mirroring
    predictor.network = SpreadNetwork(network, source, predictor.label_manager.num_segmentation_heads,
                                      predictor.allowed_mirroring_axes or (), samples)
    predictor.use_mirroring = False  # the spread network makes the passes itself
    try:
        spread = predictor.predict_logits_from_preprocessed_data(data)[0]
    finally:
        predictor.network, predictor.use_mirroring = network, mirroring
    return _to_input_geometry(spread, predictor, properties)


def _read_rows(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: str, rows: List[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_uncertainty_maps(sources: Sequence[str], predictor, cases: Dict[str, List[str]], output_folder: str,
                           samples: int = DEFAULT_SAMPLES, log=print) -> List[dict]:
    """For every case ({identifier: its channel files}) and source: the map into OUT/uncertainty_<source>/ and a row
    into OUT/uncertainty.csv (rows of other cases and sources kept). The label maps nnUNetv2_predict wrote into
    ``output_folder`` give the foreground mean (the image mean where a label map is missing)."""
    pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    if cm.previous_stage_name is not None:
        raise UncertaintyRequestError("--uncertainty does not support cascade stages yet (this configuration "
                                      f"reads the predictions of {cm.previous_stage_name})")
    ending = dj["file_ending"]
    reader = pm.image_reader_writer_class()
    preprocessor = cm.preprocessor_class(verbose=False)
    csv_path = os.path.join(output_folder, CSV_NAME)
    rows = _read_rows(csv_path)
    new_rows = []
    for source in sources:
        os.makedirs(map_folder(output_folder, source), exist_ok=True)
    for case, files in cases.items():
        start = time.perf_counter()
        data, _, properties = preprocessor.run_case(files, None, pm, cm, dj)
        data = torch.from_numpy(data).to(dtype=torch.float32)
        preprocessing = time.perf_counter() - start
        segmentation_file = os.path.join(output_folder, case + ending)
        foreground = None
        if os.path.isfile(segmentation_file):
            foreground = reader.read_seg(segmentation_file)[0][0] > 0
        for source in sources:
            start = time.perf_counter()
            u = case_map(source, predictor, data, properties, samples)
            write_map(u, os.path.join(map_folder(output_folder, source), case + ending), properties, reader)
            seconds = time.perf_counter() - start + preprocessing
            row = {"case": case, "source": source, "measure": MEASURE,
                   "mean_foreground": (f"{float(u[foreground].mean()):.6f}" if foreground is not None
                                       and foreground.shape == u.shape and foreground.any() else "nan"),
                   "mean_image": f"{float(u.mean()):.6f}", "seconds": f"{seconds:.3f}"}
            new_rows.append(row)
            log(f"uncertainty {source}: {case} mean {row['mean_image']} ({seconds:.2f} s)")
    done = {(r["case"], r["source"]) for r in new_rows}
    _write_rows(csv_path, [r for r in rows if (r.get("case"), r.get("source")) not in done] + new_rows)
    return new_rows


def input_cases(folder: str, file_ending: str) -> Dict[str, List[str]]:
    """{case identifier: channel files} of an input folder, as nnU-Net's predictor groups it."""
    from nnunetv2.utilities.utils import (create_lists_from_splitted_dataset_folder,
                                          get_identifiers_from_splitted_dataset_folder)

    ids = [str(i) for i in get_identifiers_from_splitted_dataset_folder(folder, file_ending)]
    lists = create_lists_from_splitted_dataset_folder(folder, file_ending, ids, num_processes=1) if len(ids) else []
    return {str(i): files for i, files in zip(ids, lists)}
