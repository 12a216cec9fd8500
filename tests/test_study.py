"""cifar/study.py and slurm/sweep.sh: a grid of runs, its statistics, its report, its refusals.

Every number of study.json is checked against one computed here from the runs' own files with
numpy and scipy; the runs are tiny synthetic ones.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread
from scipy import stats

from cifar.errors import UserError
from cifar.study.cli import main
from cifar.study.figures import curves_figure
from cifar.study.grid import STUDY_FILES, parse_arms
from cifar.study.results import check_run, pooling_refusal
from cifar.study.runner import resolve_launcher
from cifar.study.statistics import compare_paired, describe
from tests.helpers import (
    ROOT,
    devices_for,
    folder_hashes,
    isolated_home,
    offline_logs,
    read_json,
    read_metrics,
    read_wandb_records,
    require,
    require_package,
    tiny_run,
    train_env,
    wandb_history,
    wandb_summary,
    warning_lines,
)
from tests.slurm_helpers import cluster_available, submit, wait_for_job

TINY = tiny_run(train=256, test=64, epochs=2, tracker=None)  # W&B left to each test
ARMS = ["--arm", "w8=--width 8", "--arm", "w16=--width 16"]
EXAMPLES = int(os.environ.get("CIFAR_HYPOTHESIS_EXAMPLES", "30"))
METRICS = ("test_accuracy", "best_test_accuracy", "test_loss", "wall_seconds")


def study(*args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """python -m cifar.study ARGS, as users run it (a launcher of two processes: on the device
    two processes get, devices_for)."""
    processes = 2 if any("--nproc_per_node 2" in str(a) for a in args) else 1
    result = subprocess.run(
        [sys.executable, "-m", "cifar.study", *map(str, args)],
        cwd=ROOT,
        env=train_env(**{**devices_for(processes), **(env or {})}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(f"study exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def start_study(*args) -> subprocess.Popen:
    """python -m cifar.study ARGS in the background, its output captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "cifar.study", *map(str, args)],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def t_interval(values) -> list[float]:
    x = np.asarray(values, dtype=float)
    return list(stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x)))


