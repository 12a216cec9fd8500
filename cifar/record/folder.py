"""Who owns a run folder (and, with the same lock, a study folder), and whether it holds a run.

A run folder is ours only if it holds ``run.lock``, the file train.py creates in it. The run that
owns the folder holds an exclusive POSIX record lock (fcntl) on that file for its whole life; the
operating system drops the lock when the process ends, however it ends, so a SIGKILLed run never
blocks its own resume. POSIX record locks are what NFS (v3 through lockd, v4 in the protocol)
and Lustre (mounted with ``flock``, the default since 2.12) make coherent across nodes; where the
file system refuses locks the run goes on with a warning.
"""

import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import time

from cifar.errors import UserError, warn
from cifar.record.atomic import fsync_folder
from cifar.record.names import LOCK_FILE, RESULT_FILES, RESUME_LOG, checkpoint_folders
from cifar.record.schema import versioned

FLOCK_FORMAT = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid


def holds_a_run(run_dir: str) -> bool:
    """True when the folder has a checkpoint or results worth keeping."""
    if checkpoint_folders(run_dir):
        return True
    for name in RESULT_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return True
    return False


def holder_of(path: str, fd: int) -> str:
    """Who holds the lock: the process id the kernel reports (0 when the holder is on another
    NFS client), with what the holder wrote in the file when that is the same process (a run
    writes it once it goes ahead, so the file may still name the run before)."""
    try:
        query = struct.pack(FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        pid = struct.unpack(FLOCK_FORMAT, fcntl.fcntl(fd, fcntl.F_GETLK, query))[4]
    except OSError:
        pid = 0
    try:
        with open(path) as f:
            info = json.load(f)
        job = f", SLURM job {info['slurm_job']}" if info.get("slurm_job") else ""
        if pid in (0, info["pid"]):
            return f"process {info['pid']} on {info['host']} since {info['since']}{job}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"process {pid} on this machine" if pid > 0 else "a process on another machine"


class FolderLock:
    """The lock file of a folder (a run's, a study's), held for the life of this process or
    until released: one owner per folder."""

    def __init__(self, path: str, what: str, option: str):
        """path: the lock file; what: who owns such a folder ("run", "study"); option: the flag
        that picks another folder, for the refusal."""
        self.path, self.what, self.option = path, what, option
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, wait_s: float = 0) -> None:
        """Lock the file, waiting up to wait_s seconds for a holder to let go; a UserError
        naming the holder when it does not. Where the file system refuses locks, warn and go
        on unlocked."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    warn(
                        f"the file system of {os.path.dirname(self.path)} refuses file locks "
                        f"({error.strerror}): a second {self.what} started on this folder "
                        f"would not be stopped"
                    )
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        holder = holder_of(self.path, self.fd)
        self.release()
        raise UserError(
            f"another {self.what} is using the {self.what} folder {os.path.dirname(self.path)} "
            f"({holder}). Wait for it to finish (or stop it), or choose another {self.option}."
        )

    def announce(self) -> None:
        """Write who holds the lock, for the message a second owner prints; called once the
        owner goes ahead, so a refused start leaves the file as it was. Written through the
        locked descriptor: closing any other descriptor of the file would drop the lock."""
        if self.fd is None:
            return
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
        }
        data = (json.dumps(holder) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Give the folder up (the lock goes with the descriptor)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RunFolder:
    """The folder of one run, claimed by the main process: created or adopted, and locked."""

    def __init__(self, path: str, created: bool, lock_created: bool, lock: FolderLock):
        self.path, self.created, self.lock_created = path, created, lock_created
        self.lock = lock

    @classmethod
    def claim(cls, path: str, resume: bool, fresh: bool = False) -> "RunFolder":
        """Create or adopt the folder and lock it; refuse folders that are not ours or are in
        use, and runs that would be overwritten (resume=False on a folder holding a run).
        fresh: path is a default name (new_folder_each_start), and a folder of it that exists
        belongs to another run started in the same second: create path-2, path-3, ... instead."""
        path = os.path.abspath(path)
        if fresh:
            path = create_new_folder(path)
        existed = os.path.isdir(path) and not fresh
        if existed:
            foreign = sorted(os.listdir(path))
            if foreign and LOCK_FILE not in foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                lost_lock = (
                    f" If it is a run folder of train.py whose {LOCK_FILE} was deleted, create "
                    f"an empty one (touch {os.path.join(path, LOCK_FILE)}) and resume."
                    if checkpoint_folders(path)
                    else ""
                )
                raise UserError(
                    f"the folder {path} is not empty ({shown}) and was not made by train.py "
                    f"(it has no {LOCK_FILE}). Nothing was changed. Choose a new or empty "
                    f"--output-dir.{lost_lock}"
                )
        lock_path = os.path.join(path, LOCK_FILE)
        lock_existed = os.path.exists(lock_path)
        try:
            os.makedirs(path, exist_ok=True)
            lock = FolderLock(lock_path, "run", "--output-dir")
        except OSError as error:
            raise UserError(
                f"cannot write to the run folder {path} ({error.strerror}). Choose a writable "
                f"--output-dir."
            ) from None
        folder = cls(path, not existed, not lock_existed, lock)
        lock.acquire()
        if holds_a_run(path) and not resume:
            folder.release()
            raise UserError(
                f"the run folder {path} already holds a run. Continue it with --resume auto, "
                f"or choose another --output-dir."
            )
        if not resume:  # a new run: nothing here to keep as it was
            folder.announce()
        return folder

    def announce(self) -> None:
        self.lock.announce()

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """After a failed start: remove what this start created, so the same command works
        again. A folder holding a run is never touched."""
        if not holds_a_run(self.path):
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            elif self.lock_created:  # the folder was empty: all it holds now is this start's
                for entry in os.scandir(self.path):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.remove(entry.path)
        self.release()


def log_resume(run_dir: str, checkpoint: str, progress, settings: dict) -> None:
    """Append to resume.jsonl: when, where and from which step the run went on, and which of
    the settings that may change on resume did."""
    changed = {
        name: [progress.settings.get(name), value]
        for name, value in settings.items()
        if progress.settings.get(name) != value and name != "resume"
    }
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
        "world_size": settings["world_size"],
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "checkpoint": checkpoint,
        "changed": changed,
    }
    # Appended, not rewritten: the log of a run's resumes only grows; each line is fsynced.
    with open(os.path.join(run_dir, RESUME_LOG), "a", encoding="utf-8") as f:
        f.write(json.dumps(versioned(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_folder(run_dir)


def create_new_folder(path: str) -> str:
    """Create path, or the first of path-2, path-3, ... that does not exist (os.mkdir: of runs
    racing for a name, exactly one creates it); the folder created."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot write to the run folder {path} ({error.strerror}). Choose a writable "
            f"--output-dir."
        ) from None
    for count in range(1, 10_000):
        candidate = path if count == 1 else f"{path}-{count}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(
                f"cannot write to the run folder {candidate} ({error.strerror}). Choose a "
                f"writable --output-dir."
            ) from None
    raise UserError(f"every run folder {path}-N is taken. Choose an --output-dir.")


def new_folder_each_start(config) -> bool:
    """Whether each start gets a new folder: the default one is named by the second (under
    SLURM by the job, whose requeued run resumes in it)."""
    return not config.output_dir and not os.environ.get("SLURM_JOB_ID")


def default_run_dir(config) -> str:
    job = os.environ.get("SLURM_JOB_ID")
    stamp = f"job{job}" if job else time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.model}-{config.dataset}-{stamp}")
