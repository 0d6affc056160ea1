"""The outbox: a run's MLflow writes, queued on disk and sent in the background.

Tracking never blocks training: a write is appended to the outbox's log and sent by a thread,
which retries while the tracking server is unreachable. What a process could not send stays on
disk for the next outbox on the same folder (a restarted trial), for the end of the sweep
(`flush_pending`) or for `tfkd replay FOLDER`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfkd.core import atomic
from tfkd.tracking import ops, store

OUTBOX_DIR = "mlflow_outbox"
OPS_FILE, SENT_FILE, URI_FILE = "ops.jsonl", "sent", "uri"
RETRY_SECONDS = (1.0, 30.0)  # back-off while the tracking server is unreachable: first, longest
# back-off while the store is busy (SQLite's "database is locked": another writer holds it past
# SQLite's own wait): short and jittered, so waiting writers do not all come back at once
BUSY_RETRY_SECONDS = (0.2, 5.0)
# how long a sweep's end waits for a tracking server to come back (--tracking-grace); a trial's
# end and the sweep run's last writes wait half of it
END_OF_SWEEP_GRACE_S = 60.0
SKIP_AFTER = 3  # a write the store keeps refusing is set aside after this many refusals (a busy
# store is not refusing: its writes are retried until they go through, never set aside)
REFUSED_FILE = "refused.jsonl"  # the writes the store refused: reported, never silently dropped
# MLflow's own client retries a request for minutes with back-off; the outbox retries on its own
# schedule instead, so each request gives up fast (set when the first outbox opens, not at import).
MLFLOW_REQUEST_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
logger = logging.getLogger("tfkd.tracking")
_SENDING: set[Path] = set()  # folders an Outbox of this process is sending: nobody else reads them


class Outbox:
    """One run's MLflow writes, sent in order by a background thread; the caller never waits.

    Each write is appended to `<folder>/ops.jsonl` before it is sent (artifact files are copied
    into the folder first) and `<folder>/sent` counts the writes done, so a tracking server that
    is down loses nothing: the thread retries with back-off, `close(timeout)` waits a bounded
    time, and what is still unsent when the process ends is sent by the next Outbox on the same
    folder (a restarted trial) or by `tfkd replay FOLDER`.

    The first write opens the run: a trial's run is found by its trial id under its sweep's run
    (so retries and resumes never open a second run) or created; every later per-epoch metrics
    write whose step that run already has is skipped (an epoch is logged exactly once).
    """

    def __init__(self, folder: str | os.PathLike, uri: str) -> None:
        for name, value in MLFLOW_REQUEST_ENV.items():
            os.environ.setdefault(name, value)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.folder / OPS_FILE)
        (self.folder / URI_FILE).write_text(uri)
        self.uri = uri
        self._lock = threading.Condition()
        self._ops = _read_ops(self.folder)
        self._sent = _read_sent(self.folder)
        self._closing = False
        self._client = None
        self.busy_retries = 0  # tries the store answered "busy" (retried, never set aside)
        self._abandoned = False  # close() stopped waiting: what is unsent is left for later
        self._run = ops.BoundRun(uri, self.folder)
        self._thread = threading.Thread(target=self._drain, name="tfkd-outbox", daemon=True)
        _SENDING.add(self.folder.resolve())
        self._thread.start()

    # -- the caller's side

    def put(self, op: dict[str, Any], files: Mapping[str, str | os.PathLike] | None = None) -> None:
        """Queue a write; `files` (name -> local path) are copied into the outbox first."""
        with self._lock:
            if files:
                stash = self.folder / f"files-{len(self._ops)}"
                stash.mkdir(exist_ok=True)
                for name, path in files.items():
                    atomic.link_or_copy(path, stash / name)  # no bytes written
                op = {**op, "stash": stash.name}
            with open(self.folder / OPS_FILE, "a") as out:
                out.write(json.dumps(op) + "\n")
            self._ops.append(op)
            self._lock.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for every write; True when all were sent."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout)
        self._abandoned = self._thread.is_alive()  # a busy store's retries stop: left on disk
        _SENDING.discard(self.folder.resolve())  # what is left is anyone's to send
        return self.pending() == 0

    @property
    def run_id(self) -> str | None:
        return self._run.run_id

    @property
    def run_opened(self) -> threading.Event:
        """Set once the run is found or created."""
        return self._run.opened

    def pending(self) -> int:
        with self._lock:
            return len(self._ops) - self._sent

    # -- the sending thread

    def _drain(self) -> None:
        try:
            self._send_all()
        finally:
            _SENDING.discard(self.folder.resolve())

    def _send_all(self) -> None:
        if not self._reopen():
            return
        while True:
            with self._lock:
                while self._sent >= len(self._ops) and not self._closing:
                    self._lock.wait()
                if self._sent >= len(self._ops):
                    return
                op = self._ops[self._sent]
            if self._send_with_retries(op):
                with self._lock:
                    self._sent += 1
                    atomic.write_text(self.folder / SENT_FILE, str(self._sent))
                _drop_stash(self.folder, op)  # sent and counted: its file copies are done with
            else:
                return  # gave up for now (closing while unreachable): the rest stays on disk

    def _reopen(self) -> bool:
        """Writes left by an earlier process on this folder need their run: open it again."""
        opened = [op for op in self._ops[: self._sent] if op["op"] in ops.OPENING_OPS]
        return not opened or self._send_with_retries(opened[-1])

    def _send_with_retries(self, op: dict[str, Any]) -> bool:
        """Send one write, retrying while the server is unreachable; False: left for later.

        A write the reachable store keeps refusing is skipped (logged), except the one that
        opens the run: nothing after it could be sent without it. A busy store (a transient
        error, `store.is_transient`) is retried with a short back-off and never counts as a
        refusal.
        """
        opening = op["op"] in ops.OPENING_OPS
        if not opening and self._run.run_id is None:
            return False  # the run could not be opened: keep everything for a later try
        delay, busy_delay, refused = RETRY_SECONDS[0], BUSY_RETRY_SECONDS[0], 0
        while True:
            try:
                self._client = self._client or store.mlflow_client(self.uri)
                ops.send(self._run, self._client, op)
                return True
            except Exception as exc:  # the store refused, was busy, or could not be reached
                if store.is_transient(exc):
                    if self._abandoned:
                        return False  # the rest waits on disk for a later outbox or replay
                    self.busy_retries += 1
                    said = (str(exc).splitlines() or [""])[0][:200]
                    logger.info("MLflow store busy (%s); retrying %s", said, op["op"])
                    time.sleep(busy_delay * random.uniform(0.5, 1.5))
                    busy_delay = min(2 * busy_delay, BUSY_RETRY_SECONDS[1])
                    continue
                reachable = store.reachable(self.uri)
                refused += reachable
                if refused >= SKIP_AFTER and not opening:
                    self._set_aside(op, exc)
                    return True
                with self._lock:
                    if self._closing and (not reachable or refused >= SKIP_AFTER):
                        return False  # the rest waits on disk for a later outbox or replay
                    self._lock.wait(delay)
                delay = min(2 * delay, RETRY_SECONDS[1])

    def _set_aside(self, op: dict[str, Any], error: Exception) -> None:
        """A write the store keeps refusing: kept in refused.jsonl and tagged on the run.

        The sweep's summary lists every outbox with refused writes (`refused_outboxes`).
        """
        reason = f"{error.__class__.__name__}: {error}"[:500]
        logger.warning("MLflow refused %s (set aside in %s): %s", op["op"], REFUSED_FILE, reason)
        with open(self.folder / REFUSED_FILE, "a") as out:
            out.write(json.dumps({"op": op, "error": reason}) + "\n")
        with open(self.folder / REFUSED_FILE) as kept:
            refused = sum(1 for _ in kept)
        try:
            tag = {"tfkd.refused_writes": f"{refused} (see {self.folder / REFUSED_FILE})"}
            ops.send(self._run, self._client, {"op": "tags", "tags": tag})
        except Exception:  # the tag itself refused: the file and the summary still say it
            pass


def _cut_torn_tail(path: Path) -> None:
    """Remove a last line cut short by a kill, so that the next append starts a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as log:
        content = log.read()
        if content.endswith(b"\n"):
            return
        log.truncate(content.rfind(b"\n") + 1)


