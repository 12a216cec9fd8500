"""Score a finished run's model on its own test set, or on another with the same classes and
input, on one process or many; every test image is counted once (cifar.evaluation.eval_model).

    python -m cifar.evaluate runs/cnn-fashion-mnist-20261201-101500 --out eval.json
    python -m cifar.evaluate RUN --dataset imagefolder --data-dir my_images --out eval.json
    torchrun --standalone --nproc_per_node 2 -m cifar.evaluate RUN --out eval.json
    accelerate launch -m cifar.evaluate RUN --out eval.json

Prints the accuracy, the loss and each class's accuracy (none for a class without a test image)
and writes them with the confusion matrix as JSON to --out. The run folder is left as it is.
"""

import os
import sys
from dataclasses import replace

from cifar.build import make_accelerator
from cifar.config import LIMITS, Config, check_range
from cifar.data import DATASETS, build_datasets
from cifar.data.loaders import DeviceEvalLoader, build_loaders, eval_shard
from cifar.data.tensors import TensorImages
from cifar.distributed import on_main_first
from cifar.errors import UserError, say
from cifar.evaluation import eval_model
from cifar.processes import apply_process_settings
from cifar.record import versioned, write_json
from cifar.trained import (
    ArgumentParser,
    evaluation_model,
    image_side,
    load_portable,
    open_finished_run,
    out_path,
    run_command,
)


def parse_args(argv):
    parser = ArgumentParser(
        prog="cifar.evaluate",
        description="Score a finished run's model on a test set; the run folder is not changed.",
    )
    parser.add_argument("run", metavar="RUN", help="a run folder train.py finished")
    parser.add_argument("--dataset", choices=DATASETS, help="test set (default: the run's own)")
    parser.add_argument(
        "--data-dir", help="its folder (default: the run's, or 'data' for another dataset)"
    )
    parser.add_argument(
        "--test-subset",
        type=int,
        metavar="N",
        help="the first N test images only, 0: all (default: the run's, or 0 for another set)",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="images per process per batch (the run's)"
    )
    parser.add_argument(
        "--out",
        metavar="FILE.json",
        help="write the results here as JSON (a new name, if inside the run folder)",
    )
    return parser.parse_args(argv)


def test_config(run, args) -> Config:
    """The run's Config, pointed at the test set the flags name."""
    config = run.config
    other = args.dataset is not None and args.dataset != config.dataset
    changes = {
        "dataset": args.dataset or config.dataset,
        "data_dir": args.data_dir or (Config.data_dir if other else config.data_dir),
        "test_subset": args.test_subset if args.test_subset is not None else (0 if other else None),
        "batch_size": args.batch_size,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    for name in ("test_subset", "batch_size"):
        if name in changes:
            check_range(name, changes[name], *LIMITS[name], "")
    return replace(config, **changes)


def refuse_other_test_set(card: dict, config, test) -> None:
    """The test set must have the run's classes, in order, and images of the run's side."""
    if list(test.classes) != card["classes"]:
        pairs = zip(card["classes"], test.classes, strict=False)  # the shorter list's length
        differ = [f"{a!r} vs {b!r}" for a, b in pairs if a != b]
        detail = differ[0] if differ else f"{len(card['classes'])} vs {len(test.classes)} classes"
        raise UserError(
            f"--dataset {config.dataset} (in {config.data_dir}) has other classes than the run "
            f"was trained on (first difference: {detail}; the run's: {card['classes']}). "
            f"Evaluate it on a test set with the same classes in the same order."
        )
    side = image_side(config, getattr(test, "images", None))
    if side != card["image_size"]:
        raise UserError(
            f"--dataset {config.dataset} gives {side} x {side} test images, but the run's model "
            f"was scored on {card['image_size']} x {card['image_size']} ones (its input "
            f"contract, in model.json). Evaluate it on a test set of that size."
        )


def evaluate(args) -> dict:
    """The results on this process (every process returns them)."""
    run = open_finished_run(args.run)
    out = out_path(args.out, run.dir)
    config = test_config(run, args)
    trained = load_portable(run)
    apply_process_settings(config)
    accelerator = make_accelerator(config)
    train, test = on_main_first(accelerator, lambda: build_datasets(config))
    refuse_other_test_set(trained.card, config, test)
    if isinstance(test, TensorImages):  # the very loader training scores with
        loader = DeviceEvalLoader(test.images, test.labels, **eval_shard(config, accelerator))
    else:
        loader = build_loaders(config, accelerator, train, test)[1]
    model, to_input = evaluation_model(trained, config, accelerator)
    scored = eval_model(accelerator, model, loader, to_input, len(trained.classes), config.tta)
    matrix = scored["confusion_matrix"]
    results = versioned(
        {
            "run": run.dir,
            "model": config.model,
            "dataset": config.dataset,
            "data_dir": os.path.abspath(config.data_dir),
            "test_subset": config.test_subset,
            "batch_size": config.batch_size,
            "world_size": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "test_time_augmentation": "flip" if config.tta else "none",
            "test_accuracy": scored["test_accuracy"],
            "test_loss": scored["test_loss"],
            "per_class_accuracy": {
                name: (row[i] / sum(row) if sum(row) else None)
                for i, (name, row) in enumerate(zip(trained.classes, matrix, strict=True))
            },
            "confusion_matrix": matrix,
            "classes": trained.classes,
            "num_test_samples": scored["num_test_samples"],
        }
    )
    say(accelerator, describe(results))
    if out and accelerator.is_main_process:
        write_json(out, results)
        say(accelerator, f"wrote {out}")
    return results


def describe(results: dict) -> str:
    per_class = ", ".join(
        f"{name} {'none (no test image)' if accuracy is None else f'{accuracy:.2%}'}"
        for name, accuracy in results["per_class_accuracy"].items()
    )
    return (
        f"{results['run']} on {results['dataset']}: {results['num_test_samples']} test images, "
        f"{results['world_size']} process(es), precision {results['mixed_precision']}\n"
        f"accuracy {results['test_accuracy']:.4%}  loss {results['test_loss']:.6f}\n"
        f"per-class accuracy: {per_class}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
