"""What the tests share: running train.py the way users do (python, accelerate launch, torchrun)
or in this process, tiny synthetic runs, reading a run folder back, image folders to train on,
W&B's offline files, and which tests start a process (tests/conftest.py marks those slow)."""

import ast
import contextlib
import glob
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
BIN = Path(sys.executable).parent
TEST_CACHE = os.path.join(tempfile.gettempdir(), "cifar-accelerate-test-cache")
# Examples per Hypothesis test; `make test-fast` runs fewer.
EXAMPLES = int(os.environ.get("CIFAR_HYPOTHESIS_EXAMPLES", "30"))


def require(condition: bool, reason: str) -> None:
    """Skip when a system dependency is missing; in CI (CIFAR_REQUIRE_ALL_TESTS=1) fail."""
    if condition:
        return
    if os.environ.get("CIFAR_REQUIRE_ALL_TESTS") == "1":
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def require_package(name: str) -> None:
    require(importlib.util.find_spec(name) is not None, f"the {name} package is not installed")


# Running train.py.


def launcher(kind: str, processes: int = 1) -> list[str]:
    if kind == "python":
        return [sys.executable]
    if kind == "torchrun":
        return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}"]
    if kind == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--quiet", "--num_processes", "1", "--cpu"]
    raise ValueError(kind)


def cuda_devices() -> int:
    """GPUs torch sees here (0 without CUDA); counted without initialising CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def on_cuda() -> bool:
    return cuda_devices() > 0


_NOTED = set()


def devices_for(processes: int) -> dict:
    """The environment of a run of `processes` processes: where this machine has GPUs, but fewer
    than that, every rank would share cuda:0, so the run goes to the CPU (gloo) instead, which a
    one-line note says. A single-process run compared with such a run takes it too."""
    gpus = cuda_devices()
    if processes <= 1 or gpus == 0 or gpus >= processes:
        return {}
    if processes not in _NOTED:
        _NOTED.add(processes)
        print(f"note: {processes} processes and {gpus} GPU(s) here: those runs use gloo on the "
              "CPU (CUDA_VISIBLE_DEVICES='')", file=sys.stderr)  # fmt: skip
    return {"CUDA_VISIBLE_DEVICES": ""}


def train_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.update({"CIFAR_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["XDG_CACHE_HOME"] = TEST_CACHE  # decoded image folders and unpacked IDX files
    env.update(extra)
    return env


def run_train(
    args,
    *,
    kind: str = "python",
    processes: int = 1,
    env: dict | None = None,
    check: bool = True,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess; fail the test with its output when it fails unexpectedly."""
    command = launcher(kind, processes) + [str(ROOT / "train.py"), *map(str, args)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=train_env(**{**devices_for(processes), **(env or {})}),
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def train_to_log(args, log, *, kind: str = "python", processes: int = 1) -> str:
    """Run train.py with its stdout and stderr in the file log, as a job's log is (no
    terminal); the log's text. Fails the test when the run fails."""
    command = launcher(kind, processes) + [str(ROOT / "train.py"), *map(str, args)]
    with open(log, "w") as out:
        code = subprocess.run(
            command,
            cwd=ROOT,
            env=train_env(**devices_for(processes)),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        ).returncode
    text = Path(log).read_text()
    if code != 0:
        pytest.fail(f"{' '.join(command)} exited {code}\n{text}")
    return text


def deliverable_ctrl_c() -> None:
    """A child's start: SIGINT as a terminal's program gets it. A process started in the
    background by a script inherits SIGINT ignored (and train.py keeps it so), which would make
    every Ctrl-C test depend on how the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_train(args, kind="python", processes=1) -> subprocess.Popen:
    """train.py started in a session of its own, its output in one pipe (to signal it)."""
    command = launcher(kind, processes) + [str(ROOT / "train.py"), *map(str, args)]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=train_env(**devices_for(processes)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=deliverable_ctrl_c,
    )


def wait_for_checkpoint(run_dir, after_step: int, process: subprocess.Popen, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [
            int(os.path.basename(p).split("-")[1])
            for p in glob.glob(f"{run_dir}/checkpoints/step-*")
        ]
        if any(s > after_step for s in steps):
            return
        if process.poll() is not None:
            pytest.fail(f"training ended before the kill:\n{process.stdout.read()}")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def train_in_process(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of train.py's main() called with argv in this process."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    import train

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train.main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        torch.use_deterministic_algorithms(False)
    return code, out.getvalue(), err.getvalue()


def tiny_run(
    *extra, dataset="synthetic", train=1024, test=256, batch=64, epochs=1, tracker="none"
) -> list[str]:
    """The flags of a small run: the synthetic set's sizes (for --dataset synthetic), the batch
    size and the epochs; a setting given as None is left to its default. extra comes last."""
    flags = ["--dataset", dataset] + (["--tracker", tracker] if tracker is not None else [])
    if dataset == "synthetic":
        sizes = (("--synthetic-train-size", train), ("--synthetic-test-size", test))
        flags += [str(x) for flag, value in sizes if value is not None for x in (flag, value)]
    for flag, value in (("--batch-size", batch), ("--epochs", epochs)):
        if value is not None:
            flags += [flag, str(value)]
    return [*flags, *map(str, extra)]


SMOKE = tiny_run()  # 16 steps of batch 64 on 1024 images, 256 test images
SMALL = tiny_run("--width", "8", "--head-hidden", "32", train=256, test=64)  # 4 steps an epoch


def assert_refused(result, *phrases):
    """Exit 2, one paragraph naming the problem, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    for phrase in phrases:
        assert phrase in message, (phrase, result.stderr)


def warning_lines(output: str) -> list[str]:
    """The project's warnings in a run's output, each one `warning: ...` line: none in Python's
    format (`file:line: Category: message` and the source line) from the project's code."""
    ours = re.compile(r"(cifar/|train\.py)[^:\s]*:\d+: \w*Warning")
    assert not ours.search(output), output
    return [line for line in output.splitlines() if line.startswith("warning: ")]


# Reading a run folder back.


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


TIMING_KEYS = ("epoch_seconds", "train_images_per_second")


def comparable_metrics(run_dir) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run_dir)]


