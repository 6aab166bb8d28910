#!/usr/bin/env python3
"""Writes the console scripts of a pyproject.toml ([project.scripts]) into a folder, for a machine on which the
package is importable from a working tree (PYTHONPATH) but not pip-installed: scripts/maintainer/device_evidence.sh
on the project's GPU machine.

    python3 scripts/maintainer/console_scripts.py pyproject.toml /tmp/site/bin

Each script calls its function under ``if __name__ == "__main__":``, as pip's own console scripts do: nnU-Net and
this package start worker processes with the spawn method, which imports the main module again in every worker
(without the guard every worker would run the command again and stop with multiprocessing's "bootstrapping
phase" error).
"""
import pathlib
import sys
import tomllib

TEMPLATE = """#!{python}
import sys
from {module} import {function}

if __name__ == "__main__":
    sys.exit({function}())
"""


def write_console_scripts(pyproject: str, folder: str, python: str = sys.executable) -> list:
    scripts = tomllib.loads(pathlib.Path(pyproject).read_text())["project"]["scripts"]
    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, target in scripts.items():
        module, function = target.split(":")
        path = out / name
        path.write_text(TEMPLATE.format(python=python, module=module, function=function))
        path.chmod(0o755)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: console_scripts.py PYPROJECT_TOML FOLDER")
    write_console_scripts(sys.argv[1], sys.argv[2])
