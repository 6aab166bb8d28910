"""The package works on its own, without a clone: the trainer folder nnU-Net searches ships inside it
(nnunetv2_hidiff/nnunet_trainers/, printed by ``nnunetv2_hidiff_trainers``), and a wheel built from the sdist,
installed into a fresh virtual environment, finds every trainer through nnU-Net's own lookup.

The slow test builds the sdist of this working tree, builds the wheel from that sdist (so the sdist must hold
everything the build needs), installs it with --no-deps into a new venv outside the repository whose only other
packages are this environment's site-packages (a .pth line: the editable install's finder is not activated by it),
and runs everything from an empty folder. Nothing is skipped: a missing file, script or class fails.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import nnunetv2_hidiff

REPO = Path(__file__).resolve().parents[1]
NAMES = ("nnUNetTrainerHiDiff", "nnUNetTrainerHiDiff_smoke", "nnUNetTrainerBaseline_5epochs")
KERNEL_SOURCE = "nnunetv2_hidiff/networks/xnor_kernels.c"
TRAINERS_MODULE = "nnunetv2_hidiff/nnunet_trainers/hidiff_trainers.py"
TIMEOUT = 300


def _scripts() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def _product_and_experiment_trainers() -> dict:
    """{name: class} of every public nnUNetTrainer subclass defined in nnunetv2_hidiff.training.trainer/variants
    and in any module of nnunetv2_hidiff.experiments (not only what their __init__ re-exports)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_hidiff.experiments as experiments

    modules = [importlib.import_module("nnunetv2_hidiff.training.trainer"),
               importlib.import_module("nnunetv2_hidiff.training.variants")]
    modules += [importlib.import_module(f"nnunetv2_hidiff.experiments.{m.name}")
                for m in pkgutil.iter_modules(experiments.__path__)]
    return {name: obj for module in modules for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
            and not name.startswith("_")}


def test_trainers_folder_of_this_install_is_what_nnunet_searches(monkeypatch, tmp_path):
    exe = Path(sys.executable).parent / "nnunetv2_hidiff_trainers"
    assert exe.is_file(), f"{exe} is missing: re-install the package (pip install -e '.[test]')"
    out = _run([exe], cwd=tmp_path, env=_env()).stdout
    folder = Path(out.rstrip("\n"))
    assert out == f"{folder}\n" and folder.is_absolute(), f"expected one absolute path on stdout, got {out!r}"
    assert folder == Path(nnunetv2_hidiff.__file__).resolve().parent / "nnunet_trainers"
    assert (folder / "hidiff_trainers.py").is_file()
    help_text = _run([exe, "--help"], cwd=tmp_path, env=_env()).stdout
    assert "export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers)" in help_text

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunetv2_hidiff.nnunet_trainers.hidiff_trainers as reexport
    trainers = _product_and_experiment_trainers()
    missing = sorted(set(trainers) - set(vars(reexport)))
    assert not missing, f"{TRAINERS_MODULE} does not re-export {missing}"
    monkeypatch.setenv("nnUNet_extTrainer", str(folder))
    experiment = sorted(n for n, c in trainers.items() if c.__module__.startswith("nnunetv2_hidiff.experiments."))
    assert experiment, "no experiment trainer found in nnunetv2_hidiff.experiments"
    for name in NAMES + (experiment[0],):
        assert recursive_find_trainer_class_by_name(name) is trainers[name], name
    assert "hidiff_trainers" not in sys.modules  # nnU-Net unloaded the folder's module after each search


_PROBE = r"""
import importlib, json, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
out = {"trainers": {}, "scripts": {}}
for name in sys.argv[1].split(","):
    cls = recursive_find_trainer_class_by_name(name)
    out["trainers"][name] = [cls.__name__, sys.modules[cls.__module__].__file__]
for target in sys.argv[2].split(","):
    module, function = target.split(":")
    m = importlib.import_module(module)
    out["scripts"][target] = [m.__file__, callable(getattr(m, function))]
import nnunetv2_hidiff.networks
from nnunetv2_hidiff.networks import packed
out["kernel_loaded"] = packed.library() is not None
out["kernel_extension"] = str(packed._built_extension())
out["package_files"] = sorted({getattr(m, "__file__", None) or "" for n, m in list(sys.modules.items())
                               if n == "nnunetv2_hidiff" or n.startswith("nnunetv2_hidiff.")})
out["editable_modules"] = [n for n in sys.modules if "editable" in n]
out["sys_path"] = sys.path
print("PROBE " + json.dumps(out))
"""


