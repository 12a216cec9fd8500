"""Train SimpleCNN or ResNet-50 (transfer learning) on CIFAR-10 and friends, with Accelerate.

    accelerate launch --quiet train.py --model cnn
    accelerate launch --quiet --mixed_precision bf16 train.py --model resnet50
    python train.py --model cnn --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
    python train.py --help

Exit codes: 0 done (or already finished); 2 a mistake in the input (the message says how to fix
it); 75 stopped by SIGTERM/SIGUSR1/SIGINT after saving a checkpoint (resume with --resume auto);
74 a checkpoint or result file could not be written (disk full, I/O error); 130 stopped by a
second Ctrl-C without a checkpoint; 1 anything else.
"""

import os
import sys

from cifar.errors import (
    DISK_ERRORS,
    INTERRUPTED_EXIT_CODE,
    IO_ERROR_EXIT_CODE,
    REQUEUE_EXIT_CODE,
    USAGE_EXIT_CODE,
    UserError,
    one_line_warnings,
    report_user_error,
)


def main(argv: list[str] | None = None) -> int:
    one_line_warnings()
    try:
        from cifar.config import parse_config  # imports torch: inside, so Ctrl-C here is clean

        config = parse_config(argv)
        if config.prepare_only:
            from cifar.assemble import prepare_only

            prepare_only(config)
            return 0
        from cifar.assemble import RunFinished
        from cifar.checkpoint import CheckpointWriteError, write_failure
        from cifar.data.decode import UnreadableImage
        from cifar.engine import NonFiniteLoss, run_experiment

        try:
            if not run_experiment(config).finished:  # stopped on request, with a checkpoint
                return REQUEUE_EXIT_CODE
        except RunFinished as finished:
            report_user_error(finished, prefix="")
        except NonFiniteLoss as error:
            report_user_error(
                UserError(
                    f"{error}. Checkpoints written before it hold finite weights; start a new "
                    f"run with a lower --lr (or fp32 instead of fp16)."
                )
            )
            return 1
        except CheckpointWriteError as error:
            report_user_error(error)
            return IO_ERROR_EXIT_CODE
        except OSError as error:  # a result file (metrics, summary) on a full or failing disk
            if error.errno not in DISK_ERRORS:
                raise
            path = error.filename or "a file of the run folder"
            report_user_error(
                UserError(
                    f"could not write {path} ({write_failure(path, error)}). The checkpoints "
                    f"written before are intact: free some space and continue with --resume auto."
                )
            )
            return IO_ERROR_EXIT_CODE
        except UnreadableImage as error:  # maybe in this process's shard alone: say it here
            print(f"error: {error.reason}", file=sys.stderr, flush=True)
            return USAGE_EXIT_CODE
        except RuntimeError as error:
            from cifar.processes import nondeterministic_operation

            refusal = nondeterministic_operation(error)
            if refusal is not None:
                report_user_error(refusal)
                return USAGE_EXIT_CODE
            failure = peer_failure(error)
            if failure is None:
                raise
            print(f"error: {failure}", file=sys.stderr, flush=True)
            return 1
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:
        report_user_error(
            UserError(
                "interrupted: stopped without saving a checkpoint. Continue from the last one "
                "with --resume auto."
            )
        )
        return INTERRUPTED_EXIT_CODE
    finally:
        leave_process_group()
    return 0


# What a collective raises when another process of the run exited: gloo's socket errors (and
# the TCP store's), NCCL's remote error and the abort of its communicator that follows.
PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "ncclRemoteError",
    "remote process exiting prematurely",
    "NCCL communicator was aborted",
)
# A collective that waited longer than the process group's timeout: NCCL's watchdog, gloo.
PEER_LATE = ("collective operation timeout", "before timing out", "Timed out waiting")


def peer_failure(error: RuntimeError) -> str | None:
    """The paragraph for a collective that failed because of another process of the run (it
    exited, or never came), under gloo or NCCL; None for any other error."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    text = str(error)
    if any(g in text for g in PEER_GONE):
        return "another process of this run stopped (its message is above); this one stops too."
    if any(g in text for g in PEER_LATE):
        from cifar.build import COLLECTIVE_TIMEOUT_VARIABLE, collective_timeout

        minutes = collective_timeout().total_seconds() / 60
        return (
            f"another process of this run did not reach a collective within {minutes:g} "
            f"minutes (it hung, or is still busy with work of its own); this one stops. Look "
            f"at that process's messages above; for longer work of the main process alone "
            f"set {COLLECTIVE_TIMEOUT_VARIABLE}. Continue from the last checkpoint with --resume "
            f"auto."
        )
    return None


def leave_process_group() -> None:
    """A process that exits with its gloo/NCCL group still up aborts with a C++ message."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