def final_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    newest = sorted(glob.glob(f"{run_dir}/checkpoints/step-*/model.safetensors"))[-1]
    return {k: v.clone() for k, v in load_file(newest).items()}  # not backed by the file


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def folder_hashes(folder, folders: bool = False) -> dict:
    """{path below folder: SHA-256 of its bytes} of every file below folder (and with folders,
    every folder as "dir"): equal dicts mean an untouched folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(Path(folder).rglob("*"))
        if folders or p.is_file()
    }


class Payload:
    """Unpickling this would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# Image folders: DATA_DIR/{train,test}/<class>/<image>.


def make_image_folders(root, per_class: int = 3, size=(20, 24)):
    """A red and a blue class of plain PNGs, image i of each size[0] + i wide."""
    from PIL import Image

    width, height = size
    for split in ("train", "test"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = Path(root) / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (width + i, height), colour).save(folder / f"{i}.png")


def make_jpegs(root, per_class: int = 8, size=(40, 30)):
    """Noisy red and blue JPEGs: a learnable two-class folder."""
    from PIL import Image

    for split in ("train", "test"):
        for index, colour in enumerate(("red", "blue")):
            folder = root / split / colour
            folder.mkdir(parents=True)
            for i in range(per_class):
                noise = Image.effect_noise(size, 40).convert("RGB")
                tint = Image.new("RGB", size, (200, 30, 30) if index == 0 else (30, 30, 200))
                Image.blend(noise, tint, 0.6).save(folder / f"{i:03}.jpg", quality=90)
    return root


