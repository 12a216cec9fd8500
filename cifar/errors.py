"""User mistakes: one clear paragraph and exit code 2, never a traceback; and warnings, one
line each."""

import errno
import os
import sys
import warnings

USAGE_EXIT_CODE = 2
# EX_TEMPFAIL from sysexits.h: "try again later". Job scripts requeue on it.
REQUEUE_EXIT_CODE = 75
# EX_IOERR: a checkpoint or result file could not be written (disk full, I/O error).
IO_ERROR_EXIT_CODE = 74
# Errors of the disk rather than of the program: exit 74, not a traceback.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
# 128 + SIGINT, as shells report a process stopped by Ctrl-C.
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


def report_user_error(error: Exception, prefix: str = "error: ") -> None:
    """Print the message once (on the main process only when several run)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{prefix}{error}", file=sys.stderr, flush=True)


def say(accelerator, message: str) -> None:
    """Print once per run (accelerator.print prints once per machine)."""
    if accelerator.is_main_process:
        print(message, flush=True)


class RunWarning(UserWarning):
    """Something the user should know that does not stop the run."""


def warn(message: str) -> None:
    """Warn with a RunWarning: one `warning: ...` line once one_line_warnings is on."""
    warnings.warn(message, RunWarning, stacklevel=3)


def one_line_warnings() -> None:
    """Format RunWarnings as one `warning: message` line, without the file, line and source
    line Python's format adds (they locate code and tell a user nothing); other packages'
    warnings keep their format."""
    original = warnings.formatwarning
    if getattr(original, "one_line", False):
        return

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, RunWarning):
            return f"warning: {' '.join(str(message).split())}\n"
        return original(message, category, filename, lineno, line)

    format_warning.one_line = True
    warnings.formatwarning = format_warning
