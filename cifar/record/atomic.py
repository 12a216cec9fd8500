"""One way to write a file that others read: whole or not at all, and durable once written."""

import contextlib
import os
import tempfile


def atomic_write(path: str, data, *, mode: int | None = None) -> None:
    """Write data (str, bytes, or a callable given the open binary file) to path atomically.

    A reader sees the old file or the new one, never half of one: the data goes to a temporary
    file in the same folder, which is flushed and fsynced, then renamed over path, and the
    folder is fsynced so the rename survives a crash. On failure the temporary file is removed
    and the error raised; path is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = path  # a write to the temporary file: name the file it was for
        raise
    fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Make a rename in folder durable; file systems that cannot fsync a folder are left be."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