def smooth_image(width: int, height: int, mode: str = "RGB", seed: int = 0):
    """A photo-like image: a random colour field interpolated smoothly, with mild noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = (smooth + rng.normal(0, 4, smooth.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


# W&B's offline files, read back from their run-<id>.wandb file with wandb's own protobuf
# classes: a LevelDB-style log of 32 KiB blocks whose records are wandb_internal_pb2.Record.

BLOCK = 32 * 1024
HEADER = 7  # file header: b":W&B", 2 magic bytes, a version byte; each record header: 7 bytes


def read_wandb_records(path: Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    records, payload, position = [], b"", HEADER
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:  # block trailer: zero padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0:  # zero padding to the end of the block
            position += left_in_block
            continue
        payload += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(records) -> list[dict]:
    return [
        {item_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def wandb_summary(records) -> dict:
    """The run summary as W&B holds it at the end: every summary update applied in order."""
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in record.summary.update})
    return summary


def wandb_run_record(records):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def offline_logs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def isolated_home(tmp_path) -> dict:
    """A user's default W&B environment, added to train_env's (which drops every WANDB_*): no
    key, no WANDB_MODE, and no netrc or wandb settings file to find one in."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
        "NETRC": "",
    }


# Which tests start a process. A test does when its function, a fixture it uses, or a function
# of tests/ either calls (followed through the names of each function's module) names one of
# these: tests/conftest.py marks it slow, and the fast tier refuses to start a process.

PROCESS_MODULES = ("subprocess", "multiprocessing", "torch.multiprocessing")
PROCESS_FUNCTIONS = {
    ("accelerate", "debug_launcher"),
    ("accelerate", "notebook_launcher"),
    *(("os", name) for name in ("fork", "forkpty", "system", "popen", "posix_spawn")),
    *(("os", name) for name in ("posix_spawnp", "spawnv", "spawnve", "spawnvp", "spawnl")),
}


def starts_processes(thing) -> bool:
    """Whether thing (a module, function or class) is one of those that start a process."""
    if inspect.ismodule(thing):
        module = thing.__name__
    elif callable(thing):
        module = getattr(thing, "__module__", None) or ""
        if any(thing is getattr(sys.modules.get(m), f, 0) for m, f in PROCESS_FUNCTIONS):
            return True
    else:
        return False
    return module in PROCESS_MODULES or module.startswith(tuple(m + "." for m in PROCESS_MODULES))


def imported_names(node) -> list[tuple[str, str | None]]:
    """(module, name) of what an import statement imports; name None for a whole module."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [(node.module, alias.name) for alias in node.names]
    return []


def named(node, names: dict):
    """The object a name or a dotted name (a.b.c) of the source stands for, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = named(node.value, names)
        if inspect.ismodule(owner) or inspect.isclass(owner):
            return getattr(owner, node.attr, None)
    return None


def imported(module: str, name: str | None):
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    return found if name is None else getattr(found, name, None)


def tests_code(thing) -> bool:
    return (getattr(thing, "__module__", None) or "").startswith("tests")


def starts_a_process(function, seen: set | None = None) -> bool:
    """Whether function, or a function or class of tests/ it names, names a way to start a
    process (its source read as a syntax tree; names resolved through its module's globals)."""
    seen = set() if seen is None else seen
    function = inspect.unwrap(getattr(function, "__func__", function))
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", None)
    if inner is not None:  # a Hypothesis test: the function it wraps
        function = inner
    if id(function) in seen:
        return False
    seen.add(id(function))
    if inspect.isclass(function):
        members = vars(function).values()
        return any(starts_a_process(m, seen) for m in members if inspect.isfunction(m))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    names = getattr(function, "__globals__", {})
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            things = [imported(module, name) for module, name in imported_names(node)]
        elif isinstance(node, (ast.Name, ast.Attribute)):
            things = [named(node, names)]
        else:
            continue
        for thing in things:
            if starts_processes(thing):
                return True
            ours = tests_code(thing) and (inspect.isfunction(thing) or inspect.isclass(thing))
            if ours and starts_a_process(thing, seen):
                return True
    return False


