"""The digests of a sweep's resume state, kept on its MLflow run.

At the end of each session the driver records the SHA-256 digests of the files `--resume` will
unpickle (tfkd.sweep.state_files) as a tag of the sweep run, where the writers of the results
folder cannot change them; `--resume` reads them back before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from tfkd.tracking import store
from tfkd.tracking.runs import TrackingContext, _sweep_box

STATE_TAG = "tfkd.state_digests"
# MLflow tag values: 8000 characters on a current server, 5000 on older ones
MAX_TAG_LENGTH = 5000


def combined_digest(digests: Mapping[str, str]) -> str:
    """One SHA-256 over every (file, digest) pair, in file order."""
    text = "\n".join(f"{name} {digest}" for name, digest in sorted(digests.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def record_state_digests(context: TrackingContext | None, digests: Mapping[str, str]) -> None:
    """Tag the sweep run with the session's state digests (through the sweep's outbox, before
    finish_sweep closes it); the per-file list only where it fits a tag, the combined digest
    always."""
    if context is None:
        return
    record = {"session": context.session, "sha256": combined_digest(digests)}
    with_files = json.dumps({**record, "files": dict(sorted(digests.items()))})
    value = with_files if len(with_files) <= MAX_TAG_LENGTH else json.dumps(record)
    _sweep_box(context).put({"op": "tags", "tags": {STATE_TAG: value}})


@dataclass(frozen=True)
class RecordedState:
    """What the sweep run says about its resume state."""

    last_session: int  # the sweep's newest session (started, perhaps never ended)
    session: int | None  # the session whose end recorded the digests (None: never recorded)
    sha256: str = ""
    files: Mapping[str, str] | None = None  # per file, where it fitted the tag
    status: str = ""  # the sweep run's status

    @property
    def current(self) -> bool:
        """The digests are those of the newest session's end (it was not killed before it)."""
        return self.session is not None and self.session == self.last_session

    def mismatches(self, found: Mapping[str, str]) -> list[str]:
        """The files that differ from the record (changed, added, missing), or ["(a file)"]
        when only the combined digest was recorded and it differs; [] when they match."""
        if self.files is not None:
            names = self.files.keys() | found.keys()
            return sorted(n for n in names if self.files.get(n) != found.get(n))
        return [] if combined_digest(found) == self.sha256 else ["(a state file)"]


def recorded_state(uri: str, experiment: str, run_name: str) -> RecordedState | None:
    """The sweep run's record of its resume state; None when the store has no such sweep run."""
    client = store.client(uri)
    found = client.get_experiment_by_name(experiment) if client else None
    run = found and store.newest_run_named(client, found.experiment_id, store.SWEEP, run_name)
    if not run:
        return None
    tags = run.data.tags
    last = int(tags.get(store.SESSION_TAG, 1))
    if STATE_TAG not in tags:
        return RecordedState(last, None, status=run.info.status)
    record = json.loads(tags[STATE_TAG])
    return RecordedState(
        last, int(record["session"]), record["sha256"], record.get("files"), run.info.status
    )
