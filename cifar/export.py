"""Ship a finished run's model: its portable model (for a run trained before runs wrote one), or a
file for other runtimes.

    python -m cifar.export RUN                                  # model.safetensors + model.json
    python -m cifar.export RUN --format onnx --out model.onnx   # needs the `export` extra
    python -m cifar.export RUN --format torchscript --out model.pt
    python -m cifar.export RUN --format exported --out model.pt2   # torch.export

Every exported file takes what model.json's "input" says: uint8 RGB images N x 3 x S x S (any
batch size N; S is model.json's image_size) and gives logits N x classes; the normalisation (and
a ResNet's resize) is inside. Each file is loaded back and must give PyTorch's logits to 1e-4
(the ONNX file through onnxruntime, when it is installed) before it takes its name.
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import replace

import torch
from safetensors.torch import load_file

from cifar.data import build_datasets, dataset_spec
from cifar.data.transforms import dataset_statistics, fixed_normalisation
from cifar.errors import UserError
from cifar.record import (
    EMA_WEIGHTS,
    LOCK_FILE,
    MODEL_CARD,
    MODEL_WEIGHTS,
    PROGRESS_FILE,
    FolderLock,
    RunFiles,
    atomic_write,
    checkpoints_dir,
    list_checkpoints,
    read_json,
)
from cifar.trained import (
    ArgumentParser,
    image_side,
    load_portable,
    open_finished_run,
    out_path,
    portable_model,
    run_command,
)

FORMATS = ("onnx", "torchscript", "exported")
TOLERANCE = 1e-4  # the largest logit difference an exported file may have from PyTorch's
EXAMPLE_BATCH, CHECK_BATCH = 2, 5  # traced with one batch size, checked with another


def parse_args(argv):
    parser = ArgumentParser(prog="cifar.export", description="Ship a finished run's model.")
    parser.add_argument("run", metavar="RUN", help="a run folder train.py finished")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="write a file for this runtime (without it: write the run's portable model from "
        "its last checkpoint, if it has none)",
    )
    parser.add_argument("--out", metavar="FILE", help="where --format writes its file")
    parser.add_argument(
        "--data-dir",
        help="the run's data, when the portable model is made from a checkpoint and the data "
        "is no longer where config.json says (needed for its size and statistics)",
    )
    return parser.parse_args(argv)


def from_checkpoint(run, data_dir: str | None):
    """(weights, card) of the portable model, from the run's last checkpoint, which must be the
    end of the run summary.json describes."""
    config = replace(run.config, data_dir=data_dir or run.config.data_dir)
    checkpoints = list_checkpoints(checkpoints_dir(run.dir))
    if not checkpoints:
        raise UserError(
            f"{run.dir} has no checkpoint to take its weights from (checkpoints/step-*/). Its "
            f"model cannot be recovered; train it again into a new --output-dir."
        )
    last = checkpoints[-1]
    try:
        progress = read_json(os.path.join(last, PROGRESS_FILE))
        if run.config.ema:  # the average is what the run scored (AveragedModel's state)
            averaged = load_file(os.path.join(last, EMA_WEIGHTS))
            state = {k.removeprefix("module."): v for k, v in averaged.items() if k != "n_averaged"}
        else:
            state = load_file(os.path.join(last, MODEL_WEIGHTS))
    except Exception as error:  # OSError, ValueError, SafetensorError
        raise UserError(
            f"the last checkpoint {last} cannot be read ({type(error).__name__}: {error}). The "
            f"portable model cannot be made from it."
        ) from None
    last_eval = progress.get("last_eval") if isinstance(progress, dict) else None
    summary = run.summary
    if (
        progress.get("epoch") != summary["epochs"]
        or not isinstance(last_eval, dict)
        or last_eval.get("confusion_matrix") != summary["confusion_matrix"]
    ):
        raise UserError(
            f"the last checkpoint {last} is not the end of the run its summary.json describes "
            f"(its epoch or its last evaluation differ), so its weights are not the ones the "
            f"summary scored. Nothing was written."
        )
    sets = None if dataset_spec(config.dataset).file_backed else build_datasets(config)
    normalisation = fixed_normalisation(config) or dataset_statistics(sets[0].images)
    side = image_side(config, sets[1].images if sets else None)
    return portable_model(config, state, normalisation, side, summary)


def write_portable(run, data_dir: str | None) -> None:
    if os.path.isfile(os.path.join(run.dir, MODEL_CARD)):
        load_portable(run)  # it must load: a damaged one is refused, not overwritten
        print(f"{run.dir} already has its portable model ({MODEL_WEIGHTS}, {MODEL_CARD}).")
        return
    weights, card = from_checkpoint(run, data_dir)
    # The run's own lock, so no train.py writes the folder meanwhile.
    lock = FolderLock(os.path.join(run.dir, LOCK_FILE), "run", "--output-dir")
    lock.acquire()
    try:
        RunFiles(run.dir, is_main=True).write_model(weights, card)
    finally:
        lock.release()
    print(f"wrote {os.path.join(run.dir, MODEL_WEIGHTS)} and {MODEL_CARD} from its last checkpoint")


def onnx_writer(module, example, batch):
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx.export needs it
    except ImportError:
        raise UserError(
            "--format onnx needs the onnx and onnxscript packages, which are not installed. "
            "Run `pip install 'cifar-accelerate[export]'` (or `pip install onnx onnxscript`)."
        ) from None
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    return lambda path: onnx.save_model(program.model_proto, path)


def run_onnx(path: str, images: torch.Tensor):
    """The file's logits through onnxruntime; None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


