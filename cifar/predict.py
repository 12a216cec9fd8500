"""Label image files with a finished run's model: each file decoded and resized exactly as the
run's test images were (cifar.data.decode, in DataLoader workers), then scored in batches on the
GPU when there is one, in the run's precision.

    python -m cifar.predict runs/cnn-cifar10-20261201-101500 cat.png photos/ --top-k 3
    python -m cifar.predict RUN photos/ --format json > predictions.json

Prints one row per image (folders are searched for image files, in sorted order): its path, the
top-K labels and their probabilities. An image that does not decode stops it before any output.
"""

import csv
import json
import os
import sys
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from cifar.build import make_accelerator
from cifar.config import LIMITS, check_range, default_workers
from cifar.data.decode import IMAGE_SUFFIXES, shown
from cifar.data.image_cache import Resized, one_pass
from cifar.errors import UserError
from cifar.evaluation import classify
from cifar.trained import (
    ArgumentParser,
    evaluation_model,
    load_portable,
    open_finished_run,
    run_command,
)


def parse_args(argv):
    parser = ArgumentParser(
        prog="cifar.predict", description="Label image files with a finished run's model."
    )
    parser.add_argument("run", metavar="RUN", help="a run folder train.py finished")
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them"
    )
    parser.add_argument("--top-k", type=int, default=1, metavar="K", help="labels per image (1)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="output (csv)")
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="images per batch (default: the run's)"
    )
    return parser.parse_args(argv)


def list_images(inputs: list[str]) -> list[str]:
    """The files named, and the image files under the folders named (sorted), in order."""
    paths = []
    for given in inputs:
        if os.path.isfile(given):
            paths.append(given)
        elif os.path.isdir(given):
            named = [
                os.path.join(folder, name)
                for folder, _, names in os.walk(given)
                for name in names
                if name.lower().endswith(IMAGE_SUFFIXES)
            ]
            # A FIFO named like an image would block the decoding forever, a dangling link
            # holds none: regular files only (through links), as an image folder lists them.
            found = [path for path in named if os.path.isfile(path)]
            left_out = sorted(set(named) - set(found))
            if left_out:
                listed = "; ".join(f"{shown(path)} (not a regular file)" for path in left_out)
                print(f"note: left out of {shown(given)}: {listed}", file=sys.stderr, flush=True)
            if not found:
                raise UserError(
                    f"the folder {given} holds no image files ({', '.join(IMAGE_SUFFIXES)}). "
                    f"Name image files or folders that hold them."
                )
            paths += sorted(found)
        else:
            raise UserError(f"{given} is neither a file nor a folder. Name image files or folders.")
    return paths


def decoded_batches(paths: list[str], side: int, batch_size: int):
    """(paths, uint8 N x 3 x side x side) batches of the files, decoded and resized as the
    image-folder path does; a UserError naming the first file that does not decode."""
    files = Resized([(path, 0) for path in paths], side)
    pending = []
    for chunk in DataLoader(files, **one_pass(default_workers())):
        for index, image, failure in chunk:
            if failure:
                raise UserError(
                    f"cannot decode image {paths[index]} ({failure}). Remove or replace the "
                    f"file, or leave it out of the command; nothing was printed."
                )
            pending.append((paths[index], image))
        while len(pending) >= batch_size:
            yield stacked(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield stacked(pending)


def stacked(pairs: list) -> tuple[list, torch.Tensor]:
    return [path for path, _ in pairs], torch.stack([image for _, image in pairs])


@torch.no_grad()
def predict(args) -> list[dict]:
    """{path, predictions: [{label, probability}, ...]} per image, best first."""
    run = open_finished_run(args.run)
    config = replace(run.config, batch_size=args.batch_size or run.config.batch_size)
    check_range("batch_size", config.batch_size, *LIMITS["batch_size"], "")
    check_range("top_k", args.top_k, 1, len(run.classes), "")
    trained = load_portable(run)
    paths = list_images(args.inputs)
    accelerator = make_accelerator(config)
    model, to_input = evaluation_model(trained, config, accelerator)
    rows = []
    for names, images in decoded_batches(paths, trained.card["image_size"], config.batch_size):
        logits = classify(model, to_input(images.to(accelerator.device)), config.tta)
        top = logits.float().softmax(dim=1).topk(args.top_k, dim=1)
        best = zip(names, top.values.tolist(), top.indices.tolist(), strict=True)
        for name, values, indices in best:
            predictions = [
                {"label": trained.classes[i], "probability": p}
                for i, p in zip(indices, values, strict=True)
            ]
            rows.append({"path": name, "predictions": predictions})
    return rows


def write_rows(rows: list[dict], form: str, out=None) -> None:
    out = out or sys.stdout
    if form == "json":
        json.dump(rows, out, indent=1)
        out.write("\n")
        out.flush()
        return
    k = len(rows[0]["predictions"])
    writer = csv.writer(out)
    header = ["path", "label", "probability"]
    writer.writerow(header + [f"{name}_{i}" for i in range(2, k + 1) for name in header[1:]])
    for row in rows:
        cells = [row["path"]]
        for prediction in row["predictions"]:
            cells += [prediction["label"], repr(prediction["probability"])]
        writer.writerow(cells)
    out.flush()  # here, where a full disk is reported, rather than at exit


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: write_rows(predict(args), args.format))


if __name__ == "__main__":
    sys.exit(main())
