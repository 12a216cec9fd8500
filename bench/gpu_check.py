r"""The GPU check: every GPU path of the project in one command, in stages bounded in time.

    python bench/gpu_check.py --out gpu-check          # one GPU: about 8 minutes on an H100/H200
    python bench/gpu_check.py --out gpu-check --dry    # the same at toy sizes on the CPU
    make gpu-check OUT=gpu-check [DRY=1]

It runs from the checkout with whatever python runs it: nothing is installed or downloaded
(synthetic data, --no-pretrained, --tracker none, ImageFolder JPEGs written here). Each stage
has a time budget; on the GPU its training runs and probes run in child processes of this
script, killed when the budget is spent, and with --dry in this process under an alarm (a
process start costs more than a toy run). Stages that need CUDA run their CPU equivalent with
--dry, or are reported as skipped with the reason. What each stage must show is in STAGES, next
to it, and checked.

As it goes, OUT/results.jsonl gets one line per finished stage (stage, status, seconds,
figures, checks, expectation), OUT/logs/ each run's output and OUT/runs/ its run folder;
OUT/summary.txt is the summary printed at the end and OUT/benchmarks.md a copy of
docs/benchmarks.md with the benchmark's section for this device. Exit code: 0 when every stage
that ran passed, 1 when one failed, 2 without CUDA and without --dry.
"""

# ruff: noqa: E402  (the path to this checkout goes first, so the script runs without installing)
import argparse
import contextlib
import functools
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

CHANCE = 0.1  # the synthetic set has 10 classes
# At least three times chance: the synthetic set is learnable (SimpleCNN passes 90% on it).
CNN_ACCURACY = 0.3
# Host syncs per steady-state training step, counted with torch.cuda.set_sync_debug_mode: none
# in fp32 and bf16; fp16's GradScaler reads its inf check back once per step.
MAX_SYNCS_PER_STEP = {"no": 0, "bf16": 0, "fp16": 1}
# Graphs torch.compile makes in a whole run: the training step and evaluation (grad mode off;
# the last evaluation batch is padded to the full size), a third allowed; more means a graph
# break or a recompile per epoch.
MAX_RUN_GRAPHS = 3
# Cached features against the frozen backbone run anew on the same images (another batch size,
# no autocast): max |difference| over max |feature|. fp32 on the CPU is the same arithmetic;
# on a GPU convolution algorithms (and TF32) differ with the batch size.
FEATURE_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-2}

# (sizes on a GPU, sizes with --dry)
SIZES = {
    "cnn": (
        {"train": 20_000, "test": 2_000, "batch": 250, "epochs": 3, "warm": 10, "steps": 30},
        {"train": 1_024, "test": 256, "batch": 64, "epochs": 1, "warm": 2, "steps": 4},
    ),
    "resnet": (
        {
            "train": 4096,
            "test": 1024,
            "batch": 128,
            "epochs": 2,
            "size": 224,
            "warm": 5,
            "steps": 10,
        },
        {"train": 96, "test": 32, "batch": 16, "epochs": 1, "size": 32, "warm": 1, "steps": 2},
    ),
    "folder": (
        {"per_class": 512, "test_per_class": 64, "batch": 64, "epochs": 2, "workers": 4},
        {"per_class": 32, "test_per_class": 8, "batch": 16, "epochs": 1, "workers": 0},
    ),
    "bench": (
        "--images 10240 --batch-size 512 --resnet-images 1024 --cache-images 4096 "
        "--resnet-batch-size 128 --folder-images 256 --folder-batch-size 128 --warmup 5 "
        "--repeats 2 --num-workers 2",
        "--device cpu --images 128 --batch-size 32 --resnet-images 4 --cache-images 4 "
        "--resnet-batch-size 4 --image-size 32 --folder-images 8 --folder-batch-size 4 "
        "--warmup 1 --repeats 1 --num-workers 0 --epochs 2",
    ),
}
# The rows the benchmark must write, and its targets (docs/benchmarks.md), reported, not failed.
BENCH_CASES = ("cnn", "resnet-frozen", "resnet-cached", "resnet-finetune", "imagefolder")
TARGETS = (
    ("cnn", "ours", 200_000, "SimpleCNN at least 200,000 images/s"),
    ("resnet-cached", "feature pass", 12_000, "ResNet-50 feature pass at least 12,000 images/s"),
    ("resnet-finetune", "ours", 2_500, "ResNet-50 fine-tune at least 2,500 images/s"),
)


