"""Train SimpleCNN or ResNet-50 (transfer learning) on CIFAR-10 and friends, with Accelerate.

    accelerate launch train.py --model cnn
    accelerate launch --mixed_precision bf16 train.py --model resnet50
    python train.py --model cnn --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
    python train.py --help

Exit codes: 0 done; 2 a mistake in the input (message says how to fix it); 75 stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (resume with --resume auto); 1 anything else.
"""

import sys

from cifar.config import parse_config
from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv)
        if config.prepare_only:
            from cifar.experiment import prepare_only

            prepare_only(config)
            return 0
        from cifar.engine import NonFiniteLoss, run_experiment

        try:
            run_experiment(config)
        except NonFiniteLoss as error:
            report_user_error(
                UserError(
                    f"{error}. Checkpoints written before it hold finite weights; start a new "
                    f"run with a lower --lr (or fp32 instead of fp16)."
                )
            )
            return 1
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
