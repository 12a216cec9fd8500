"""Helpers for tests that submit jobs to the local one-node SLURM cluster.

The cluster comes from ``.ci/slurm-cluster.sh``. It has no accounting database, so ``sacct`` does
not work: everything here reads ``scontrol show job``, which keeps finished jobs for
``MinJobAge=600`` seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: States a job does not leave by itself. REQUEUED, PENDING, RUNNING, COMPLETING, ... are not final:
#: a requeued job goes RUNNING -> REQUEUED/PENDING -> RUNNING again.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

#: Node states in which the node is up and takes jobs.
_USABLE_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp"})


def _run(
    *cmd: str,
    timeout_s: float = 30,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a SLURM client command, capturing text output (no exception on failure)."""
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env, cwd=cwd
    )


def cluster_available() -> bool:
    """Return True if ``sinfo`` works and a node is up (idle, or busy with other jobs)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = _run("sinfo", "-h", "-N", "-o", "%t", timeout_s=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # Flag suffixes are dropped except "*" (not responding): "idle*" does not count.
    states = {s.rstrip("~#!%$@^-") for s in out.stdout.split()}
    return out.returncode == 0 and bool(states & _USABLE_NODE_STATES)


def submit(
    script_path: str | os.PathLike[str],
    *sbatch_args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    script_args: Sequence[str] = (),
) -> int:
    """Submit a batch script with ``sbatch --parsable`` and return its job id.

    ``sbatch_args`` go before the script (they override its ``#SBATCH`` lines), ``script_args``
    after it (the script's own arguments).

    ``env`` is merged over ``os.environ``; sbatch exports that environment into the job.
    ``cwd`` is the submission directory, which is also the job's working directory (and where
    ``slurm-<id>.out`` goes) unless ``--chdir``/``--output`` say otherwise.
    """
    full_env = {**os.environ, **env} if env is not None else None
    cmd = ("sbatch", "--parsable", *sbatch_args, str(Path(script_path).resolve()), *script_args)
    out = _run(*cmd, env=full_env, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return int(out.stdout.strip().split(";")[0])


def job_info(job_id: int | str) -> dict[str, str]:
    """Return the ``Key=Value`` fields of ``scontrol show job -o`` (values with spaces are cut).

    ``job_id`` may name one element of an array job as ``"<array job id>_<index>"``.
    """
    out = _run("scontrol", "show", "job", "-o", str(job_id))
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"scontrol show job {job_id} failed: {out.stderr.strip()}")
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def job_state(job_id: int | str) -> str:
    """Return the job's state, e.g. ``PENDING``, ``RUNNING``, ``REQUEUED``, ``COMPLETED``."""
    return job_info(job_id)["JobState"]


def restart_count(job_id: int | str) -> int:
    """Return how many times the job was requeued (the job sees it as ``SLURM_RESTART_COUNT``)."""
    return int(job_info(job_id)["Restarts"])


def wait_for_job(job_id: int | str, timeout_s: float, poll_s: float = 1.0) -> str:
    """Poll until the job reaches a state in :data:`FINAL_STATES` and return that state.

    Requeued jobs pass through REQUEUED and PENDING (a requeued job waits ~6 s before it runs
    again on the CI cluster); those do not end the wait. Raises ``TimeoutError`` on timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        state = job_state(job_id)
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout_s} s")
        time.sleep(poll_s)


def fake_sinfo(folder: Path, partition: str, gres: str, cpus: int) -> Path:
    """A folder holding an ``sinfo`` that describes one node of ``partition`` (the default one)
    with ``gres`` (e.g. ``gpu:4(S:0-1)``, or ``(null)``) and ``cpus``; put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    sinfo = folder / "sinfo"
    sinfo.write_text(
        "#!/bin/sh\n"
        "# -o %G: the GRES alone; -o '%P %G %c': partition (* marks the default), GRES, CPUs\n"
        f'case "$*" in *%P*) echo "{partition}* {gres} {cpus}" ;; *) echo "{gres}" ;; esac\n'
    )
    sinfo.chmod(0o755)
    return folder
