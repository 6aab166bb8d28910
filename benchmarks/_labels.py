"""Reading label images for the benchmark scripts: any format SimpleITK reads, one clear error per bad file."""
import sys

import numpy as np


def read_label_image(path: str, tool: str) -> np.ndarray:
    """The label image at ``path`` as an integer array (RGB(A) PNG masks: their first channel). A file that cannot
    be read ends the program with ``tool: path: ...``."""
    import SimpleITK as sitk

    try:
        image = np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(path)))
    except RuntimeError as e:
        sys.exit(f"{tool}: {path}: cannot read it as an image ({str(e).strip().splitlines()[-1]})")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and path.endswith(".png"):
        image = image[..., 0]
    return image.astype(np.int64)


def read_probabilities(path: str, tool: str, shape) -> np.ndarray:
    """nnU-Net's ``--save_probabilities`` file at ``path`` (key "probabilities", classes first) as (classes, *shape);
    nnU-Net's singleton axis of 2d images is dropped. An unreadable file or one of another shape ends the program
    with ``tool: path: ...``."""
    try:
        prob = np.load(path)["probabilities"]
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"{tool}: {path}: not an nnU-Net probabilities file ({type(e).__name__}: {e})")
    if prob.ndim < 1 or prob[0].size != int(np.prod(shape)) or \
            tuple(d for d in prob.shape[1:] if d != 1) != tuple(d for d in shape if d != 1):
        sys.exit(f"{tool}: {path}: probabilities of shape {prob.shape} do not match the label's {tuple(shape)}")
    return prob.reshape((prob.shape[0],) + tuple(shape))