def test_wheel_from_sdist_works_without_a_clone(tmp_path):
    scripts = _scripts()
    dist, src, venv, elsewhere = (tmp_path / d for d in ("dist", "src", "venv", "elsewhere"))
    for d in (dist, src, elsewhere):
        d.mkdir()

    # 1. the sdist of this working tree holds what the build needs (and neither tests/ nor built objects)
    out = _run([sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"],
               cwd=REPO, env=_env()).stdout
    sdist = dist / out.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        top = sdist.name[:-len(".tar.gz")]
        members = {n[len(top) + 1:] for n in tar.getnames() if n.startswith(top + "/")}
        tar.extractall(src, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for needed in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", KERNEL_SOURCE,
                   TRAINERS_MODULE, "nnunetv2_hidiff/nnunet_trainers/__init__.py",
                   "nnunetv2_hidiff/cli/trainers_dir.py"):
        assert needed in members, f"the sdist {sdist.name} lacks {needed}"
    unwanted = sorted(m for m in members if m.endswith((".so", ".pyc")) or m.startswith("tests/"))
    assert not unwanted, f"the sdist carries {unwanted[:5]}"

    # 2. the wheel, built from the unpacked sdist with this environment's setuptools and C compiler
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist,
          src / top], cwd=tmp_path, env=_env())
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert KERNEL_SOURCE in names and TRAINERS_MODULE in names
    extensions = [n for n in names if n.startswith("nnunetv2_hidiff/_xnor") and n.endswith(".so")]
    compiler = shutil.which(os.environ.get("CC", "cc")) is not None
    if compiler:
        assert extensions, "a C compiler is here but the wheel has no compiled nnunetv2_hidiff/_xnor*.so"
    assert f"Version: {nnunetv2_hidiff.__version__}\n" in metadata
    for line in ("License-Expression: Apache-2.0", "Description-Content-Type: text/markdown",
                 "Classifier: Topic :: Scientific/Engineering :: Medical Science Apps.",
                 "Project-URL: nnU-Net, https://github.com/MIC-DKFZ/nnUNet"):
        assert line in metadata, f"METADATA lacks {line!r}"
    for name, target in scripts.items():
        assert f"{name} = {target}" in entry_points, f"the wheel lacks the console script {name}"

    # 3. a fresh venv outside the repository; its only other packages are this environment's site-packages
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=_env())
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=elsewhere, env=_env()).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_deps_of_the_test_environment.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    editable = sorted(Path(sysconfig.get_path("purelib")).glob("__editable__*nnunetv2_hidiff*"))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheels[0]],
         cwd=elsewhere, env=_env())
    assert sorted(Path(sysconfig.get_path("purelib")).glob("__editable__*nnunetv2_hidiff*")) == editable, \
        "installing into the fresh venv touched this environment's install"

    # 4. run from an empty folder: the console scripts, the trainer folder, nnU-Net's class lookup
    for name in scripts:
        script = venv / "bin" / name
        assert script.is_file(), f"{script} is missing"
        assert script.read_text().splitlines()[0] == f"#!{python}", f"{script} does not run the fresh venv's python"
    out = _run([venv / "bin" / "nnunetv2_hidiff_trainers"], cwd=elsewhere, env=_env()).stdout
    folder = Path(out.rstrip("\n"))
    assert out == f"{folder}\n" and folder == site / "nnunetv2_hidiff" / "nnunet_trainers", out
    kernel_cache = tmp_path / "kernel_cache"
    proc = _run([python, "-c", _PROBE, ",".join(NAMES), ",".join(scripts.values())], cwd=elsewhere,
                env=_env(nnUNet_extTrainer=str(folder), nnUNet_HiDiff_kernel_cache=str(kernel_cache)))
    probe = json.loads(next(line[6:] for line in proc.stdout.splitlines() if line.startswith("PROBE ")))
    inside = str(site) + os.sep
    for name, (found, file) in probe["trainers"].items():
        assert found == name and file.startswith(inside), (name, file)
    for target, (file, ok) in probe["scripts"].items():
        assert ok and file.startswith(inside), (target, file)
    outside = [f for f in probe["package_files"] if not f.startswith(inside)]
    assert not outside, f"nnunetv2_hidiff modules loaded from outside the fresh venv: {outside[:5]}"
    assert not probe["editable_modules"], probe["editable_modules"]
    assert not any(p in ("", ".") or p.startswith(str(REPO / "nnunetv2_hidiff")) for p in probe["sys_path"][1:])
    if compiler:  # without one the wheel still carries the source (above) and the refiner its simulated path
        assert probe["kernel_loaded"], "the packed XNOR kernels could not be loaded from the wheel"
    if extensions:
        assert probe["kernel_extension"].startswith(inside), probe["kernel_extension"]
        assert not kernel_cache.exists(), "the wheel's compiled kernels were not used (packed.py compiled its own)"