def item_starts_a_process(item, in_process_fixtures=()) -> bool:
    """Whether a collected test, or one of the fixtures it uses, starts a process."""
    if starts_a_process(item.function):
        return True
    fixtures = getattr(item, "_fixtureinfo", None)
    for name, definitions in getattr(fixtures, "name2fixturedefs", {}).items():
        if name in in_process_fixtures:
            continue
        for definition in definitions:
            func = getattr(definition, "func", None)
            if tests_code(func) and starts_a_process(func):
                return True
    return False


# Finished run folders made up in a few milliseconds, as train.py writes them: for the report's
# and the study's tests of what they draw and write, where training real runs adds nothing.
def write_run(
    folder: Path,
    *,
    seed: int = 0,
    epochs: int = 2,
    dataset: str = "synthetic",
    classes=("cat", "dog", "emu"),
    tested=None,
    zero_for_untested: bool = False,
    summary: dict | None = None,
    **config,
) -> Path:
    """A finished run folder made up as train.py writes one: `tested[i]` test images of class
    i (0: none, whose accuracy is null, or 0.0 as runs before null wrote it), the numbers drawn
    from the seed. summary overrides summary.json's keys, config those of config.json."""
    rng = random.Random(seed)
    tested = list(tested or [20] * len(classes))
    matrix = []
    for i, count in enumerate(tested):
        right = rng.randint(count // 2, count)
        row = [0] * len(classes)
        row[i] += right
        row[(i + 1) % len(classes)] += count - right
        matrix.append(row)
    per_class = {
        name: row[i] / sum(row) if sum(row) else (0.0 if zero_for_untested else None)
        for i, (name, row) in enumerate(zip(classes, matrix, strict=True))
    }
    accuracy = sum(matrix[i][i] for i in range(len(classes))) / max(sum(tested), 1)
    accuracy = (summary or {}).get("test_accuracy", accuracy)
    metrics = [
        {
            "format_version": 1,
            "epoch": epoch,
            "train_loss": 2.0 / epoch + rng.random() / 10,
            "train_accuracy": min(1.0, accuracy * epoch / epochs + rng.random() / 10),
            "test_loss": 2.2 / epoch + rng.random() / 10,
            "test_accuracy": accuracy * epoch / epochs,
            "lr": 0.01,
            "epoch_seconds": 1.5,
            "train_images_per_second": 600.0 + rng.random(),
        }
        for epoch in range(1, epochs + 1)
    ]
    record = {
        "format_version": 1,
        "model": "cnn",
        "dataset": dataset,
        "epochs": epochs,
        "test_accuracy": accuracy,
        "test_loss": metrics[-1]["test_loss"],
        "best_test_accuracy": accuracy,
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "classes": list(classes),
        "num_test_samples": sum(tested),
        "world_size": 1,
        "mixed_precision": "no",
        "wall_seconds": 1.5 * epochs + 0.5,
        "train_images_per_second": 600.0,
        **(summary or {}),
    }
    settings = {
        "format_version": 1,
        "dataset": dataset,
        "train_subset": 0,
        "test_subset": 0,
        "synthetic_train_size": 1024,
        "seed": seed,
        "device_name": "a test CPU",
        **config,
    }
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(settings))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (folder / "summary.json").write_text(json.dumps(record))
    return folder


# A finished Fashion-MNIST run (real data: 2,000 training and 512 test images, one epoch),
# trained once per session and shared by the tests of evaluate, predict and export.
TEST_IMAGES, BATCH = 512, 128  # 2 processes: shards of 256, two whole batches each


FASHION_RUN = [
    "--dataset", "fashion-mnist", "--data-dir", FASHION_DIR, "--train-subset", "2000",
    "--test-subset", str(TEST_IMAGES), "--batch-size", str(BATCH), "--epochs", "1",
    "--tracker", "none",
]  # fmt: skip


_RUNS = {}