def _drop_stash(folder: Path, op: Mapping[str, Any]) -> None:
    if "stash" in op:
        shutil.rmtree(folder / op["stash"], ignore_errors=True)


def _read_ops(folder: Path) -> list[dict[str, Any]]:
    """The complete writes logged in an outbox folder (a line cut short by a kill is skipped)."""
    path = folder / OPS_FILE
    if not path.is_file():
        return []
    written = []
    for line in path.read_text().splitlines():
        try:
            written.append(json.loads(line))
        except json.JSONDecodeError:  # cut short by a kill (older logs may hold one mid-file)
            continue
    return written


def _read_sent(folder: Path) -> int:
    """How many of an outbox folder's writes were sent."""
    path = folder / SENT_FILE
    return int(path.read_text() or 0) if path.is_file() else 0


def bound_uri(folder: str | os.PathLike) -> str:
    """The tracking URI an outbox folder was created for."""
    return (Path(folder) / URI_FILE).read_text().strip()


def pending_outboxes(root: str | os.PathLike) -> list[Path]:
    """Outbox folders under `root` (or `root` itself) with writes not yet sent, in sending order.

    Trials' outboxes come before their sweep's: a trial's run must exist before the sweep's
    writes close it and name it the best.
    """
    pending = [
        log.parent
        for log in sorted(Path(root).rglob(OPS_FILE))
        if OUTBOX_DIR in log.parts
        and log.parent.resolve() not in _SENDING
        and len(_read_ops(log.parent)) > _read_sent(log.parent)
    ]
    return sorted(pending, key=_is_sweep_box)  # stable: trials first, then sweeps


def _is_sweep_box(folder: Path) -> bool:
    """Whether an outbox holds a sweep run's writes (it opens with "use_run")."""
    written = _read_ops(folder)
    return bool(written) and written[0]["op"] == "use_run"


def refused_outboxes(root: str | os.PathLike) -> list[Path]:
    """Outbox folders under `root` holding writes the tracking store refused."""
    return [log.parent for log in sorted(Path(root).rglob(REFUSED_FILE)) if OUTBOX_DIR in log.parts]


def flush_pending(root: str | os.PathLike, grace: float = END_OF_SWEEP_GRACE_S) -> list[Path]:
    """Send what outboxes under `root` still hold; returns those still not sent.

    Trials that ended while the tracking server was down left their last writes on disk. At the
    end of a sweep the driver waits up to `grace` seconds for the server to answer, then sends
    them; a server that stays down leaves them for `replay`.
    """
    boxes = pending_outboxes(root)
    if not boxes:
        return []
    uri = bound_uri(boxes[0])
    deadline = time.monotonic() + grace
    while not store.reachable(uri) and time.monotonic() < deadline:
        time.sleep(1.0)
    return [box for box in boxes if not send_outbox(box, None, timeout=grace)]


def send_outbox(folder: str | os.PathLike, uri: str | None, timeout: float) -> bool:
    """Send what an outbox still holds (to `uri`, else where it was bound); True when done."""
    return Outbox(folder, uri or bound_uri(folder)).close(timeout)
