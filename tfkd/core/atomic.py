"""Write a whole file or nothing: the one atomic writer every tfkd file goes through.

The content goes to a temporary file beside the target, which is then renamed over it
(`os.replace`, atomic on POSIX within one filesystem): a reader sees the old file or the new one,
never a half-written one, however the writer dies. URIs (s3://, gs://) go through pyarrow's
filesystems, whose objects appear whole when the stream closes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replacing(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `target`'s new content into; it replaces `target` on success.

    Permissions follow the umask (mkstemp's would be 0600); on any error the temporary file is
    removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, content: bytes) -> str:
    """`content` as the whole of `target`, a local path or a pyarrow filesystem URI."""
    if "://" in str(target):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(str(target))
        with fs.open_output_stream(path) as out:
            out.write(content)
        return str(target)
    with replacing(target) as out:
        out.write(content)
    return str(target)


def write_text(target: str | os.PathLike, text: str) -> str:
    """`text` (UTF-8) as the whole of `target`."""
    return write_bytes(target, text.encode())


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A second name for a file that is only ever replaced whole (never written in place): a
    hard link, which writes no bytes, or a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:  # another file system, links not allowed, or the target exists
        shutil.copyfile(source, target)


def remove_dead_process_folders(parent: Path, prefix: str) -> None:
    """Remove the folders `<parent>/<prefix><pid>-*` whose process no longer runs (a process
    killed mid-write leaves its scratch or staging folder behind)."""
    for folder in parent.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