def fashion_run(tmp_path_factory) -> Path:
    """The finished Fashion-MNIST run of this session (trained on first use), on the device
    that two processes get: evaluate's tests score it on one and on two to the last bit."""
    if "fashion" not in _RUNS:
        require(os.path.isdir(FASHION_DIR), f"Fashion-MNIST is not in {FASHION_DIR}")
        run_dir = tmp_path_factory.mktemp("use") / "fashion-run"
        run_train([*FASHION_RUN, "--output-dir", run_dir], env=devices_for(2))
        _RUNS["fashion"] = run_dir
    return _RUNS["fashion"]


def run_module(module: str, args, *, kind="python", processes=1, check=True, env=None):
    """python -m module args, through a launcher as users start it."""
    result = subprocess.run(
        [*launcher(kind, processes), "-m", module, *map(str, args)],
        cwd=ROOT,
        env=train_env(PYTHONPATH=str(ROOT), **{**devices_for(processes), **(env or {})}),
        text=True,
        capture_output=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        pytest.fail(f"{module} {args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def call_main(main, argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a tool's main(argv), in this process."""
    from accelerate.state import AcceleratorState, GradientState

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return code, out.getvalue(), err.getvalue()


def assert_one_paragraph(code: int, err: str, *phrases: str) -> None:
    """Exit 2, one 'error:' paragraph on one line, no traceback, and the phrases in it."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def assert_disk_error(code: int, err: str, *phrases: str) -> None:
    """Exit 74 (a file could not be written), one 'error:' paragraph on one line, no traceback,
    and the phrases in it."""
    assert code == 74, err
    assert "Traceback" not in err and "terminate called" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


@contextlib.contextmanager
def full_disk(tmp_path: Path):
    """A tmpfs mounted at tmp_path/disk, filled to the last byte (needs root); unmounted after."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", disk], check=True)
    try:
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while f.write(b"\0" * 4096):
                pass
        yield disk
    finally:
        subprocess.run(["umount", disk], check=True)


def copy_of(run_dir: Path, tmp_path: Path, edit=None) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    if edit is not None:
        edit(copy)
    return copy


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def fashion_test_set():
    """The run's test set as training read it."""
    from cifar.config import Config
    from cifar.data import build_datasets

    config = Config(dataset="fashion-mnist", data_dir=FASHION_DIR, test_subset=TEST_IMAGES)
    return build_datasets(config)[1]


def eval_path_scores(run_dir: Path, images, tta: bool = False):
    """Softmax of the logits the evaluation computes for images, in its batches; with tta, as
    the run's own evaluation scored them (with test-time flips if it used them)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from cifar.evaluation import classify
    from cifar.trained import evaluation_model, load_portable, open_finished_run

    run = open_finished_run(str(run_dir))
    try:
        model, to_input = evaluation_model(load_portable(run), run.config, Accelerator(cpu=True))
        flips = tta and run.config.tta
        with torch.no_grad():
            logits = [classify(model, to_input(batch), flips) for batch in images.split(BATCH)]
    finally:
        AcceleratorState._reset_state(True)
    return torch.cat(logits).softmax(dim=1)


def kill_run(process: subprocess.Popen, run_dir) -> None:
    """SIGKILL the launcher and every process training into run_dir (torchrun's workers run in
    sessions of their own, outside the launcher's process group)."""
    os.killpg(process.pid, signal.SIGKILL)
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if str(run_dir).encode() in f.read():
                    os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    process.wait()


class HostReads:
    """Counts the reads of a tensor's value into Python (a device sync on a GPU) while active:
    .item(), .tolist(), bool() and torch.unique (which sizes its result from the values)."""

    def __init__(self, monkeypatch):
        import torch

        self.count = 0
        for owner, name in ((torch.Tensor, "item"), (torch.Tensor, "tolist"),
                            (torch.Tensor, "__bool__"), (torch, "unique")):  # fmt: skip
            monkeypatch.setattr(owner, name, self.counted(getattr(owner, name)))

    def counted(self, function):
        def read(*args, **kwargs):
            self.count += 1
            return function(*args, **kwargs)

        return read