class StageTimeout(BaseException):
    """A stage ran past its budget (with --dry, raised by the alarm inside the running code)."""


class Skip(Exception):
    """The stage cannot run here; the message says why."""


@dataclass
class Stage:
    name: str
    budget: float  # seconds on one H100/H200
    expect: str  # what it must show
    run: object  # run(check) -> figures


@dataclass
class Check:
    """A stage's figures and checks as they are made."""

    context: "Context"
    stage: Stage
    figures: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)

    def __call__(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": str(detail)})
        return bool(ok)

    @property
    def ctx(self) -> "Context":
        return self.context


class Context:
    """What the stages share: the output folder, the mode, the stage's deadline, and running
    tasks (training runs and probes) in a child process or, with --dry, in this one."""

    def __init__(self, out: Path, dry: bool, cuda: bool):
        self.out, self.dry, self.cuda = out, dry, cuda
        self.deadline = math.inf
        self.env = {
            **os.environ,
            "CIFAR_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "XDG_CACHE_HOME": str(out / "cache"),  # a fresh image cache: the pass runs
        }
        self.sizes = {name: pair[1 if dry else 0] for name, pair in SIZES.items()}

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StageTimeout()
        return left

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def tasks(self, name: str, tasks: list[dict]) -> list[dict]:
        """Run tasks (see TASKS) in order, their output in logs/<name>.log; their results."""
        log = self.out / "logs" / f"{name}.log"
        if self.dry:
            with (
                open(log, "a") as out,
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
            ):
                results = [run_task(task) for task in tasks]
            return results
        result_file = self.out / "logs" / f"{name}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--tasks", json.dumps(tasks)]
        command += ["--result", str(result_file)]
        code = self.command(command, log)
        results = json.loads(result_file.read_text()) if result_file.exists() else []
        if code != 0 and len(results) < len(tasks):
            results.append({"error": f"the process exited {code}; see logs/{name}.log"})
        return results

    def command(self, command: list[str], log: Path, env: dict | None = None) -> int:
        """command's exit code, its output in log; killed with its children at the deadline."""
        with open(log, "a") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                return process.wait(timeout=self.left())
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise StageTimeout() from None

    @contextlib.contextmanager
    def stage_time(self, budget: float):
        self.deadline = time.monotonic() + budget
        if not self.dry:
            yield
            return

        def ring(signum, frame):
            raise StageTimeout()

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# Tasks: what a child process (or, with --dry, this one) runs. Each returns a JSON-able dict.


def toolchain() -> dict:
    """The C compiler and Python headers torch.compile's inductor builds its kernels with."""
    compilers = (os.environ.get("CC", "cc"), "gcc", "clang")
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return {
        "c_compiler": next(filter(None, map(shutil.which, compilers)), None),
        "python_headers": str(headers) if headers.exists() else None,
    }


