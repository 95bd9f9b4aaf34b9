"""What installs hubd: constraints.txt pins every declared dependency to a version its
specifier allows (hypercorn to the very version pyproject pins), `make run` installs the
runtime level only, and `make help` names every target."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "constraints.txt"
MAKEFILE = (ROOT / "Makefile").read_text()
BOOTSTRAP = ROOT / "scripts" / "bootstrap_venv.py"


def declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    extras = project.get("optional-dependencies", {})
    texts = project["dependencies"] + [r for group in extras.values() for r in group]
    return [Requirement(text) for text in texts]


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"constraints.txt:{number}: not `name==version`: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt:{number}: {name} pinned twice"
        found[name] = match[2]
    return found


def test_every_declared_dependency_is_pinned_to_a_version_it_allows() -> None:
    pinned = pins()
    missing = [str(r) for r in declared() if canonicalize_name(r.name) not in pinned]
    assert missing == [], "add to constraints.txt (`make constraints`)"
    refused = [
        f"{r} but constraints.txt has {pinned[canonicalize_name(r.name)]}"
        for r in declared()
        if not r.specifier.contains(Version(pinned[canonicalize_name(r.name)]), prereleases=True)
    ]
    assert refused == []


def test_hypercorn_pin_is_the_one_pyproject_names() -> None:
    # hubd/web/seam/ relies on Hypercorn's internals: one version, the same in both files.
    (hypercorn,) = [r for r in declared() if canonicalize_name(r.name) == "hypercorn"]
    (spec,) = hypercorn.specifier
    assert spec.operator == "=="
    assert pins()["hypercorn"] == spec.version


def test_constraints_do_not_pin_hubd_itself() -> None:
    assert "hubd" not in pins()


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    # The table form (`{ text = ... }`) makes setuptools >= 77 warn on every install.
    assert isinstance(PYPROJECT["project"]["license"], str)
    (setuptools,) = [
        Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")
    ]
    assert not setuptools.specifier.contains("76.1.0")
    assert setuptools.specifier.contains("77.0.3")


def targets() -> set[str]:
    """The targets a person types: the .PHONY ones."""
    phony = re.search(r"^\.PHONY:(.*)$", MAKEFILE, re.MULTILINE)
    assert phony
    return set(phony[1].split())


def test_make_help_names_every_target() -> None:
    rules = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.MULTILINE))
    assert rules == targets(), "a rule is missing from .PHONY, or .PHONY names no rule"
    helped = set(re.findall(r'^\t@echo "make ([a-z-]+)', MAKEFILE, re.MULTILINE))
    assert helped == targets()


def make_dry_run(target: str, tmp_path: Path) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    command = [make, "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_make_run_installs_the_runtime_level_only(tmp_path: Path) -> None:
    out = make_dry_run("run", tmp_path)
    assert "install runtime" in out
    assert "install test" not in out
    assert "hubd serve" in out


@pytest.mark.parametrize("target", ["test", "lint", "unit"])
def test_test_targets_install_both_levels(tmp_path: Path, target: str) -> None:
    out = make_dry_run(target, tmp_path)
    assert out.index("install runtime") < out.index("install test")


def load_bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bootstrap_venv", BOOTSTRAP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pip_commands(level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands `bootstrap_venv.py install <level>` runs on a venv that has pip."""
    bootstrap = load_bootstrap()
    ran: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(bootstrap, "has_pip", lambda python: True)
    monkeypatch.setattr(bootstrap.subprocess, "run", run)
    bootstrap.install(level, tmp_path / "venv")
    return ran


def test_runtime_level_installs_hubd_alone_with_the_constraints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (command,) = pip_commands("runtime", tmp_path, monkeypatch)
    assert command[-2:] == ["--editable", str(ROOT)]  # no extras: no test tools
    assert command[command.index("-c") + 1] == str(CONSTRAINTS)


def test_test_level_installs_the_test_extra_with_the_constraints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (command,) = pip_commands("test", tmp_path, monkeypatch)
    assert command[command.index("-c") + 1] == str(CONSTRAINTS)
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert command[-len(test_extra) :] == test_extra
    assert "--editable" not in command  # hubd is not built again
