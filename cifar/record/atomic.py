"""One way to write a file that others read: whole or not at all, and durable once written."""

import contextlib
import os
import tempfile

# The process's umask, read once at import: os.umask can only be read by setting it, which
# would race files other threads create later. mkstemp makes its files 0600; a record is made
# as open() makes a file (0666 less the umask), so that others sharing the run folder read it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path: str, data, *, mode: int | None = None) -> None:
    """Write data (str, bytes, or a callable given the open binary file) to path atomically,
    with mode (default: as open() would make it, FILE_MODE).

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
        os.chmod(temporary, FILE_MODE if mode is None else mode)
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