def task_env(_task) -> dict:
    import accelerate
    import torch
    import torchvision

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "accelerate": accelerate.__version__,
    }
    with contextlib.suppress(ImportError):
        import torchmetrics

        versions["torchmetrics"] = torchmetrics.__version__
    figures = {
        **versions,
        "cuda": torch.cuda.is_available(),
        **toolchain(),
    }
    if torch.cuda.is_available():
        figures.update(
            device=torch.cuda.get_device_name(0),
            devices=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            bf16=torch.cuda.is_bf16_supported(),
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
    else:
        figures.update(device="cpu", bf16=True)  # the CPU autocasts bf16 on any x86-64
    return figures


def graphs_made() -> int:
    """Graphs torch.compile (dynamo) made in this process so far."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """torch.compile with another backend (--dry: eager, which traces and counts the same
    graphs without the C compiler and the minutes inductor takes on a CPU)."""
    import torch

    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def reset_process_state() -> None:
    """What one run leaves behind in a process that runs another (as tests/helpers.py does)."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.use_deterministic_algorithms(False)


def peak_memory() -> dict:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_mib": round(torch.cuda.max_memory_allocated() / 2**20)}


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def task_train(task) -> dict:
    """train.py's main() on task["argv"], as `python train.py ARGV` runs it."""
    import train

    reset_peak()
    graphs, started = graphs_made(), time.perf_counter()
    try:
        with compile_backend(task.get("backend")):
            code = train.main(task["argv"])
    except SystemExit as stop:
        code = stop.code
    finally:
        reset_process_state()
    seconds = round(time.perf_counter() - started, 2)
    return {"exit_code": code, "seconds": seconds, "graphs": graphs_made() - graphs,
            **peak_memory()}  # fmt: skip


def task_step(task) -> dict:
    """A probe of the training step as the run assembles it: task["warm"] steps to warm up
    (autotuning, compilation), then task["steps"] steps with every host sync counted."""
    from cifar.assemble import setup_run
    from cifar.config import parse_config

    with compile_backend(task.get("backend")):
        run = setup_run(parse_config(task["argv"]))
        try:
            return probe_steps(run, task["warm"], task["steps"])
        finally:
            run.accelerator.end_training()
            if run.folder is not None:
                run.folder.release()
            reset_process_state()


def probe_steps(run, warm: int, steps: int) -> dict:
    import torch

    from cifar.engine import Totals, train_epoch

    device = run.accelerator.device
    cuda = device.type == "cuda"
    loader = run.train_loader
    assert warm + steps <= len(loader), (warm, steps, len(loader))
    loader.set_epoch(0)
    train_epoch(run, Totals.zeros(device), after_step=lambda done, loss: done >= warm)
    graphs_warm = graphs_made()
    reset_peak()
    marks, last = [], []

    def after_step(done, loss):
        marks.append((len(caught), time.perf_counter()))
        last[:] = [loss]
        return done >= steps

    loader.set_epoch(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(run, Totals.zeros(device), after_step=after_step)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught[marks[0][0] : marks[-1][0]] if "synchroniz" in str(w.message)]
    seconds = marks[-1][1] - marks[0][1]
    figures = {
        "device": device.type,
        "precision": run.accelerator.mixed_precision,
        # between the first and the last measured step: the epoch's start is not a step's
        "syncs_per_step": len(syncs) / (len(marks) - 1) if cuda else None,
        "sync_sites": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:8],
        "steady_state_images_per_s": round(loader.plan.batch_size * (len(marks) - 1) / seconds)
        if seconds > 0
        else None,
        "graphs_after_warm_up": graphs_warm,
        "graphs_made_in_steady_state": graphs_made() - graphs_warm,
        "loss_finite": bool(torch.isfinite(last[0]).item()),
        **peak_memory(),
    }
    scaler = run.accelerator.scaler
    if scaler is not None:
        figures["grad_scaler_scale"] = float(scaler.get_scale())
    return figures


def task_features(task) -> dict:
    """The feature cache (feature_loaders) against the frozen backbone run anew on the same
    images: in order, in batches of 100, without autocast."""
    import torch

    from cifar.build import make_accelerator, place_model
    from cifar.config import parse_config
    from cifar.data import build_datasets
    from cifar.data.loaders import build_loaders, feature_loaders
    from cifar.data.transforms import input_transform
    from cifar.models import build_model

    config = parse_config(task["argv"])
    try:
        accelerator = make_accelerator(config)
        torch.manual_seed(config.seed)
        train, test = build_datasets(config)
        model = place_model(config, build_model(config, len(train.classes)), accelerator.device)
        train_loader, test_loader = build_loaders(config, accelerator, train, test)
        to_input = input_transform(config, train.images, accelerator.device)
        cached, _ = feature_loaders(config, accelerator, model, to_input, train_loader, test_loader)
        model.eval()
        with torch.no_grad():
            chunks = train_loader.images.split(100)
            reference = torch.cat([model.features(to_input(c)).float() for c in chunks])
        difference = (cached.images.float() - reference).abs().max().item()
        scale = reference.abs().max().item()
        return {
            "device": accelerator.device.type,
            "images": len(reference),
            "feature_width": reference.shape[1],
            "max_abs_difference": difference,
            "max_abs_feature": scale,
            "relative_difference": difference / max(scale, 1e-12),
            "labels_in_order": bool(torch.equal(cached.labels.cpu(), train.labels)),
        }
    finally:
        reset_process_state()


def task_bench(task) -> dict:
    from bench import throughput

    started = time.perf_counter()
    throughput.main(task["argv"])
    return {"exit_code": 0, "seconds": round(time.perf_counter() - started, 2)}


TASKS = {
    "env": task_env,
    "train": task_train,
    "step": task_step,
    "features": task_features,
    "bench": task_bench,
}


