"""The built-in presets live in the top-level presets/ folder and are found from a checkout and a wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

from dreamcli.config import builtin_presets_dir, load_preset, preset_names

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "dreamcli"


def test_every_preset_file_in_the_top_level_folder_is_found():
    files = sorted(p.stem for p in (ROOT / "presets").glob("*.toml"))
    assert len(files) >= 6 and "demo" in files
    assert builtin_presets_dir() == ROOT / "presets"
    assert set(files) <= set(preset_names())
    for name in files:
        load_preset(name)  # readable, and only known keys
    assert not (SRC / "presets").exists()  # an old copy there would shadow the real ones in a wheel


def test_the_wheel_maps_the_presets_and_lists_every_subpackage():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["dreamcli.presets"] == "presets"
    assert setuptools["package-data"]["dreamcli.presets"] == ["*.toml"]
    # The package list is written out (a mapped folder rules out discovery): a new subpackage must be added.
    found = {"dreamcli." + ".".join(p.parent.relative_to(SRC).parts) for p in SRC.rglob("__init__.py")}
    found = {name.rstrip(".") for name in found} | {"dreamcli.presets"}
    assert set(setuptools["packages"]) == found


def test_a_wheel_layout_finds_the_presets_inside_the_package(tmp_path):
    """Installed from a wheel, the presets are dreamcli/presets/ next to config.py."""
    package = tmp_path / "dreamcli"
    (package / "presets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module in ("config.py", "errors.py"):
        (package / module).write_text((SRC / module).read_text())
    (package / "presets" / "mine.toml").write_text('steps = 3\n')
    code = "from dreamcli.config import preset_names, load_preset; print(preset_names(), load_preset('mine'))"
    env = {"PYTHONPATH": str(tmp_path), "DREAMCLI_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['mine'] {'steps': 3}"
