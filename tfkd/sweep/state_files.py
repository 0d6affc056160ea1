"""The files of a sweep's results folder that `--resume` unpickles, and their digests.

`Tuner.restore` reads every top-level `.pkl` and `.json` file of the experiment's folder
(tuner.pkl, the experiment state, the searcher's and the variant generator's state) with pickle,
or with a JSON decoder that unpickles embedded objects, and a restored trial unpickles the error
it failed with. Whoever can write the results folder can therefore run code in the next
`--resume`. tfkd records these files' SHA-256 digests at the end of each session where the
folder's writers cannot change them (the sweep's MLflow run, tfkd.tracking.state) and compares
them before anything is unpickled.

Nothing here imports Ray: the command line checks before a cluster starts.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

# relative to the experiment's folder: what Ray reads back on restore
STATE_PATTERNS = ("*.pkl", "*.json", "*/*.pkl")
# written by tfkd itself and read as plain data (never unpickled); the saved flags are checked
# on their own (tfkd.cli.saved_flags) and best_config.yaml is an output
NOT_STATE = ("tfkd_flags.json",)


def _filesystem(experiment_path: str):
    """pyarrow's filesystem of a local folder or a URI, and the folder's path in it."""
    import pyarrow.fs

    local = "://" not in experiment_path
    where = str(Path(experiment_path).expanduser().resolve()) if local else experiment_path
    return pyarrow.fs.FileSystem.from_uri(where)


def is_state_file(relative: str) -> bool:
    """Whether Ray unpickles this file (a path relative to the experiment's folder) on restore."""
    depth = relative.count("/")
    return relative not in NOT_STATE and any(
        fnmatch.fnmatchcase(relative, p) and p.count("/") == depth for p in STATE_PATTERNS
    )


def state_digests(experiment_path: str) -> dict[str, str]:
    """{path relative to the experiment's folder: sha256 hex} of every state file it holds
    ({} when the folder does not exist)."""
    import pyarrow.fs

    fs, root = _filesystem(experiment_path)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        return {}
    digests = {}
    for info in _two_levels(fs, root):
        relative = info.path[len(root) :].lstrip("/")
        if info.type == pyarrow.fs.FileType.File and is_state_file(relative):
            with fs.open_input_stream(info.path) as stream:
                digests[relative] = hashlib.sha256(stream.readall()).hexdigest()
    return dict(sorted(digests.items()))


def _two_levels(fs, root: str) -> list:
    """The entries of the folder and of its sub-folders (the trials' folders)."""
    import pyarrow.fs

    top = fs.get_file_info(pyarrow.fs.FileSelector(root))
    below = [
        entry
        for info in top
        if info.type == pyarrow.fs.FileType.Directory
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(info.path))
    ]
    return [*top, *below]