def assert_stat(stat: dict, values, high: float = 1.0) -> None:
    """stat is values' n, mean, std and t-interval, the interval cut to [0, high]."""
    x = np.asarray(values, dtype=float)
    assert stat["n"] == len(x)
    assert stat["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert stat["std"] == pytest.approx(x.std(ddof=1), rel=1e-12)
    low, up = t_interval(x)
    assert stat["ci95"] == pytest.approx([max(low, 0.0), min(up, high)], rel=1e-12)
    assert stat["clipped"] == (low < 0 or up > high)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A finished 2-arm x 3-seed study and the output of its command."""
    out = tmp_path_factory.mktemp("study") / "widths"
    result = study("--out", out, *ARMS, "--seeds", 0, 1, 2, "--", *TINY, "--tracker", "none")
    return out, result


def summaries(out: Path, arm: str, seeds=(0, 1, 2)) -> list[dict]:
    return [read_json(out / arm / f"seed{s}" / "summary.json") for s in seeds]


def test_study_json_equals_the_statistics_of_the_runs_summaries(grid):
    out, _ = grid
    result = read_json(out / "study.json")
    assert list(result["arms"]) == ["w8", "w16"] and result["missing"] == []
    for arm, width in (("w8", 8), ("w16", 16)):
        resolved = result["arms"][arm]["settings"]  # what the runs resolved to, all alike
        assert (resolved["width"], resolved["world_size"], resolved["global_batch_size"]) == (
            width,
            1,
            64,
        )
        runs = summaries(out, arm)
        assert result["arms"][arm]["runs"] == [str(out / arm / f"seed{s}") for s in (0, 1, 2)]
        for metric in METRICS:
            high = 1.0 if metric.endswith("accuracy") else math.inf
            assert_stat(result["arms"][arm][metric], [s[metric] for s in runs], high)
        for name in runs[0]["classes"]:
            per_class = [s["per_class_accuracy"][name] for s in runs]
            assert_stat(result["arms"][arm]["per_class_accuracy"][name], per_class)
        curves = [read_metrics(out / arm / f"seed{s}") for s in (0, 1, 2)]
        for epoch, point in enumerate(result["arms"][arm]["curves"]["test_accuracy"]):
            assert point["epoch"] == epoch + 1
            assert_stat(point, [c[epoch]["test_accuracy"] for c in curves])

    (accuracy, loss) = result["pairs"]
    for pair, metric in ((accuracy, "test_accuracy"), (loss, "test_loss")):
        a = [s[metric] for s in summaries(out, "w16")]
        b = [s[metric] for s in summaries(out, "w8")]
        test = stats.ttest_rel(a, b)
        assert (pair["a"], pair["b"], pair["metric"], pair["n"]) == ("w16", "w8", metric, 3)
        assert pair["mean_difference"] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-9)
        assert pair["ci95"] == pytest.approx(list(test.confidence_interval(0.95)), rel=1e-9)
        assert pair["p_value"] == pytest.approx(test.pvalue, rel=1e-9)


def test_every_run_is_its_arm_and_seed_in_the_study_group(grid):
    out, result = grid
    for arm, width in (("w8", 8), ("w16", 16)):
        for seed in (0, 1, 2):
            config = read_json(out / arm / f"seed{seed}" / "config.json")
            assert (config["width"], config["seed"], config["epochs"]) == (width, seed, 2)
            assert config["wandb_group"] == "widths"
    assert result.stdout.count("--resume auto") == 6


def test_study_md_says_each_pair_in_one_sentence_with_interval_and_n(grid):
    out, _ = grid
    text = (out / "study.md").read_text()
    pair = read_json(out / "study.json")["pairs"][0]
    (sentence,) = [line for line in text.splitlines() if line.startswith("- w16 − w8, test acc")]
    numbers = re.search(
        r": ([+-][\d.]+) points \(95% CI ([+-][\d.]+) to ([+-][\d.]+), n = 3", sentence
    )
    assert numbers, sentence
    expected = [pair["mean_difference"], *pair["ci95"]]
    assert [float(v) for v in numbers.groups()] == pytest.approx(
        [100 * v for v in expected], abs=6e-3
    )
    low, high = pair["ci95"]
    verdict = (
        "w16 is more accurate" if low > 0 else "w8 is more accurate" if high < 0 else "includes 0"
    )
    assert verdict in sentence
    for name in ("test_accuracy.png", "curves.png", "per_class_accuracy.png"):
        assert f"]({name})" in text
        pixels = imread(out / name)
        colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 50, f"{name} looks blank"


def test_learning_curves_plot_the_mean_with_the_interval_as_band(grid):
    out, _ = grid
    result = read_json(out / "study.json")
    figure = curves_figure(result)
    accuracy_axes = figure.axes[0]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["w8", "w16"]
    for line, band, arm in zip(
        accuracy_axes.get_lines(), accuracy_axes.collections, ("w8", "w16"), strict=True
    ):
        points = result["arms"][arm]["curves"]["test_accuracy"]
        assert list(line.get_ydata()) == [p["mean"] for p in points]
        corners = band.get_paths()[0].vertices
        assert corners[:, 1].min() == pytest.approx(min(p["ci95"][0] for p in points))
        assert corners[:, 1].max() == pytest.approx(max(p["ci95"][1] for p in points))


def test_the_same_command_again_trains_nothing(grid):
    out, _ = grid
    runs_before = {arm: folder_hashes(out / arm, folders=True) for arm in ("w8", "w16")}
    again = study("--out", out, *ARMS, "--seeds", 0, 1, 2, "--", *TINY, "--tracker", "none")
    assert again.stdout.count("finished, skipped") == 6 and "--resume auto" not in again.stdout
    assert {arm: folder_hashes(out / arm, folders=True) for arm in ("w8", "w16")} == runs_before
    # Without --arm, --seeds and --, the saved grid is the study.
    plain = study("--out", out)
    assert plain.stdout.count("finished, skipped") == 6
    assert read_json(out / "study.json")["arms"]["w16"]["test_accuracy"]["n"] == 3


def test_absent_and_unfinished_runs_are_listed_never_averaged(grid, tmp_path):
    source, _ = grid
    out = tmp_path / "widths"
    shutil.copytree(source, out)
    shutil.rmtree(out / "w8" / "seed2")  # absent
    (out / "w16" / "seed1" / "summary.json").unlink()  # unfinished
    runs_before = folder_hashes(out / "w8", folders=True) | folder_hashes(out / "w16", folders=True)
    study("--out", out, "--report-only")
    assert (
        folder_hashes(out / "w8", folders=True) | folder_hashes(out / "w16", folders=True)
        == runs_before
    )  # trained nothing

    result = read_json(out / "study.json")
    assert result["missing"] == [str(out / "w8" / "seed2"), str(out / "w16" / "seed1")]
    assert result["arms"]["w8"]["seeds"] == [0, 1] and result["arms"]["w16"]["seeds"] == [0, 2]
    w8 = [s["test_accuracy"] for s in summaries(source, "w8", (0, 1))]
    assert_stat(result["arms"]["w8"]["test_accuracy"], w8)
    # Only seed 0 finished in both arms: one paired seed, a difference and no interval.
    pair = result["pairs"][0]
    (a,) = [s["test_accuracy"] for s in summaries(source, "w16", (0,))]
    assert (pair["n"], pair["seeds"], pair["ci95"], pair["p_value"]) == (1, [0], None, None)
    assert pair["mean_difference"] == pytest.approx(a - w8[0], rel=1e-12)
    text = (out / "study.md").read_text()
    assert "from n = 1 paired seed; one seed gives no interval" in text
    assert f"`{out / 'w8' / 'seed2'}`" in text and "2 missing or unfinished, not counted" in text
    assert "NaN" not in (out / "study.json").read_text()


def test_a_study_killed_mid_run_finishes_later_without_training_a_finished_run(tmp_path):
    out = tmp_path / "killed"
    longer = [
        *TINY,
        "--tracker",
        "none",
        "--synthetic-train-size",
        "2048",
        "--epochs",
        "3",
        "--checkpoint-every",
        "5",
    ]
    command = ["--out", out, "--arm", "cnn=--width 8", "--seeds", 0, 1, "--", *longer]
    process = subprocess.Popen(
        [sys.executable, "-m", "cifar.study", *map(str, command)],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = out / "cnn" / "seed1"
    deadline = time.monotonic() + 300
    while not list(second.glob("checkpoints/step-*")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint of seed 1"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60
    while run_processes(second):  # the run dies with the study, it does not go on alone
        assert time.monotonic() < deadline, f"train.py still running in {second}"
        time.sleep(0.2)
    assert not (second / "summary.json").exists()
    first = folder_hashes(out / "cnn" / "seed0", folders=True)

    again = study(*command)
    assert f"{out / 'cnn' / 'seed0'}: finished, skipped" in again.stdout
    assert "resuming" in again.stdout
    assert folder_hashes(out / "cnn" / "seed0", folders=True) == first
    assert len(read_metrics(second)) == 3
    assert read_json(out / "study.json")["arms"]["cnn"]["test_accuracy"]["n"] == 2


def test_a_stop_signal_to_the_study_checkpoints_the_run_and_exits_75(tmp_path):
    out = tmp_path / "stopped"
    longer = [*TINY, "--tracker", "none", "--synthetic-train-size", "2048", "--epochs", "3"]
    command = ["--out", out, "--arm", "cnn=--width 8", "--seeds", 0, "--", *longer]
    process = subprocess.Popen(
        [sys.executable, "-m", "cifar.study", *map(str, command), "--checkpoint-every", "5"],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_dir = out / "cnn" / "seed0"
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("checkpoints/step-*")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output
    assert f"stopped in {run_dir}: run the same command again to continue." in output
    assert re.search(r"SIGTERM: (checkpoint saved at step|stopped after epoch)", output), output
    assert not (run_dir / "summary.json").exists() and not run_processes(run_dir)


def run_processes(run_dir: Path) -> list[int]:
    """The ids of the processes whose command line names run_dir."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and str(run_dir) in line:
            found.append(int(proc.name))
    return found


def test_one_seed_gives_means_without_intervals_and_a_wandb_summary_run(tmp_path):
    out = tmp_path / "single"
    study(
        "--out",
        out,
        *ARMS,
        "--seeds",
        3,
        "--",
        *TINY,
        "--tracker",
        "wandb",
        env={"WANDB_MODE": "offline"},
    )
    result = read_json(out / "study.json")
    for arm in ("w8", "w16"):
        (summary,) = summaries(out, arm, (3,))
        stat = result["arms"][arm]["test_accuracy"]
        assert stat == {
            "n": 1,
            "mean": summary["test_accuracy"],
            "std": None,
            "ci95": None,
            "clipped": False,
        }
        assert read_json(out / arm / "seed3" / "config.json")["wandb_group"] == "single"
    # The summary run: in the study's group, its numbers those of study.json.
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.display_name, run.job_type) == (
        "single",
        "single-summary",
        "study-summary",
    )
    summary = wandb_summary(records)
    for arm in ("w8", "w16"):
        assert summary[f"{arm}/test_accuracy/mean"] == result["arms"][arm]["test_accuracy"]["mean"]
        assert f"{arm}/test_accuracy/ci95_low" not in summary
    pair = result["pairs"][0]
    assert summary["w16-w8/test_accuracy/mean_difference"] == pair["mean_difference"]
    # The pairs table as W&B stores it, row for row the pairs of study.json.
    (history,) = wandb_history(records)
    table = json.loads((log.parent / "files" / history["study/pairs/path"]).read_text())
    assert table["columns"][:5] == ["a", "b", "metric", "n", "mean_difference"]
    assert [row[:5] for row in table["data"]] == [
        [p["a"], p["b"], p["metric"], p["n"], p["mean_difference"]] for p in result["pairs"]
    ]
    assert {"study/curves/path", "study/per_class_accuracy/path"} <= set(history)