def run_task(task: dict) -> dict:
    try:
        return TASKS[task["kind"]](task)
    except StageTimeout:
        raise
    except Exception as error:  # reported as the stage's failure, with the traceback in its log
        import traceback

        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


# Reading a run folder back.


def read_run(run_dir: Path) -> dict:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"metrics": metrics, "summary": summary}


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    newest = sorted(glob.glob(f"{run_dir}/checkpoints/step-*/model.safetensors"))[-1]
    return load_file(newest)


TIMING = ("epoch_seconds", "train_images_per_second")


def comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


# The stages' flags and shared checks.


def synthetic(ctx: Context, kind: str, *extra) -> list[str]:
    s = ctx.sizes[kind]
    flags = ["--dataset", "synthetic", "--tracker", "none", "--seed", "0"]
    flags += ["--synthetic-train-size", s["train"], "--synthetic-test-size", s["test"]]
    flags += ["--batch-size", s["batch"], "--epochs", s["epochs"]]
    if kind == "resnet":
        flags += ["--model", "resnet50", "--no-pretrained", "--image-size", s["size"]]
    return [str(f) for f in [*flags, *extra]]


def train_and_probe(check: Check, name: str, flags: list[str], *, probe=True, backend=None):
    """A training run (its run folder read back and checked) and, with probe, the step probe
    of the same settings; their figures."""
    ctx = check.ctx
    kind = "resnet" if "resnet50" in flags else "cnn"
    tasks = [{"kind": "train", "argv": [*flags, "--output-dir", str(ctx.run_dir(name))],
              "backend": backend}]  # fmt: skip
    if probe:
        s = ctx.sizes[kind]
        tasks.append({"kind": "step", "argv": [*flags, "--output-dir",
                      str(ctx.run_dir(name + "-probe"))], "warm": s["warm"], "steps": s["steps"],
                      "backend": backend})  # fmt: skip
    results = ctx.tasks(name, tasks)
    trained = results[0] if results else {"error": "no result"}
    run = None
    if check("trains", trained.get("exit_code") == 0, trained.get("error", trained)):
        run = read_run(ctx.run_dir(name))
        losses = [m[k] for m in run["metrics"] for k in ("train_loss", "test_loss")]
        check("finite losses", all(map(math.isfinite, losses)), losses)
        check.figures.update(
            test_accuracy=run["summary"]["test_accuracy"],
            train_images_per_s=round(run["metrics"][-1]["train_images_per_second"]),
            run_seconds=trained["seconds"],
            precision=run["summary"]["mixed_precision"],
        )
        if "peak_mib" in trained:
            check.figures["run_peak_mib"] = trained["peak_mib"]
        if trained.get("graphs"):
            check.figures["run_graphs"] = trained["graphs"]
    if probe:
        step = results[1] if len(results) > 1 else {"error": "no result"}
        if check("step probe", "error" not in step, step.get("error", "")):
            check("probe loss finite", step["loss_finite"])
            check.figures.update({f"probe_{k}": v for k, v in step.items() if v is not None})
            limit = MAX_SYNCS_PER_STEP.get(step["precision"])
            if step["syncs_per_step"] is not None and limit is not None:
                check(f"syncs per step <= {limit}", step["syncs_per_step"] <= limit,
                      step["sync_sites"])  # fmt: skip
        return run, step
    return run, None


def above_chance(check: Check, run, threshold: float | None) -> None:
    if run is not None and threshold is not None:
        accuracy = run["summary"]["test_accuracy"]
        check(f"test accuracy >= {threshold}", accuracy >= threshold, accuracy)


# The stages.


def stage_env(check: Check) -> dict:
    ctx = check.ctx
    figures = ctx.tasks("env", [{"kind": "env"}])[0]
    check("torch imports", "error" not in figures, figures.get("error", ""))
    if not ctx.dry:
        check("CUDA available", figures.get("cuda"))
        check("bf16 supported", figures.get("bf16"))
    return figures


