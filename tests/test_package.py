"""tfkd as a user installs it: a wheel built from the checkout (tfkd and nothing else at its top
level), installed into a fresh folder far from it; its `tfkd` command and each subcommand's
--help run from there, and a smoke sweep with `tfkd tune` from yet another folder leaves nothing
of tfkd's in its (private) temp folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import assert_ok, clean_env, sqlite_uri

pytestmark = pytest.mark.slow
CHECKOUT = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_package_of_the_checkout():
    listed = set(
        tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(CHECKOUT).parts)
        for init in (CHECKOUT / "tfkd").rglob("__init__.py")
    }
    assert found <= listed, f"pyproject.toml's packages lack {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout."""
    wheels = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(CHECKOUT), "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), "-q"],
        cwd=wheels,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(built)
    (found,) = wheels.glob("tfkd-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel, installed (without its dependencies) into a fresh folder."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)]
        + ["-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(done)
    return target


def run_installed(site: Path, cwd: Path, *args: str, tmpdir: Path | None = None):
    """`python ARGS...` with the installed package; `tfkd ...` runs its console script."""
    env = clean_env(PYTHONPATH=str(site), **({"TMPDIR": str(tmpdir)} if tmpdir else {}))
    script = [str(site / "bin" / "tfkd")] if args[0] == "tfkd" else [sys.executable, args[0]]
    return subprocess.run(
        [*script, *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_holds_tfkd_only(wheel):
    """No generic top-level package (`analysis` was one): tfkd and its metadata."""
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    version = wheel.name.split("-")[1]
    assert top == {"tfkd", f"tfkd-{version}.dist-info"}


def test_the_tfkd_command_and_every_subcommands_help_run_from_the_wheel(installed, wheel, tmp_path):
    listed = run_installed(installed, tmp_path, "tfkd", "--help")
    assert_ok(listed)
    commands = ["tune", "best-configs", "reproduce", "report", "paper-suite", "replay"]
    for name in commands:
        assert f"\n  {name} " in listed.stdout, listed.stdout
        shown = run_installed(installed, tmp_path, "tfkd", name, "--help")
        assert_ok(shown)
        assert shown.stdout.startswith(f"usage: tfkd {name} "), shown.stdout[:200]
    version = run_installed(installed, tmp_path, "tfkd", "--version")
    assert version.stdout.strip() == f"tfkd {wheel.name.split('-')[1]}"  # the wheel's metadata


def test_the_installed_package_ships_its_search_spaces_and_paper_table(installed, tmp_path):
    script = (
        "import tfkd, tfkd.analysis.paper as p; from tfkd.sweep import search_space as s; "
        "print(tfkd.__file__); print(s.SEARCH_SPACES_DIR); print(len(p.load()))"
    )
    done = run_installed(installed, tmp_path, "-c", script)
    assert_ok(done)
    module, spaces, rows = done.stdout.split()
    assert Path(module).is_relative_to(installed), "tfkd was imported from the checkout"
    assert Path(spaces).is_relative_to(installed)
    assert sorted(p.name for p in Path(spaces).glob("*.yaml")) == sorted(
        p.name for p in (CHECKOUT / "search_spaces").glob("*.yaml")
    )
    assert int(rows) > 0


def test_tfkd_tune_runs_a_smoke_sweep_from_any_folder_and_leaves_no_temp_files(
    installed, tmp_path, request
):
    private_tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: Ray's sockets go there
    request.addfinalizer(lambda: shutil.rmtree(private_tmp, ignore_errors=True))
    uri = sqlite_uri(tmp_path)
    done = run_installed(
        installed,
        tmp_path,
        *("tfkd", "tune", "--mode", "lsr", "--dataset", "digits", "--model", "resnet8"),
        *("--fixed", "--epochs", "2", "--name", "smoke", "--mlflow-uri", uri),
        tmpdir=private_tmp,
    )
    assert_ok(done)
    assert (tmp_path / "ray_results" / "smoke" / "best_config.yaml").is_file()
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    statuses = sorted(r.info.status for r in client.search_runs([experiment.experiment_id]))
    assert statuses == ["FINISHED", "FINISHED"]  # the sweep's run and its trial's
    found = (p.relative_to(private_tmp) for p in private_tmp.rglob("*tfkd*"))
    left = sorted(str(p) for p in found if p.parts[0] != "ray")  # ray/: Ray's session folder
    assert left == [], f"tfkd left temp files: {left}"
    # --resume with other data or search flags is refused before anything starts (and `python -m
    # tfkd` with flags first is still the tune command)
    resumed = run_installed(
        installed,
        tmp_path,
        *("-m", "tfkd", "--mode", "lsr", "--dataset", "digits", "--model", "resnet8"),
        *("--fixed", "--epochs", "3", "--set", "val_fraction=0.2", "--name", "smoke"),
        *("--mlflow-uri", uri, "--resume"),
    )
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    (line,) = resumed.stderr.strip().splitlines()
    assert "--epochs was 2, now 3" in line and "--set val_fraction" in line, line
