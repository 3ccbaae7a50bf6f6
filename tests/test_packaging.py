"""Installing the project prints no warnings of its own: the packaging metadata is what setuptools expects today
(an SPDX `license` expression and `license-files`, PEP 639), so a newcomer's `make quickstart` starts clean.

Builds the wheel exactly as `pip install` does (setuptools through pip, verbose, so the build backend's warnings
show), from a copy of the files the build reads, with the venv's setuptools (no download at test time).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_building_the_package_warns_about_nothing_and_ships_the_license(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("operator", "trainer_image"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # Byte-compiling disabled by this environment would make setuptools warn about that, not about the project.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-v", "-w", str(tmp_path / "dist"), str(tmp_path)],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    output = build.stdout + build.stderr
    assert build.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if re.search(r"warn|deprecat|!!", line, re.IGNORECASE)]
    assert warnings == [], "\n".join(warnings)
    [wheel] = (tmp_path / "dist").glob("finetune_operator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    # Every package of the source tree is in the wheel (pyproject.toml lists them, and the Dockerfile's dependency
    # layer makes a stand-in for each): a subpackage left out installs fine and fails at import in the image.
    packages = {str(init.parent.relative_to(tmp_path / folder)).replace("/", ".")
                for folder in ("operator", "trainer_image") for init in (tmp_path / folder).rglob("__init__.py")}
    shipped = {n.rpartition("/")[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages <= shipped, f"not in the wheel: {sorted(packages - shipped)}"
    stand_ins = re.search(r"RUN mkdir -p (.*?)\n\n", (REPO / "Dockerfile").read_text(), re.S).group(1)
    missing = [p for p in packages if f"{p.replace('.', '/')}/__init__.py" not in stand_ins]
    assert missing == [], f"the Dockerfile's dependency layer has no stand-in for {missing}"
