"""Tracking faults combined with ASHA, with real processes: a real local Ray, a real MLflow
server that this test stops and starts again, and `python -m tfkd.tracking replay`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import steps, sweep_past_its_first_checkpoint

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
        [sys.executable, "-m", "tfkd.tracking", "replay", str(folder)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_asha_stops_during_an_outage_end_finished_and_stopped_early_after_replay(workdir):
    """The server is down from the first checkpoint to after the sweep: every write waits in
    the outboxes, and `replay` closes each run in its true state."""
    space = workdir / "lr.yaml"
    space.write_text(ASHA_SPACE)
    with sweep_past_its_first_checkpoint(workdir, "asha", ASHA_SWEEP, search_space=space) as sweep:
        sweep.stop()
        assert sweep.driver.wait(timeout=300) == 0, sweep.log.read_text()[-3000:]
        sweep.start()
        assert_ok(replay(sweep.experiment))
        runs = runs_of_kind(sweep.uri, "lsr-asha", "trial")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        epochs = {r.info.run_id: steps(sweep.uri, r.info.run_id) for r in runs}
        stopped = {
            r.data.params["lr"]: r.data.tags["stopped_early"] for r in runs
        }  # a tag on every run, true exactly when it ran fewer epochs
        assert stopped == {"0.1": "false", "1e-06": "true"}, stopped
        for run in runs:
            ran = epochs[run.info.run_id]
            assert ran == list(range(1, len(ran) + 1))
            assert (len(ran) < 3) == (run.data.tags["stopped_early"] == "true")
        (parent,) = runs_of_kind(sweep.uri, "lsr-asha", "sweep")
        best = {r.data.params["lr"]: r.info.run_id for r in runs}["0.1"]
        assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] == best
