"""Check a prediction input folder against a trained model before nnU-Net's predictor starts.

nnU-Net's predictor reads the input images in background workers; one unreadable file kills them with a
"Background workers died ... your RAM was full" traceback and nothing is predicted, not even the good cases.
``check_inputs`` finds the bad files first, the way nnU-Net will see them: it groups the files into cases with
nnU-Net's own functions (``nnunetv2.utilities.utils``), takes the file ending and the channels from the model's
``dataset.json`` and reads every file with the image reader of the model's ``plans.json``
(``PlansManager.image_reader_writer_class``, as nnU-Net's preprocessor does). Each problem is a file and a one-line
reason; a case with any problem is bad, the other cases are good.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np


@dataclass
class InputCheck:
    """The outcome of ``check_inputs``: ``problems`` and ``warnings`` are (path, one-line reason) pairs; warnings are
    files nnU-Net ignores (another file ending). ``good_cases`` maps each good case identifier to its files."""
    folder: str
    file_ending: str
    problems: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[Tuple[str, str]] = field(default_factory=list)
    good_cases: dict = field(default_factory=dict)
    bad_cases: List[str] = field(default_factory=list)

    @property
    def good_case_ids(self) -> List[str]:
        return list(self.good_cases)


class MissingModel(Exception):
    """The trained model folder nnUNetv2_predict would load has no dataset.json or plans.json."""


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """The trained model folder nnUNetv2_predict uses for these arguments (raises if the dataset is unknown)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(maybe_convert_to_dataset_name(dataset), trainer, plans, configuration)


def load_model_files(folder: str):
    """(dataset_json, plans) of a trained model folder, or None where either file is missing or unreadable."""
    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            dataset_json = json.load(f)
        with open(os.path.join(folder, "plans.json")) as f:
            plans = json.load(f)
    except (OSError, ValueError):
        return None
    return dataset_json, plans


def one_line(error: BaseException) -> str:
    """A reader's exception as one line: its last non-empty message line (SimpleITK puts the reason there)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[-1]
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    return line


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _read(reader, files):
    """reader.read_images(files) with its prints (nnU-Net's readers print their complaints) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return reader.read_images(files)


def _group_into_cases(folder: str, file_ending: str):
    """{case identifier: [files]} exactly as nnU-Net's predictor groups the folder, and the files with the ending
    that belong to no case (badly named, so nnU-Net cannot use them)."""
    from nnunetv2.utilities import utils

    identifiers = [str(i) for i in utils.get_identifiers_from_splitted_dataset_folder(folder, file_ending)]
    names = sorted(f for f in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, f)) and f.endswith(file_ending))
    create_paths = getattr(utils, "create_paths_fn", None)  # what create_lists_... maps over its case ids
    if create_paths is not None:
        lists = [create_paths(folder, names, file_ending, i) for i in identifiers]
    elif identifiers:
        lists = utils.create_lists_from_splitted_dataset_folder(folder, file_ending, identifiers, num_processes=1)
    else:
        lists = []
    cases = {i: files for i, files in zip(identifiers, lists) if files}
    used = {os.path.basename(f) for files in cases.values() for f in files}
    orphans = [os.path.join(folder, n) for n in names if n not in used]
    return cases, orphans


