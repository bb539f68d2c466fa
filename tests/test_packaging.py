"""The built wheel installs into a fresh virtual environment and runs from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from nca_cli.engine.native import SOURCES

REPO = Path(__file__).resolve().parent.parent


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("nca_cli-*.whl")
    return wheel


def source_packages() -> set[str]:
    """Every package of the source tree, under the names the wheel must install."""
    mapped = {"conf": "nca_cli.conf", "tasks": "nca_cli.tasks", "sweeps": "nca_cli.sweeps"}
    names = set(mapped.values())
    for init in (REPO / "nca_cli").rglob("__init__.py"):
        parts = init.parent.relative_to(REPO).parts
        if "hydra_plugin" not in parts:
            names.add(".".join(parts))
    return names


def test_wheel_holds_every_subpackage(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        packages = {
            name.removesuffix("/__init__.py").replace("/", ".")
            for name in zf.namelist()
            if name.endswith("/__init__.py")
        }
    missing = source_packages() - packages
    assert not missing, f"the wheel omits {sorted(missing)}: list them in pyproject.toml"
    assert "hydra_plugins.nca_sweeper" in packages
    assert not {p for p in packages if p.split(".")[0] not in ("nca_cli", "hydra_plugins")}


def fresh_venv(path: Path) -> tuple[Path, Path]:
    subprocess.run([sys._base_executable, "-m", "venv", str(path)], check=True)  # type: ignore[attr-defined]
    python = path / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    return python, site


def check_installed(venv: Path, site: Path, workdir: Path) -> None:
    # Only the nca_cli namespace is installed: no generic top-level `tasks` or `conf`.
    assert (site / "nca_cli" / "conf" / "config.yaml").is_file()
    assert list((site / "nca_cli" / "tasks" / "assets" / "emoji").glob("lizard.png"))
    # nca reproduce reads its reproductions and runs the papers' code from the package
    assert (site / "nca_cli" / "conf" / "reproduce" / "mnist-notebook.yaml").is_file()
    assert (site / "nca_cli" / "reproduction" / "original" / "mnist_notebook.py").is_file()
    for source in SOURCES:  # the native operators compile from the installed package
        assert (site / "nca_cli" / "engine" / "native" / source.name).is_file()
    # nca export copies its C and web templates; the zoo ships its checkpoints
    for template in ("c/nca.c", "c/nca.h", "c/example.c", "web/index.html", "web/nca.js"):
        assert (site / "nca_cli" / "export" / template).is_file(), template
    assert (site / "nca_cli" / "zoo" / "zoo.json").is_file()
    assert (site / "nca_cli" / "zoo" / "models" / "regenerating-lizard.ckpt").is_file()
    for generic in ("tasks", "conf", "sweeps", "tests"):
        assert not (site / generic).exists(), generic
    env = {**os.environ, "NCA_OUTPUT_DIR": "outputs"}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import nca_cli; print(nca_cli.__file__)"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert where.stdout.startswith(str(site)), where.stdout
    helped = subprocess.run(
        [str(venv / "bin" / "nca"), "--help"], cwd=workdir, capture_output=True, text=True
    )
    assert helped.returncode == 0 and "train" in helped.stdout
    listed = subprocess.run(
        [str(venv / "bin" / "nca"), "zoo"], cwd=workdir, capture_output=True, text=True
    )
    assert listed.returncode == 0 and "zoo:regenerating-lizard" in listed.stdout, listed.stderr
    trained = subprocess.run(
        [str(venv / "bin" / "nca"), "train", "trainer=smoke", "logger=none"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    assert list((workdir / "outputs" / "train").glob("*/last.ckpt"))


def test_wheel_in_fresh_venv_trains_from_any_directory(tmp_path: Path) -> None:
    """Dependencies come from this environment (a .pth file) so the test stays fast; the
    package itself is the wheel, installed without the source tree on the path."""
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    python, site = fresh_venv(venv)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    check_installed(venv, site, workdir)


@pytest.mark.slow
def test_wheel_with_all_dependencies_in_fresh_venv(tmp_path: Path) -> None:
    """The same, resolving every dependency from the package index (minutes)."""
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    python, site = fresh_venv(venv)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "torch==2.14.1",
            "torchvision==0.29.1",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    check_installed(venv, site, workdir)
