"""File helpers that need no Paddle, so that Pretreatment's scripts can use them too: atomic
writes, JSON, and checking that a folder can be written before any work goes into it."""
import json
import os
import tempfile
from pathlib import Path


class FolderError(Exception):
    """A folder the program must write to cannot be written (a file, read-only, full)."""


def atomic_write(path, write):
    """Call write(temporary_path), flush it to disk, then rename it onto path. A crash at any
    moment leaves either the old file or the new one under path, never half of one, and no
    temporary file behind unless the process itself is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes private files; models and pictures are meant to be shared
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path, data):
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(data, path):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def fsync_folder(folder):
    """Make the renames inside folder durable (a power cut after os.replace can otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writable_folder(folder, flag):
    """Create folder if needed and prove it can be written, by writing and removing a small file.
    Raises FolderError with one sentence naming the command-line flag when it cannot."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{flag} {folder} is a file, not a folder; name a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise FolderError(f"{flag} {folder} cannot be written ({error.strerror or error}); "
                          f"free some space, fix its permissions or name another folder.") from None
    return folder