def stage_cnn(precision: str):
    def stage(check: Check) -> dict:
        ctx = check.ctx
        if precision == "fp16" and not ctx.cuda:
            raise Skip("no CUDA (fp16 needs a GPU: train.py refuses it on the CPU)")
        name = "cnn-fp32" if precision == "no" else f"cnn-{precision}"
        extra = ["--ema", "0.9", "--tta"] if precision == "bf16" else []
        flags = synthetic(ctx, "cnn", "--mixed-precision", precision, *extra)
        run, step = train_and_probe(check, name, flags)
        above_chance(check, run, CNN_ACCURACY)
        if precision == "fp16" and run is not None:
            scalers = sorted(glob.glob(f"{ctx.run_dir('cnn-fp16')}/checkpoints/step-*/scaler.pt"))
            if check("grad scaler saved", scalers):
                import torch

                scale = torch.load(scalers[-1], weights_only=True)["scale"]
                scale = float(scale.item() if hasattr(scale, "item") else scale)
                check.figures["checkpoint_grad_scaler_scale"] = scale
                check("grad scaler scale finite and positive", math.isfinite(scale) and scale > 0)
        return check.figures

    return stage


def stage_compile(check: Check) -> dict:
    ctx = check.ctx
    backend = "eager" if ctx.dry else None
    if not ctx.dry:
        env = toolchain()
        if not env.get("c_compiler") or not env.get("python_headers"):
            raise Skip("no C compiler or no Python headers: torch.compile's inductor needs both")
    check.figures["backend"] = backend or "inductor"
    run, step = train_and_probe(
        check, "cnn-compile", synthetic(ctx, "cnn", "--compile"), backend=backend
    )
    above_chance(check, run, CNN_ACCURACY)
    if run is not None:
        graphs = check.figures.get("run_graphs", 0)
        check(f"1 to {MAX_RUN_GRAPHS} graphs in the run", 1 <= graphs <= MAX_RUN_GRAPHS, graphs)
    if step is not None and "error" not in step:
        check("no compilation in steady state", step["graphs_made_in_steady_state"] == 0)
    return check.figures


def stage_deterministic(check: Check) -> dict:
    ctx = check.ctx
    flags = synthetic(ctx, "cnn", "--deterministic", "--dropout", "0.2")
    runs = []
    for name in ("cnn-deterministic-a", "cnn-deterministic-b"):
        trained = ctx.tasks(
            name, [{"kind": "train", "argv": [*flags, "--output-dir", str(ctx.run_dir(name))]}]
        )
        trained = trained[0] if trained else {"error": "no result"}  # fmt: skip
        if not check(f"{name} trains", trained.get("exit_code") == 0, trained.get("error", "")):
            return check.figures
        runs.append(ctx.run_dir(name))
    a, b = (comparable(read_run(r)["metrics"]) for r in runs)
    check("identical metrics", a == b, "" if a == b else [a, b])
    wa, wb = final_weights(runs[0]), final_weights(runs[1])
    differing = [k for k in wa if not (wa[k] == wb[k]).all()]
    check("identical weights", wa.keys() == wb.keys() and not differing, differing[:5])
    check.figures.update(test_accuracy=a[-1]["test_accuracy"], tensors=len(wa))
    return check.figures


def stage_resnet(mode: str):
    def stage(check: Check) -> dict:
        ctx = check.ctx
        extra = {
            "frozen": ["--freeze", "backbone"],
            "cached": ["--freeze", "backbone", "--cache-features", "--augment", "none"],
            "finetune": ["--freeze", "none"],
        }[mode]
        flags = synthetic(ctx, "resnet", *extra)
        run, _ = train_and_probe(check, f"resnet-{mode}", flags, probe=mode != "cached")
        if mode == "finetune" and run is not None:
            losses = [m["train_loss"] for m in run["metrics"]]
            if len(losses) > 1:
                check("train loss falls", losses[-1] < losses[0], losses)
        if mode == "cached":
            features = ctx.tasks(
                "resnet-features", [{"kind": "features", "argv": [*flags, "--mixed-precision",
                                                                   "no"]}]
            )[0]  # fmt: skip
            if check("feature probe", "error" not in features, features.get("error", "")):
                tolerance = FEATURE_TOLERANCE[features["device"]]
                check.figures.update({f"features_{k}": v for k, v in features.items()})
                check(f"cached features within {tolerance} of the backbone's",
                      features["relative_difference"] <= tolerance,
                      features["relative_difference"])  # fmt: skip
                check("cached labels in order", features["labels_in_order"])
        return check.figures

    return stage