def test_a_study_without_wandb_credentials_logs_offline_and_online_is_refused(tmp_path):
    require_package("wandb")
    out = tmp_path / "default"
    env = isolated_home(tmp_path)  # the user's default: no key, no WANDB_MODE, no netrc
    result = study("--out", out, "--arm", "w8=--width 8", "--seeds", 0, "--", *TINY, env=env)

    assert "Traceback" not in result.stderr
    warning = (
        f"no W&B credentials found (`wandb login`, WANDB_API_KEY): logging offline to {out}; "
        f"upload later with `wandb sync {out}/wandb/offline-run-*`"
    )
    assert result.stderr.count(warning) == 1, result.stderr
    assert result.stderr.count("no W&B credentials found") == 2  # the run's, the summary run's
    # The summary run's warning is one line, as the run's: not Python's file, line and source.
    assert warning_lines(result.stderr).count(f"warning: {warning}") == 1, result.stderr
    assert len(offline_logs(out / "w8" / "seed0")) == 1
    (log,) = offline_logs(out)
    records = read_wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    run_id = read_json(out / "tracker.json")["run_id"]
    assert (run.run_id, run.run_group, run.display_name) == (run_id, "default", "default-summary")
    stat = read_json(out / "study.json")["arms"]["w8"]["test_accuracy"]
    assert wandb_summary(records)["w8/test_accuracy/mean"] == stat["mean"]
    assert (
        f"W&B summary run saved offline; upload it with: wandb sync {log.parent}" in result.stdout
    )

    # The report alone: the same summary run, offline again.
    again = study("--out", out, "--report-only", env=env)
    assert "Traceback" not in again.stderr and "--resume auto" not in again.stdout
    assert [p.name for p in offline_logs(out)] == [log.name] * 2

    # WANDB_MODE=online asks for credentials there are not: one paragraph, nothing changed.
    before = folder_hashes(out, folders=True)
    online = {**env, "WANDB_MODE": "online"}
    refusal = study("--out", out, "--report-only", env=online, check=False)
    assert refusal.returncode == 2 and refusal.stdout == "", refusal.stderr
    assert refusal.stderr.startswith("error: WANDB_MODE=online, but wandb finds no credentials")
    assert refusal.stderr.count("\n") == 1 and "wandb login" in refusal.stderr
    assert folder_hashes(out, folders=True) == before