@contextlib.contextmanager
def quiet_torchscript():
    """TorchScript's deprecation notices (the format is asked for by name) and the tracer's note
    on the input-size check, which is rightly a constant: the contract fixes the size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def written_from_memory(save):
    """write(path) of a torch writer, save(obj, file): into memory first, then to path with
    Python's file, whose full disk is an OSError. Torch's own file writer meets a full disk
    in a destructor, where it aborts the process (TorchScript) or raises a RuntimeError."""

    def write(path: str) -> None:
        buffer = io.BytesIO()
        save(buffer)
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())

    return write


def save_torchscript(traced, file) -> None:
    with quiet_torchscript():
        torch.jit.save(traced, file)


def run_torchscript(path: str, images: torch.Tensor) -> torch.Tensor:
    with quiet_torchscript():
        return torch.jit.load(path)(images)


def writer_and_runner(fmt: str, module, example):
    """(write(path), run(path, images) -> logits or None) of a format."""
    batch = torch.export.Dim("batch", min=1, max=2**20)
    if fmt == "onnx":
        return onnx_writer(module, example, batch), run_onnx
    if fmt == "torchscript":
        with quiet_torchscript():
            traced = torch.jit.trace(module, example)
        return written_from_memory(lambda f: save_torchscript(traced, f)), run_torchscript
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    return written_from_memory(lambda f: torch.export.save(program, f)), (
        lambda path, images: torch.export.load(path).module()(images)
    )


@torch.no_grad()
def export_file(run, fmt: str, out: str) -> None:
    """Write the run's model as fmt to out, once it gives PyTorch's logits back."""
    trained = load_portable(run)
    side = trained.card["image_size"]
    generator = torch.Generator().manual_seed(0)
    example, check = (
        torch.randint(0, 256, (n, 3, side, side), generator=generator, dtype=torch.uint8)
        for n in (EXAMPLE_BATCH, CHECK_BATCH)
    )
    write, runner = writer_and_runner(fmt, trained, example)
    # A scratch file named like out (torch.export.load reads a .pt2 archive only from a name
    # ending in .pt2), checked, then copied to out through atomic_write.
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as scratch:
        candidate = os.path.join(scratch, os.path.basename(out))
        try:
            write(candidate)
        except OSError as error:
            error.filename = out  # not the scratch file, which goes with its folder
            raise
        logits = runner(candidate, check)
        if logits is not None:
            difference = (logits - trained(check)).abs().max().item()
            if not difference <= TOLERANCE:
                raise RuntimeError(
                    f"the {fmt} file gives logits up to {difference:.2g} away from PyTorch's "
                    f"(more than {TOLERANCE:g}); it was not written"
                )
        with open(candidate, "rb") as source:
            atomic_write(out, lambda f: shutil.copyfileobj(source, f))
    checked = (
        f"loaded back, its logits are within {difference:.1e} of PyTorch's on {CHECK_BATCH} images"
        if logits is not None
        else "not checked: onnxruntime is not installed (pip install onnxruntime)"
    )
    print(
        f"wrote {out} ({fmt}): input uint8 RGB N x 3 x {side} x {side} (any N), output N x "
        f"{len(trained.classes)} logits; {checked}"
    )


def export(args) -> None:
    run = open_finished_run(args.run)
    if args.format is None:
        if args.out:
            raise UserError("--out needs --format (onnx, torchscript or exported).")
        write_portable(run, args.data_dir)
        return
    if not args.out:
        raise UserError(f"--format {args.format} needs --out FILE: where to write it.")
    if args.format == "exported" and not args.out.endswith(".pt2"):
        raise UserError(
            f"--format exported writes a torch.export archive, which torch.export.load reads "
            f"only from a name ending in .pt2; --out {args.out} does not. Name it FILE.pt2."
        )
    export_file(run, args.format, out_path(args.out, run.dir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