def write_jpegs(root: Path, per_class: int, test_per_class: int, size=(48, 40)) -> Path:
    """A red and a blue class of noisy JPEGs, smaller than twice SimpleCNN's 32 pixels, so
    they decode at full size (on the CPU, in the cache pass as in the loader)."""
    from PIL import Image

    for split, count in (("train", per_class), ("test", test_per_class)):
        for index, colour in enumerate(("red", "blue")):
            folder = root / split / colour
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = Image.effect_noise(size, 40).convert("RGB")
                tint = Image.new("RGB", size, (200, 30, 30) if index == 0 else (30, 30, 200))
                Image.blend(noise, tint, 0.6).save(folder / f"{i:04}.jpg", quality=90)
    return root


def stage_imagefolder(check: Check) -> dict:
    ctx = check.ctx
    s = ctx.sizes["folder"]
    folder = write_jpegs(ctx.out / "images", s["per_class"], s["test_per_class"])
    flags = ["--dataset", "imagefolder", "--data-dir", str(folder), "--tracker", "none",
             "--batch-size", str(s["batch"]), "--epochs", str(s["epochs"]), "--num-workers",
             str(s["workers"]), "--deterministic"]  # fmt: skip
    runs = {}
    for mode in ("always", "never"):
        name = f"imagefolder-{mode}"
        argv = [*flags, "--cache-images", mode, "--output-dir", str(ctx.run_dir(name))]
        trained = ctx.tasks(name, [{"kind": "train", "argv": argv}])
        trained = trained[0] if trained else {"error": "no result"}
        if not check(f"--cache-images {mode} trains", trained.get("exit_code") == 0,
                     trained.get("error", "")):  # fmt: skip
            return check.figures
        runs[mode] = read_run(ctx.run_dir(name))
        metrics = runs[mode]["metrics"]
        check.figures[f"{mode}_seconds"] = trained["seconds"]
        check.figures[f"{mode}_train_images_per_s"] = round(metrics[-1]["train_images_per_second"])
        check.figures[f"{mode}_test_accuracy"] = runs[mode]["summary"]["test_accuracy"]
        losses = [m[k] for m in metrics for k in ("train_loss", "test_loss")]
        check(f"{mode}: finite losses", all(map(math.isfinite, losses)), losses)
        if not ctx.dry:  # two classes: chance is 0.5
            accuracy = runs[mode]["summary"]["test_accuracy"]
            check(f"{mode}: test accuracy >= 0.75", accuracy >= 0.75, accuracy)
    cached, uncached = (comparable(runs[m]["metrics"]) for m in ("always", "never"))
    check("cached and uncached runs identical", cached == uncached,
          "" if cached == uncached else [cached, uncached])  # fmt: skip
    return check.figures


def stage_gpu_tests(check: Check) -> dict:
    ctx = check.ctx
    log = ctx.out / "logs" / "gpu-tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider",
               "tests/test_gpu.py"]  # fmt: skip
    code = ctx.command(command, log, env={"CIFAR_REQUIRE_ALL_TESTS": ""})
    text = log.read_text()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    check.figures.update(exit_code=code, **counts)
    if ctx.cuda:
        check("every GPU test passes", code == 0 and counts.get("passed", 0) > 0, counts)
    else:
        reasons = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", text)
        check.figures["skip_reasons"] = sorted(set(reasons))
        skipped = code == 0 and counts.get("skipped", 0) > 0 and not counts.get("passed")
        check(
            "every GPU test skipped with its reason",
            skipped and all("CUDA" in r for r in reasons),
            counts,
        )
    return check.figures


