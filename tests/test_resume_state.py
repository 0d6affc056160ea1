"""After --resume, ASHA decides as it would have without the interrupt.

Ray's own ASHAScheduler, run uninterrupted, gives the expected decisions. tfkd's scheduler is
interrupted half-way and restored the way `Tuner.restore` does it: the scheduler and its state
callback come back from the pickle taken when the Tuner was created (both in one pickle, as in
Tune's tuner.pkl), then the saved callback state is set and the trials are added again.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tfkd.sweep.asha import ResumableASHA, SchedulerState

OPTIONS = {"time_attr": "epoch", "max_t": 4, "grace_period": 1, "reduction_factor": 2}
CURVES = {  # validation accuracy per epoch, trials run one after the other
    "A": [10.0, 20.0, 30.0, 40.0],
    "B": [5.0, 6.0, 7.0, 8.0],  # stopped at epoch 1 (below A)
    "C": [15.0, 25.0, 35.0, 45.0],
    "D": [12.0, 18.0, 19.0, 20.0],  # stopped at epoch 2 (below A and C)
}


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def report(scheduler, trial_id: str, epoch: int) -> str:
    result = {"epoch": epoch, "val_accuracy": CURVES[trial_id][epoch - 1]}
    return scheduler.on_trial_result(None, trial(trial_id), result)


def run_trials(scheduler, trial_ids: str) -> dict[str, tuple[int, str]]:
    """Each trial until the scheduler stops it: (last epoch, decision)."""
    decisions = {}
    for trial_id in trial_ids:
        scheduler.on_trial_add(None, trial(trial_id))
        for epoch in range(1, 5):
            action = report(scheduler, trial_id, epoch)
            if action == TrialScheduler.STOP:
                break
        decisions[trial_id] = (epoch, action)
    return decisions


def made(scheduler_class):
    scheduler = scheduler_class(**OPTIONS)
    scheduler.set_search_properties("val_accuracy", "max")
    return scheduler


def test_a_resumed_asha_keeps_its_stops_and_decides_as_an_uninterrupted_one():
    expected = run_trials(made(ASHAScheduler), "ABCD")
    assert expected == {
        "A": (4, TrialScheduler.STOP),
        "B": (1, TrialScheduler.STOP),
        "C": (4, TrialScheduler.STOP),
        "D": (2, TrialScheduler.STOP),
    }

    asha = made(ResumableASHA)
    callback = SchedulerState(asha)
    created = pickle.dumps((asha, callback))  # what Tune's tuner.pkl holds
    first = run_trials(asha, "AB")  # the interrupt comes after ASHA stopped B...
    saved = pickle.dumps(callback.get_state())  # ...and before Tune recorded B as ended

    asha, callback = pickle.loads(created)
    callback.set_state(pickle.loads(saved))
    for trial_id in "AB":
        asha.on_trial_add(None, trial(trial_id))
    # Tune restarts B from its epoch-1 checkpoint: its next result must stop it again
    assert report(asha, "B", 2) == TrialScheduler.STOP
    assert {**first, **run_trials(asha, "CD")} == expected


def test_a_restore_named_by_a_lagging_experiment_state_takes_the_newest_whole_checkpoint(tmp_path):
    """The driver was killed with its saved state two epochs behind: the checkpoint it names
    was deleted by the keep-the-latest rule; the trial resumes from its newest whole one."""
    import torch
    from ray import tune

    from tfkd.core import checkpoint
    from tfkd.sweep.record import TrialRecord
    from tfkd.sweep.trainable import still_on_storage

    trial = tmp_path / "trial_a"
    record = TrialRecord.restore(trial / "tfkd", None)
    for epoch in (1, 2, 3):
        folder = trial / f"checkpoint_{epoch - 1:06d}"
        folder.mkdir(parents=True)
        checkpoint.save_atomic({"model": {"w": torch.zeros(1)}}, folder / "checkpoint.pt")
        record.add_epoch({"epoch": epoch, "val_accuracy": float(epoch)}, folder)
    (trial / "checkpoint_000002" / "checkpoint.pt").write_bytes(b"cut short")  # killed mid-copy
    shutil.rmtree(trial / "checkpoint_000000")  # pruned after the state was saved

    def named(index: int) -> SimpleNamespace:
        path = trial / f"checkpoint_{index:06d}"
        return SimpleNamespace(checkpoint=tune.Checkpoint.from_directory(str(path)), metrics={})

    assert Path(still_on_storage(named(0)).checkpoint.path) == trial / "checkpoint_000001"
    assert Path(still_on_storage(named(1)).checkpoint.path) == trial / "checkpoint_000001"