def test_wandb_online_without_credentials_stops_the_study_before_any_run(tmp_path):
    require_package("wandb")
    out = tmp_path / "online"
    env = {**isolated_home(tmp_path), "WANDB_MODE": "online"}
    command = ["--out", out, "--arm", "w8=--width 8", "--seeds", 0, "--", *TINY]
    result = study(*command, env=env, check=False)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    refusal = (
        r"error: WANDB_MODE=online, but wandb finds no credentials for https?://\S+\. Log in "
        r"with `wandb login` \(or set WANDB_API_KEY\), or log offline with WANDB_MODE=offline, "
        r"or train without a tracker: --tracker none\.\n"
    )
    assert re.fullmatch(refusal, result.stderr), result.stderr
    assert not out.exists()  # no grid, no run folder: nothing trained


def refused(argv: list, capsys) -> str:
    """main(argv) exits 2 with one paragraph on stderr; returns it."""
    assert main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error


@pytest.mark.parametrize(
    "arms, says",
    [
        (["--arm", "w8 --width 8"], "is not NAME=FLAGS"),
        (["--arm", "../up=--width 8"], "is not NAME=FLAGS"),
        (["--arm", "a=--width 8", "--arm", "a=--width 16"], "--arm a is given twice"),
        (["--arm", "a=--no-such-flag 3"], "train.py does not know --no-such-flag 3"),
        (["--arm", "a=--width many"], "invalid int value: 'many'"),
        (["--arm", "a=--width 0"], "--width must be in [1, 512], got 0"),
        (["--arm", "a=--seed 3"], "--seed is set by the study"),
        (["--arm", "a=--out x"], "--output-dir is set by the study"),
        (["--arm", "a=--tags 'x"], "its flags do not parse"),
        (["--seeds", "one"], "invalid int value: 'one'"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_written(tmp_path, capsys, arms, says):
    out = tmp_path / "study"
    before = folder_hashes(tmp_path, folders=True)
    assert says in refused(["--out", out, *arms, "--", *TINY], capsys)
    assert folder_hashes(tmp_path, folders=True) == before


def test_bad_folders_and_files_are_refused_without_changing_them(grid, tmp_path, capsys):
    source, _ = grid
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert "--out " + str(a_file) + " is a file" in refused(["--out", a_file], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no run of the study" in refused(["--out", empty, "--report-only"], capsys)
    assert "train.py does not know --bogus" in refused(["--out", empty, "--", "--bogus"], capsys)
    assert list(empty.iterdir()) == []

    out = tmp_path / "widths"
    shutil.copytree(source, out)
    summary = out / "w16" / "seed2" / "summary.json"
    config = out / "w8" / "seed1" / "config.json"
    damages = [
        (summary, "{", "summary.json cannot be read"),
        (summary, "[1, 2]", "summary.json is not a run record as train.py writes it: expected"),
        (summary, json.dumps({"test_accuracy": 0.5}), "summary.json is not a run record"),
        (config, json.dumps({**read_json(config), "seed": 7}), "seed 7 (the study's: 1)"),
        (config, json.dumps({**read_json(config), "width": 64}), "width 64 (the study's: 8)"),
        (out / "grid.json", "[]", "is not a study grid"),
    ]
    for path, text, says in damages:
        original = path.read_text()
        path.write_text(text)
        before = folder_hashes(out, folders=True)
        for command in (["--out", out, "--report-only"], ["--out", out]):
            assert says in refused(command, capsys)
            assert folder_hashes(out, folders=True) == before
        path.write_text(original)
    changed = ["--out", out, "--arm", "w8=--width 12"]
    assert "arm w8 of the study" in refused(changed, capsys)
    assert "not '--epochs 3'" in refused(["--out", out, "--", "--epochs", "3"], capsys)


def test_the_command_line_shows_a_refusal_as_one_paragraph(tmp_path):
    result = study("--out", tmp_path / "s", "--arm", "a=--nope", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: arm a ('--nope'") and result.stderr.count("\n") == 1


def test_a_launcher_that_cannot_start_is_one_paragraph_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["--out", str(out), *ARMS, "--print-run", "0", "--", *TINY]) == 0
    capsys.readouterr()
    before = folder_hashes(tmp_path, folders=True)
    typo = study("--out", out, "--seeds", 0, 1, 2, 3, "--launcher", "acelerate launch", check=False)
    assert typo.returncode == 2 and typo.stdout == "", typo.stderr
    assert "Traceback" not in typo.stderr and typo.stderr.count("\n") == 1, typo.stderr
    assert typo.stderr.startswith(
        "error: the launcher 'acelerate launch' cannot be started: no program acelerate on PATH"
    )
    assert "(did you mean accelerate?). Fix --launcher" in typo.stderr
    assert "Nothing was trained or written." in typo.stderr
    assert folder_hashes(tmp_path, folders=True) == before  # grid.json keeps its 3 seeds
    for launcher, says in (
        (f"{tmp_path}/bin/torchrun --standalone", f"{tmp_path}/bin/torchrun is not an executable"),
        ("accelerate 'launch", '--launcher "accelerate \'launch" does not parse as a command'),
    ):
        assert says in refused(["--out", out, "--launcher", launcher], capsys)
        assert says in refused(["--out", tmp_path / "new", "--launcher", launcher], capsys)
        assert folder_hashes(tmp_path, folders=True) == before


def test_a_launcher_beside_this_python_is_found_without_an_activated_environment(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    assert resolve_launcher("torchrun --standalone") == [torchrun, "--standalone"]
    assert resolve_launcher("  ") == [sys.executable]


ACCURACY = st.floats(min_value=0, max_value=1, allow_nan=False, allow_subnormal=False)
SAMPLES = st.lists(
    ACCURACY,
    min_size=2,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(SAMPLES)
def test_the_interval_is_scipys_t_interval_around_the_mean(values):
    stat = describe(values)
    low, high = stat["ci95"]
    assert low <= stat["mean"] <= high
    assert stat["mean"] - low == pytest.approx(high - stat["mean"], abs=1e-12)
    assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    if np.std(values) > 1e-9:
        assert [low, high] == pytest.approx(t_interval(values), rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(SAMPLES, st.randoms(use_true_random=False))
def test_the_order_of_the_seeds_changes_nothing(values, random):
    shuffled = random.sample(values, len(values))
    flat = [describe(v) for v in (shuffled, values)]
    flat = [[s["n"], s["mean"], s["std"], *s["ci95"]] for s in flat]
    assert flat[0] == pytest.approx(flat[1], abs=1e-12)
    a = dict(enumerate(values))
    b = {seed: 1 - v for seed, v in enumerate(values)}
    keys = random.sample(list(a), len(a))
    reordered = compare_paired({k: a[k] for k in keys}, {k: b[k] for k in reversed(keys)})
    assert reordered == compare_paired(a, b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ACCURACY, ACCURACY), min_size=2, max_size=12))
def test_paired_difference_is_the_difference_of_means_with_scipys_interval(pairs):
    a = {seed: x for seed, (x, _) in enumerate(pairs)}
    b = {seed: y for seed, (_, y) in enumerate(pairs)}
    result = compare_paired(a, b)
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    assert result["n"] == len(pairs) and result["seeds"] == list(range(len(pairs)))
    assert result["mean_difference"] == pytest.approx(xa.mean() - xb.mean(), abs=1e-12)
    assert result["ci95"][0] <= result["mean_difference"] <= result["ci95"][1]
    if np.std(xa - xb) > 1e-9:
        test = stats.ttest_rel(xa, xb)
        assert result["p_value"] == pytest.approx(test.pvalue, rel=1e-9, abs=1e-15)
        assert result["ci95"] == pytest.approx(list(test.confidence_interval()), rel=1e-9)


def test_what_does_not_exist_is_none_never_nan():
    nothing = {"std": None, "ci95": None, "clipped": False}
    assert describe([]) == {"n": 0, "mean": None, **nothing}
    assert describe([0.25]) == {"n": 1, "mean": 0.25, **nothing}
    assert describe([0.5, 0.5])["ci95"] == [0.5, 0.5]
    same = compare_paired({0: 0.5, 1: 0.7}, {0: 0.5, 1: 0.7})
    assert (same["mean_difference"], same["ci95"], same["p_value"]) == (0.0, [0.0, 0.0], None)
    shifted = compare_paired({0: 0.75, 1: 1.0}, {0: 0.5, 1: 0.75, 2: 0.125})
    assert shifted["n"] == 2 and shifted["p_value"] == 0.0
    assert compare_paired({0: 0.6}, {1: 0.5})["n"] == 0
    assert json.dumps(compare_paired({0: 0.6}, {0: 0.5}), allow_nan=False)


SWEEP_ARMS = ["--arm", "w8=--width 8", "--arm", "w16=--width 16", "--seeds", "0", "1"]


def sweep_dry_run(out: Path, index: int, *common: str) -> subprocess.CompletedProcess:
    """slurm/sweep.sh as array element INDEX, printing the launch instead of running it."""
    env = {k: v for k, v in train_env().items() if not k.startswith("CIFAR_")}
    env.update(
        CIFAR_DRY_RUN="1",
        SLURM_JOB_ID="4250",
        SLURM_ARRAY_TASK_ID=str(index),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    command = ["bash", "slurm/sweep.sh", "--out", str(out), *SWEEP_ARMS, "--", *common]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_sweep_elements_run_the_studys_grid_arm_by_arm(tmp_path):
    out = tmp_path / "grid"
    commands = []
    for index in range(4):
        result = sweep_dry_run(out, index, "--epochs", "2")
        assert result.returncode == 0, result.stderr
        (line,) = [x for x in result.stdout.splitlines() if x.startswith("would run: ")]
        commands.append(line.split(" train.py ", 1)[1])
    assert commands == [
        f"--wandb-group grid --epochs 2 --width {width} --seed {seed} "
        f"--output-dir {out}/w{width}/seed{seed} --resume auto"
        for width in (8, 16)
        for seed in (0, 1)
    ]
    assert read_json(out / "grid.json")["seeds"] == [0, 1]
    bad = sweep_dry_run(tmp_path / "other", 4)
    assert bad.returncode == 2 and "sbatch --array=0-3 slurm/sweep.sh" in bad.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.slurm
def test_report_after_a_slurm_array_of_two_arms_by_two_seeds(tmp_path):
    require(cluster_available(), "no SLURM cluster: start one with `sudo make cluster`")
    out = tmp_path / "array"
    job = submit(
        ROOT / "slurm" / "sweep.sh",
        "--array=0-3",
        "--gres=none",
        "--cpus-per-task=1",
        "--time=10",
        f"--output={tmp_path}/%x-%A_%a.out",
        env=train_env(CIFAR_VENV=str(Path(sys.executable).parent.parent)),
        cwd=ROOT,
        script_args=["--out", str(out), *SWEEP_ARMS, "--", *TINY, "--tracker", "none"],
    )
    for index in range(4):
        state = wait_for_job(f"{job}_{index}", timeout_s=300)
        log = tmp_path / f"sweep-{job}_{index}.out"
        assert state == "COMPLETED", log.read_text() if log.exists() else state
    result = study("--out", out, "--report-only")
    assert "--resume auto" not in result.stdout  # aggregates, trains nothing
    report = read_json(out / "study.json")
    assert report["missing"] == [] and report["name"] == "array"
    for arm, width in (("w8", 8), ("w16", 16)):
        assert_stat(
            report["arms"][arm]["test_accuracy"],
            [s["test_accuracy"] for s in summaries(out, arm, (0, 1))],
        )
        for seed in (0, 1):
            config = read_json(out / arm / f"seed{seed}" / "config.json")
            assert (config["width"], config["seed"], config["wandb_group"]) == (
                width,
                seed,
                "array",
            )
    pair = report["pairs"][0]
    a = [s["test_accuracy"] for s in summaries(out, "w16", (0, 1))]
    b = [s["test_accuracy"] for s in summaries(out, "w8", (0, 1))]
    assert pair["n"] == 2 and pair["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_the_launcher_runs_each_run_for_example_on_two_processes(tmp_path):
    out = tmp_path / "launched"
    torchrun = f"{Path(sys.executable).parent / 'torchrun'} --standalone --nproc_per_node 2"
    study(
        "--out",
        out,
        "--arm",
        "cnn=--width 8",
        "--seeds",
        0,
        "--launcher",
        torchrun,
        "--",
        *TINY,
        "--tracker",
        "none",
    )
    assert read_json(out / "cnn" / "seed0" / "summary.json")["world_size"] == 2
    assert read_json(out / "study.json")["arms"]["cnn"]["test_accuracy"]["n"] == 1


ONE_EPOCH = [*TINY[:-1], "1", "--tracker", "none"]
TORCHRUN = f"{Path(sys.executable).parent / 'torchrun'} --standalone --nproc_per_node 2"


def assert_one_paragraph(result: subprocess.CompletedProcess, says: str) -> None:
    """A refused command: exit 2, nothing on stdout, one paragraph on stderr saying `says`."""
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr


def test_runs_of_one_arm_pool_only_when_they_resolved_to_the_same_settings(tmp_path):
    out = tmp_path / "pool"
    study("--out", out, "--arm", "a=--width 8", "--seeds", 0, "--", *ONE_EPOCH)
    report = (out / "study.json").read_bytes()
    # The same arm on 2 processes: world size 2, a global batch twice as large.
    mixed = study("--out", out, "--seeds", 1, 2, "--launcher", TORCHRUN, check=False)
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr, mixed.stderr
    assert read_json(out / "a" / "seed1" / "summary.json")["world_size"] == 2
    refusal = (
        "error: arm a holds runs that resolved to different settings, so the study does not "
        "average them: world_size 1 (seed 0) vs 2 (seed 1); global_batch_size 64 (seed 0) vs "
        f"128 (seed 1). Runs pool only when every setting that train.py keeps on resume agrees "
        f"(world size, global batch, precision and accumulation from the launcher included). "
        f"Move {out / 'a' / 'seed1'} out of the study and run it again with the launcher that "
        f"trained {out / 'a' / 'seed0'}, or train them in a study of their own (another --out)."
    )
    assert mixed.stderr.count(refusal) == 1, mixed.stderr
    assert "Arm a's other 1 seed(s) were not started." in mixed.stderr
    assert not (out / "a" / "seed2").exists() and "study written" not in mixed.stdout
    assert (out / "study.json").read_bytes() == report  # never averaged
    assert read_json(out / "grid.json")["seeds"] == [0, 1, 2]

    before = folder_hashes(out, folders=True)
    alone = study("--out", out, "--report-only", check=False)
    assert_one_paragraph(alone, refusal)
    assert folder_hashes(out, folders=True) == before

    # Moved out of the study, the rest pools; study.json records what its runs resolved to.
    shutil.move(out / "a" / "seed1", tmp_path / "two-processes")
    study("--out", out, "--report-only")
    arm = read_json(out / "study.json")["arms"]["a"]
    config = read_json(out / "a" / "seed0" / "config.json")
    assert arm["seeds"] == [0] and arm["runs"] == [str(out / "a" / "seed0")]
    resolved = arm["settings"]
    assert resolved["world_size"] == 1 and resolved["global_batch_size"] == 64
    assert resolved["mixed_precision"] == config["mixed_precision_used"] == "no"
    assert resolved["gradient_accumulation_steps"] == config["gradient_accumulation_steps_used"]
    assert (resolved["train_images"], resolved["test_images"], resolved["width"]) == (256, 64, 8)
    assert not {"seed", "output_dir", "resume", "wandb_group", "device_name"} & set(resolved)


def fake_run(folder: str, **settings) -> dict:
    """A finished run as collect_runs reads it, with config.json holding settings."""
    return {"dir": folder, "config": {"width": 8, "batch_size": 64, "seed": 0, **settings}}


def test_a_run_from_before_a_setting_existed_reads_as_its_default_not_as_agreeing():
    """A run from before --tta records no tta: it was scored without flips, so it is neither
    the study's run of an arm that flips nor averaged with runs that flip."""
    old = fake_run("/s/a/seed0", world_size=1)  # no tta, no ema recorded
    flips = fake_run("/s/a/seed1", world_size=1, seed=1, tta=True, ema=0.0)
    assert pooling_refusal("a", {0: old, 1: flips}).startswith(
        "arm a holds runs that resolved to different settings, so the study does not average "
        "them: tta false (seed 0) vs true (seed 1)."
    )
    plain = fake_run("/s/a/seed1", world_size=1, seed=1, tta=False, ema=0.0)
    assert pooling_refusal("a", {0: old, 1: plain}) == ""
    with pytest.raises(UserError) as refusal:
        check_run("/s/a/seed0", old["config"], {**old["config"], "tta": True}, 0)
    assert (
        "holds a run made with other settings than this study's: tta False (the study's: "
        "True)" in str(refusal.value)
    )
    check_run("/s/a/seed0", old["config"], {**old["config"], "tta": False}, 0)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=5),
    st.sampled_from(["no", "bf16"]),
)
def test_an_arm_pools_exactly_when_its_runs_agree_and_says_every_difference(worlds, precision):
    runs = {
        seed: fake_run(
            f"/s/a/seed{seed}",
            world_size=world,
            mixed_precision_used=precision if seed == 0 else "no",
            output_dir=f"/s/a/seed{seed}",
            seed=seed,
            device_name=f"machine {seed}",  # may change on resume: never a difference
        )
        for seed, world in enumerate(worlds)
    }
    refusal = pooling_refusal("a", runs)
    agree = len(set(worlds)) == 1 and (len(worlds) == 1 or precision == "no")
    assert (refusal == "") == agree
    if len(set(worlds)) > 1:
        assert "world_size " in refusal and "global_batch_size " in refusal
        for world in set(worlds):
            seeds = [s for s, w in enumerate(worlds) if w == world]
            assert (
                f"{world} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                in (refusal)
            )
    assert ("mixed_precision" in refusal) == (len(worlds) > 1 and precision != "no")
    assert "device_name" not in refusal and "output_dir" not in refusal


def test_two_studies_started_at_once_on_one_folder_one_runs_the_other_exits_2(tmp_path):
    out = tmp_path / "race"
    longer = [*TINY, "--tracker", "none", "--synthetic-train-size", "2048"]

    started = time.monotonic()
    processes = {
        arm: start_study("--out", out, "--arm", f"{arm}=--width 8", "--seeds", 0, 1, "--", *longer)
        for arm in ("a", "b")
    }
    while all(p.poll() is None for p in processes.values()):
        assert time.monotonic() - started < 300, "neither study ended"
        time.sleep(0.05)
    seconds = time.monotonic() - started
    ((loser, refused_study),) = [(a, p) for a, p in processes.items() if p.poll() is not None]
    ((winner, running),) = [(a, p) for a, p in processes.items() if a != loser]
    assert running.poll() is None  # the loser ended while the other study still ran
    output, error = refused_study.communicate()
    assert refused_study.returncode == 2 and output == "", error
    holder = (
        rf"error: another study is using the study folder {re.escape(str(out))} \(process "
        rf"{running.pid} on \S+ since [\d: -]+\)\. Wait for it to finish \(or stop it\), or "
        rf"choose another --out\.\n"
    )
    assert re.fullmatch(holder, error), error
    assert seconds < 60
    output, error = running.communicate(timeout=300)
    assert running.returncode == 0, error
    report = read_json(out / "study.json")
    assert list(read_json(out / "grid.json")["arms"]) == list(report["arms"]) == [winner]
    assert report["arms"][winner]["seeds"] == [0, 1]
    text = (out / "study.md").read_text()
    assert f"- {winner}: `--width 8`" in text and f"- {loser}:" not in text
    assert not (out / loser).exists()


HOLD_LOCK = """
import sys, time
from cifar.record import FolderLock
lock = FolderLock(sys.argv[1], "study", "--out")
lock.acquire()
lock.announce()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_study_lock(out: Path, seconds: float) -> subprocess.Popen:
    """Another process holding out's study lock for seconds, once it has printed "locked"."""
    out.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / "study.lock"), str(seconds)],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_held_study_folder_is_refused_at_once_and_sweep_elements_wait_for_it(grid, tmp_path):
    source, _ = grid
    out = tmp_path / "widths"
    shutil.copytree(source, out)
    holder = hold_study_lock(out, 120)
    try:
        before = folder_hashes(out, folders=True)
        result = study("--out", out, "--report-only", check=False)
        assert_one_paragraph(result, f"another study is using the study folder {out} (process ")
        assert f"(process {holder.pid} on " in result.stderr
        assert folder_hashes(out, folders=True) == before
    finally:
        holder.kill()
        holder.wait()
    # slurm/sweep.sh's elements start together: --print-run waits for the lock's holder.
    swept = tmp_path / "swept"
    holder = hold_study_lock(swept, 3)
    element = sweep_dry_run(swept, 0, "--epochs", "2")
    assert element.returncode == 0, element.stderr
    assert holder.poll() is not None  # it went ahead only once the holder let go
    assert read_json(swept / "grid.json")["seeds"] == [0, 1]


@pytest.mark.parametrize(
    "name",
    [
        "study.json",
        "study.md",
        "grid.json",
        "curves.png",
        "test_accuracy.png",
        "wandb",
        "tracker.json",
        "study.lock",
        "Study.MD",
        "later-figure.svg",
    ],
)
def test_an_arm_named_like_a_file_of_the_study_is_refused_before_anything_trains(
    tmp_path, capsys, name
):
    out = tmp_path / "study"
    before = folder_hashes(tmp_path, folders=True)
    error = refused(["--out", out, "--arm", f"{name}=--width 8", "--", *ONE_EPOCH], capsys)
    assert f"the arm name {name!r} is, or ends like, a file the study writes" in error
    assert "Give the arm another name" in error
    assert folder_hashes(tmp_path, folders=True) == before


def test_every_file_a_study_writes_is_refused_as_an_arm_name(grid, tmp_path, capsys):
    out, _ = grid
    own = [p.name for p in out.iterdir() if p.name not in ("w8", "w16")]
    assert {"study.json", "study.md", "grid.json", "study.lock", "curves.png"} <= set(own)
    for name in own:
        assert "a file the study writes" in refused(
            ["--out", tmp_path / "s", "--arm", f"{name}=--width 8"], capsys
        )


@settings(max_examples=4 * EXAMPLES, deadline=None)
@given(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(["study.json", "wandb", "a.png", "..", ".", "a/b", " x ", "x.MD"]),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    )
)
def test_an_arm_name_is_a_folder_of_its_own_beside_the_studys_files_or_refused(name):
    spec = f"{name}=--width 8"
    try:
        arms = parse_arms([spec])
    except UserError as error:
        assert str(error).startswith("--arm ") and "\n" not in str(error)
        return
    (accepted,) = arms
    head, _, flags = spec.partition("=")  # a name holding "=" ends at the first one
    assert accepted == head.strip() and arms[accepted] == flags.strip()
    assert os.path.dirname(os.path.normpath(os.path.join("/s", accepted))) == "/s"
    assert accepted not in (".", "..") and accepted.lower() not in STUDY_FILES
    assert not accepted.lower().endswith((".json", ".md", ".png", ".lock"))


def test_a_failed_arm_is_reported_the_others_run_and_it_may_change_or_be_dropped(tmp_path):
    out = tmp_path / "failing"
    command = ["--out", out, "--arm", "big=--batch-size 1000", "--arm", "ok=--width 8"]
    first = study(*command, "--seeds", 0, 1, "--", *ONE_EPOCH, check=False)
    assert first.returncode == 2 and "Traceback" not in first.stderr, first.stderr
    big = out / "big" / "seed0"
    assert (
        f"error: the run {big} failed (train.py exited 2; its message is above). Arm big holds "
        f'no run, so its flags may change: run the study again with --arm "big=NEW FLAGS", or '
        f"remove the arm with --drop-arm big. Arm big's other 1 seed(s) were not started.\n"
    ) in first.stderr
    assert "fewer than one optimizer step needs" in first.stderr  # train.py's own message
    assert not (out / "big" / "seed1").exists()
    report = read_json(out / "study.json")
    assert report["arms"]["ok"]["seeds"] == [0, 1] and report["arms"]["big"]["seeds"] == []
    assert report["missing"] == [str(big), str(out / "big" / "seed1")]
    assert "- big: `--batch-size 1000`" in (out / "study.md").read_text()

    dropped = study("--out", out, "--drop-arm", "big", "--report-only")
    assert "Traceback" not in dropped.stderr
    assert read_json(out / "grid.json")["arms"] == {"ok": "--width 8"}
    assert list(read_json(out / "study.json")["arms"]) == ["ok"]

    fixed = study("--out", out, "--arm", "big=--batch-size 128")
    assert fixed.stdout.count("finished, skipped") == 2
    assert read_json(out / "grid.json")["arms"] == {"ok": "--width 8", "big": "--batch-size 128"}
    assert read_json(big / "config.json")["batch_size"] == 128
    assert read_json(out / "study.json")["arms"]["big"]["seeds"] == [0, 1]


def test_an_arm_with_runs_keeps_its_flags_and_is_never_dropped(grid, tmp_path, capsys):
    source, _ = grid
    out = tmp_path / "widths"
    shutil.copytree(source, out)
    before = folder_hashes(out, folders=True)
    refusals = [
        (["--drop-arm", "w8"], f"--drop-arm w8: the arm holds runs ({out / 'w8' / 'seed0'}, "),
        (["--drop-arm", "w32"], "the study in " + str(out) + " has no arm 'w32' (its arms: w8"),
        (["--drop-arm", "w8", "--arm", "w8=--width 8"], "arm w8 is given with --arm and with"),
        (["--arm", "w8=--width 12"], f"its runs were made with those ({out / 'w8' / 'seed0'}"),
    ]
    for argv, says in refusals:
        assert says in refused(["--out", out, *argv], capsys)
        assert folder_hashes(out, folders=True) == before
    fresh = tmp_path / "fresh"
    assert "there is no study in" in refused(["--out", fresh, "--drop-arm", "a"], capsys)
    assert not fresh.exists()


def test_a_run_killed_by_a_signal_is_named_so_and_the_other_arms_still_run(tmp_path):
    out = tmp_path / "oom"
    longer = [*TINY, "--tracker", "none", "--synthetic-train-size", "2048", "--epochs", "3"]
    command = ["--out", out, "--arm", "first=--width 8", "--arm", "second=--width 8"]
    process = start_study(*command, "--seeds", 0, "--", *longer)
    killed = out / "first" / "seed0"
    deadline = time.monotonic() + 300
    while not (killed / "config.json").exists() or not run_processes(killed):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    for pid in run_processes(killed):  # what the out-of-memory killer does
        os.kill(pid, signal.SIGKILL)
    output, error = process.communicate(timeout=300)
    assert process.returncode == 1, error
    assert "Traceback" not in error and "its message is above" not in error
    assert (
        f"error: the run {killed} failed (train.py was killed by SIGKILL (-9), e.g. by the "
        f"out-of-memory killer; a killed process prints no message of its own)."
    ) in error
    report = read_json(out / "study.json")
    assert report["arms"]["second"]["seeds"] == [0] and report["arms"]["first"]["seeds"] == []
    assert report["missing"] == [str(killed)]