def stage_benchmark(check: Check) -> dict:
    ctx = check.ctx
    out = ctx.out / "benchmarks.md"
    shutil.copyfile(ROOT / "docs" / "benchmarks.md", out)
    argv = [*ctx.sizes["bench"].split(), "--out", str(out)]
    if ctx.dry:
        result = ctx.tasks("benchmark", [{"kind": "bench", "argv": argv}])[0]
        code = result.get("exit_code", 1)
    else:
        command = [sys.executable, str(HERE / "throughput.py"), *argv]
        code = ctx.command(command, ctx.out / "logs" / "benchmark.log")
    check.figures["exit_code"] = code
    if not check("the benchmark runs", code == 0):
        return check.figures
    section = (ctx.out / "logs" / "benchmark.log").read_text()
    rows = re.findall(r"^\| ([a-z-]+) \| ([^|]+) \| ([\d,]+) \|[^|]*\|[^|]*\| ([^|]+) \|", section,
                      re.M)  # fmt: skip
    speeds = {f"{case} {pipeline.strip()}": int(rate.replace(",", "")) for case, pipeline, rate, _
              in rows}  # fmt: skip
    peaks = {f"{case} {pipeline.strip()}": peak.strip() for case, pipeline, _, peak in rows}
    check.figures["images_per_s"] = speeds
    ours = {}
    for key, rate in speeds.items():
        case, pipeline = key.split(" ", 1)
        if pipeline.startswith("ours"):
            ours.setdefault(case, rate)
    check.figures["ours_images_per_s"] = ours
    check.figures["peak_memory_mib"] = peaks
    missing = [c for c in BENCH_CASES if not any(k.startswith(c + " ours") for k in speeds)]
    check("every case measured", not missing and all(v > 0 for v in speeds.values()), missing)
    if ctx.cuda:
        for case, pipeline, target, what in TARGETS:
            measured = [v for k, v in speeds.items() if k.startswith(f"{case} ") and pipeline in k
                        and "plain" not in k]  # fmt: skip
            reached = bool(measured) and max(measured) >= target
            check.figures.setdefault("targets", {})[what] = "reached" if reached else "not reached"
    return check.figures


STAGES = [
    Stage("env", 15, "versions, the device, bf16, a C compiler and Python headers (torch.compile "
          "needs both); on the GPU: CUDA and bf16 available", stage_env),
    Stage("cnn-fp32", 25, "SimpleCNN fp32 trains: finite losses, test accuracy >= 0.3 (chance "
          "0.1), images/s, peak memory; the step probe: 0 host syncs per step", stage_cnn("no")),
    Stage("cnn-bf16", 25, "the same in bf16 with --ema 0.9 --tta (the average updated each "
          "step, scored with flips): finite, >= 0.3, 0 syncs per step",
          stage_cnn("bf16")),
    Stage("cnn-fp16", 25, "fp16 with the grad scaler: finite, >= 0.3, the scaler's scale saved "
          "in the checkpoint (finite, > 0) and in the probe, at most 1 sync per step",
          stage_cnn("fp16")),
    Stage("cnn-compile", 80, f"--compile trains (>= 0.3); the run makes 1 to {MAX_RUN_GRAPHS} "
          "graphs (dynamo's count) and none after warm-up; 0 syncs per step (--dry: the eager "
          "backend, which traces the same graphs)", stage_compile),
    Stage("cnn-deterministic", 30, "--deterministic twice with the same seed, in two processes: "
          "identical metrics and bit-identical weights", stage_deterministic),
    Stage("resnet-frozen", 30, "ResNet-50 at 224 (--dry: 32), random weights, backbone frozen: "
          "finite losses, images/s, peak memory, 0 syncs per step", stage_resnet("frozen")),
    Stage("resnet-cached", 35, "--cache-features trains (finite losses); the cached features "
          f"equal the frozen backbone's run anew within {FEATURE_TOLERANCE['cuda']} (CPU: "
          f"{FEATURE_TOLERANCE['cpu']}) of the largest feature, labels in order",
          stage_resnet("cached")),
    Stage("resnet-finetune", 35, "--freeze none: finite losses, the train loss falls, images/s, "
          "peak memory, 0 syncs per step", stage_resnet("finetune")),
    Stage("imagefolder", 35, "JPEGs written here, cached (decoded on the CPU) and uncached, "
          "--deterministic: identical metrics, finite, accuracy >= 0.75 of 2 classes (not "
          "--dry)", stage_imagefolder),
    Stage("gpu-tests", 75, "pytest -m gpu tests/test_gpu.py: every test passes (without CUDA: "
          "every test skipped, each with its reason)", stage_gpu_tests),
    Stage("benchmark", 90, "bench/throughput.py, every case at small sizes: a row each with "
          "images/s and peak memory; the GPU targets reported, not failed", stage_benchmark),
]  # fmt: skip


