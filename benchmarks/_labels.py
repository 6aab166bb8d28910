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
