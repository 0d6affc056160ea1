"""Where runs go: a tracking location that cannot take them is refused before anything starts,
a refused command leaves no database behind, and a start that fails before its first trial
leaves nothing that blocks the retry. Each runs tune_main.py as a user would."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import assert_ok, assert_one_line, clean_env, sqlite_uri, tune_main

ONE_EPOCH = "--mode baseline --dataset digits --model resnet8 --fixed --epochs 2"


def created_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_an_unwritable_tracking_location_is_one_line_exit_2_and_creates_nothing(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")  # as root, only a file stops every write
    before = created_files(tmp_path)
    done = tune_main(
        ONE_EPOCH,
        mlflow_uri=f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}",
        name="ro",
        storage=tmp_path / "ray_results",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line(done.stderr, "cannot write", "a-file", "--mlflow-uri")
    assert created_files(tmp_path) == before  # no results folder, no lock, no saved flags


def test_a_refused_command_creates_no_database_in_the_working_folder(tmp_path):
    done = tune_main(  # the default store (./mlflow.db) holds no teacher: refused
        "--mode kd --dataset digits --model resnet8 --teacher resnet8 --fixed --epochs 2",
        cwd=tmp_path,
        env=clean_env(HOME=str(tmp_path / "home")),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line(done.stderr, "no teacher")
    assert created_files(tmp_path) == []  # neither mlflow.db nor mlflow.db.lock


@pytest.mark.slow
def test_a_start_that_fails_before_its_first_trial_is_one_line_and_blocks_no_retry(tmp_path):
    """The experiment a sweep names was deleted in MLflow: creating the sweep's run fails once
    Ray has started, after the lock and the saved flags. One line naming the log with the
    traceback; then the same --name in another experiment runs, untroubled, and says nothing of
    MLflow's or Ray's own."""
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    failed = tune_main(
        ONE_EPOCH, mlflow_uri=uri, experiment="gone", name="again", cwd=tmp_path, env=env
    )
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("tune_main.py")]
    assert "Traceback" not in failed.stderr and "the traceback is in" in line
    (log,) = (tmp_path / "cache" / "tfkd" / "errors").iterdir()
    assert str(log) in line and "Traceback" in log.read_text()

    done = tune_main(ONE_EPOCH, mlflow_uri=uri, name="again", cwd=tmp_path, env=env)
    assert_ok(done)
    said = done.stdout + done.stderr
    assert "View run" not in said and "View experiment" not in said  # MLflow's own links
    assert "raylet" not in said.lower(), said[-3000:]
    assert "[tfkd] compare the trials in MLflow" in done.stdout
    assert not list(tmp_path.glob("*.lock"))  # no lock file beside the database


@contextmanager
def read_only_mount(folder: Path) -> Iterator[Path]:
    """A read-only tmpfs at `folder` (skips where this process may not mount one)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root with CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_store_on_a_read_only_mount_is_refused_before_anything_is_created(tmp_path):
    from tfkd.core.errors import UserError
    from tfkd.tracking import store

    with read_only_mount(tmp_path / "ro") as folder:
        for uri in (f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'a' / 'mlflow.db'}"):
            with pytest.raises(UserError, match="Read-only file system"):
                store.check_location(uri)
            assert not store.reachable(uri)  # an outbox waits for it: nothing is set aside