def run_stage(ctx: Context, stage: Stage) -> dict:
    check = Check(ctx, stage)
    started = time.monotonic()
    status, reason = "pass", ""
    try:
        with ctx.stage_time(stage.budget):
            check.figures = stage.run(check) or check.figures
    except Skip as skip:
        status, reason = "skip", str(skip)
    except StageTimeout:
        check("within its budget", False, f"ran past {stage.budget} s")
    except Exception as error:
        import traceback

        with open(ctx.out / "logs" / f"{stage.name}.log", "a") as log:
            traceback.print_exc(file=log)
        check("runs", False, f"{type(error).__name__}: {error}")
    if status != "skip" and not all(c["ok"] for c in check.checks):
        status = "fail"
    return {
        "stage": stage.name,
        "status": status,
        "reason": reason,
        "seconds": round(time.monotonic() - started, 1),
        "budget_seconds": stage.budget,
        "expect": stage.expect,
        "figures": check.figures,
        "checks": check.checks,
    }


SHOWN = ("device", "torch", "python", "c_compiler", "test_accuracy", "train_images_per_s",
         "run_peak_mib", "probe_syncs_per_step", "probe_steady_state_images_per_s",
         "probe_peak_mib", "probe_grad_scaler_scale", "run_graphs",
         "features_relative_difference", "always_train_images_per_s",
         "never_train_images_per_s", "ours_images_per_s", "passed", "skipped", "failed",
         "targets")  # fmt: skip


def short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def summary(results: list[dict], dry: bool, seconds: float) -> str:
    mode = "dry run on the CPU, toy sizes" if dry else "GPU sizes"
    lines = [f"GPU check ({mode}): {len(results)} stages in {seconds:.0f} s", ""]
    lines.append(f"{'stage':<18} {'status':<6} {'s':>5}  figures")
    for r in results:
        figures = ", ".join(f"{k} {short(r['figures'][k])}" for k in SHOWN if k in r["figures"])
        lines.append(f"{r['stage']:<18} {r['status']:<6} {r['seconds']:>5.0f}  "
                     f"{r['reason'] if r['status'] == 'skip' else figures}"[:200])  # fmt: skip
        lines.append(f"{'':<18} expect: {r['expect']}"[:200])
        for c in r["checks"]:
            if not c["ok"]:
                lines.append(f"{'':<18} FAILED {c['check']}: {c['detail']}"[:200])
    passed = all(r["status"] != "fail" for r in results)
    lines += ["", "passed" if passed else "failed: see results.jsonl and logs/"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", help="folder for results.jsonl, summary.txt, logs/, runs/")
    p.add_argument("--dry", action="store_true", help="toy sizes on the CPU")
    names = [s.name for s in STAGES]
    p.add_argument("--stages", nargs="+", choices=names, default=names, help="a subset, in order")
    p.add_argument("--tasks", help=argparse.SUPPRESS)  # a child process's tasks (JSON)
    p.add_argument("--result", help=argparse.SUPPRESS)  # where the child writes their results
    args = p.parse_args(argv)
    if args.tasks is None and not args.out:
        p.error("--out is required")
    return args


def run_children_tasks(args) -> int:
    """A child process: run the tasks, writing the results after each one."""
    results = []
    for task in json.loads(args.tasks):
        results.append(run_task(task))
        Path(args.result).write_text(json.dumps(results))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tasks is not None:
        return run_children_tasks(args)
    if args.dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU equivalent, also on a GPU machine
        # Toy sizes gain nothing from more threads, and on a busy machine two of them fight
        # for the cores: `make gpu-check DRY=1` took 191 s with two, 64 s with one (2-core CPU).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    cuda = torch.cuda.is_available() and not args.dry
    if not cuda and not args.dry:
        print("error: no CUDA device here; run the CPU equivalent with --dry.", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    ctx = Context(out, args.dry, cuda)
    if args.dry:
        os.environ.update({k: ctx.env[k] for k in ("CIFAR_OFFLINE", "XDG_CACHE_HOME")})
    started = time.monotonic()
    results = []
    chosen = [s for s in STAGES if s.name in args.stages]
    print(f"{len(chosen)} stages, at most {sum(s.budget for s in chosen):.0f} s", flush=True)
    for stage in chosen:
        print(f"{stage.name}: up to {stage.budget} s", flush=True)
        result = run_stage(ctx, stage)
        results.append(result)
        with open(out / "results.jsonl", "a") as lines:
            lines.write(json.dumps(result, default=str) + "\n")
        print(f"{stage.name}: {result['status']} in {result['seconds']} s", flush=True)
    text = summary(results, args.dry, time.monotonic() - started)
    (out / "summary.txt").write_text(text)
    print("\n" + text, end="")
    return 0 if all(r["status"] != "fail" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