def check_inputs(input_folder: str, dataset_json: dict, plans: dict, reader_class=None) -> InputCheck:
    """Check every file of ``input_folder`` for a model with this dataset.json and plans.json (see the module
    docstring). ``reader_class``: the image reader (default: the plans' ``image_reader_writer``)."""
    file_ending = dataset_json["file_ending"]
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    n_channels = len(channels)
    check = InputCheck(input_folder, file_ending)
    if not os.path.isdir(input_folder):
        check.problems.append((input_folder, "the input folder does not exist" if not os.path.exists(input_folder)
                               else "not a folder"))
        return check
    if reader_class is None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        reader_class = PlansManager(plans).image_reader_writer_class
    reader = reader_class()
    reader_name = reader_class.__name__

    for name in sorted(os.listdir(input_folder)):
        path = os.path.join(input_folder, name)
        if os.path.isfile(path) and not name.endswith(file_ending) and not name.startswith("."):
            check.warnings.append((path, f"ignored: it does not end with {file_ending}, the model's file ending"))
    cases, orphans = _group_into_cases(input_folder, file_ending)
    for path in orphans:
        check.problems.append((path, f"not named CASE_XXXX{file_ending} (the case identifier, then a 4-digit "
                                     f"channel index), so nnU-Net cannot use it"))
    if not cases and not orphans:
        check.problems.append((input_folder, f"no input image: no file ends with {file_ending}, the file ending "
                                             f"of the model's dataset.json"))
        return check

    expected = ", ".join(f"_{c:04d}" for c in range(n_channels))
    channel_re = re.compile(r"_(\d{4})" + re.escape(file_ending) + r"$")
    for case, files in cases.items():
        problems = []
        indices = [int(channel_re.search(os.path.basename(f)).group(1)) for f in files]
        for f, c in zip(files, indices):
            if c >= n_channels:
                problems.append((f, f"channel {c:04d}, but the model takes {n_channels} channel(s) per case "
                                    f"({expected})"))
        for c in range(n_channels):
            if c not in indices:
                problems.append((os.path.join(input_folder, f"{case}_{c:04d}{file_ending}"),
                                 f"missing: the model takes {n_channels} channel file(s) per case ({expected})"))
        shapes, spacings, counts = {}, {}, {}
        for f in files:
            try:
                data, props = _read(reader, [f])
            except Exception as e:  # noqa: BLE001 - any reader failure is this file's problem
                problems.append((f, f"cannot be read by {reader_name}: {one_line(e)}"))
                continue
            counts[f] = int(data.shape[0])
            shapes[f] = tuple(int(s) for s in data.shape[1:])
            spacings[f] = props.get("spacing")
        if len(shapes) == len(files) == n_channels and sum(counts.values()) != n_channels:
            for f, count in counts.items():
                if count != 1:
                    problems.append((f, f"holds {count} channels (a 4D image), but the model takes one channel "
                                        f"per file ({expected})"))
        if len(shapes) > 1:
            first = next(iter(shapes))
            for f, shape in shapes.items():
                if shape != shapes[first]:
                    problems.append((f, f"shape {shape} differs from {shapes[first]} of {os.path.basename(first)}, "
                                        f"another channel of case {case}"))
                elif (spacings[f] is not None and spacings[first] is not None and
                      not np.allclose(spacings[f], spacings[first], rtol=1e-3)):
                    problems.append((f, f"spacing {_numbers(spacings[f])} differs from {_numbers(spacings[first])} of "
                                        f"{os.path.basename(first)}, another channel of case {case}"))
            if not problems:  # the reader's own checks of a whole case (origin, direction, ...)
                try:
                    _read(reader, files)
                except Exception as e:  # noqa: BLE001
                    reason = one_line(e) if str(e).strip() else "different spacing, origin or direction"
                    problems.append((files[0], f"the channel files of case {case} do not fit together "
                                               f"({reader_name}: {reason})"))
        if problems:
            check.problems.extend(problems)
            check.bad_cases.append(case)
        else:
            check.good_cases[case] = files
    return check


def check_model_inputs(input_folder: str, dataset: str, trainer: str, plans_identifier: str,
                       configuration: str) -> Optional[InputCheck]:
    """``check_inputs`` for the model nnUNetv2_predict would load. None where nnU-Net cannot even name that model's
    folder (unknown dataset, nnUNet_results unset) or cannot use its files: nnU-Net then says what is wrong.
    Raises MissingModel, with a one-line message, where the folder lacks dataset.json or plans.json."""
    try:
        folder = model_folder(dataset, trainer, plans_identifier, configuration)
    except Exception:  # noqa: BLE001 - unknown dataset, nnUNet_results unset: nnU-Net's own error follows
        return None
    missing = [name for name in ("dataset.json", "plans.json") if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise MissingModel(f"no trained model in {folder} (no {' or '.join(missing)} there): check -d, -c, -p and "
                           f"-tr, and nnUNet_results")
    files = load_model_files(folder)
    if files is None:
        return None
    dataset_json, plans = files
    if "file_ending" not in dataset_json:
        return None
    try:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        reader_class = PlansManager(plans).image_reader_writer_class
    except Exception:  # noqa: BLE001 - files nnU-Net itself cannot use: leave that error to nnU-Net
        return None
    return check_inputs(input_folder, dataset_json, plans, reader_class)
