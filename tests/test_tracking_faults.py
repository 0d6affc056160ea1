"""Tracking faults combined with ASHA, with real processes: a real local Ray, a real MLflow
server that this test stops and starts again, and `tfkd replay`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import steps, sweep_past_its_first_checkpoint, wait_until

from conftest import assert_ok, clean_env, runs_of_kind

pytestmark = pytest.mark.slow

# Two learning rates on digits, one after the other: ASHA stops the one that learns nothing.
ASHA_SWEEP = (
    "--mode lsr --dataset digits --model resnet8 --search-alg grid --num-samples 1 --epochs 3 "
    "--grace-period 1 --max-concurrent 1 --experiment lsr-asha"
)
ASHA_SPACE = "mode: lsr\nparams:\n  lr: {distribution: choice, values: [0.1, 0.000001]}\n"


def replay(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfkd", "replay", str(folder)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_every_run_ends_true(uri: str) -> None:
    """Both trials FINISHED, stopped_early true exactly for the one ASHA stopped (lr 1e-6),
    each epoch once; the sweep run FINISHED and naming the best trial's run."""
    runs = runs_of_kind(uri, "lsr-asha", "trial")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    stopped = {r.data.params["lr"]: r.data.tags["stopped_early"] for r in runs}
    assert stopped == {"0.1": "false", "1e-06": "true"}, stopped
    for run in runs:
        ran = steps(uri, run.info.run_id)
        assert ran == list(range(1, len(ran) + 1))
        assert (len(ran) < 3) == (run.data.tags["stopped_early"] == "true")
    (parent,) = runs_of_kind(uri, "lsr-asha", "sweep")
    best = {r.data.params["lr"]: r.info.run_id for r in runs}["0.1"]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] == best


def trials_started(experiment: Path) -> int:
    """How many trials have written a checkpoint."""
    return len({path.parent for path in experiment.glob("trial_*/checkpoint_*")})


def test_asha_stops_during_an_outage_end_finished_and_stopped_early_after_replay(workdir):
    """The server is down from the first checkpoint to after the sweep: every write waits in
    the outboxes, and `replay` closes each run in its true state."""
    space = workdir / "lr.yaml"
    space.write_text(ASHA_SPACE)
    down_for_good = {"search_space": space, "tracking_grace": 6}  # the ends need not wait 60 s
    with sweep_past_its_first_checkpoint(workdir, "asha", ASHA_SWEEP, **down_for_good) as sweep:
        sweep.stop()
        assert sweep.driver.wait(timeout=300) == 0, sweep.log.read_text()[-3000:]
        said = sweep.log.read_text()
        assert "MLflow lacks" in said
        assert "compare the trials in MLflow" not in said  # trials.html never reached it
        sweep.start()
        assert_ok(replay(sweep.experiment))
        assert_every_run_ends_true(sweep.uri)


def test_asha_stops_during_an_outage_the_server_back_before_the_sweep_ends(workdir):
    """The server is down from the first trial's first checkpoint until the trial ASHA stops
    has reported (its writes and the driver's verdict on it wait); it is back while the sweep
    ends, which sends everything: no replay needed."""
    space = workdir / "lr.yaml"
    space.write_text(ASHA_SPACE)
    with sweep_past_its_first_checkpoint(workdir, "blip", ASHA_SWEEP, search_space=space) as sweep:
        sweep.stop()
        wait_until(
            lambda: trials_started(sweep.experiment) == 2,
            "the second trial's first epoch",
            sweep.driver,
            timeout=300,
        )
        sweep.start()
        assert sweep.driver.wait(timeout=300) == 0, sweep.log.read_text()[-3000:]
        said = sweep.log.read_text()
        assert "MLflow lacks" not in said
        assert "[tfkd] compare the trials in MLflow" in said
        assert "View run" not in said and "View experiment" not in said  # MLflow's own links
        assert_every_run_ends_true(sweep.uri)
