"""bench/throughput.py: runs end to end at a tiny size and writes its markdown section.

Speed is never asserted: these tests prove the benchmark runs and reports, not how fast.
"""

import re
import subprocess
import sys

from bench.section import SECTION_END, SECTION_START, write_section
from tests.helpers import ROOT, train_env

TINY = [
    "--device", "cpu",
    "--images", "256", "--batch-size", "64",
    "--resnet-images", "8", "--cache-images", "8", "--resnet-batch-size", "4",
    "--image-size", "64",
    "--warmup", "1", "--repeats", "1", "--epochs", "3",
    "--num-workers", "1", "0",
    "--cases", "cnn", "resnet-cached",
]  # fmt: skip
ROW = re.compile(
    r"^\| (?P<case>[\w-]+) \| (?P<pipeline>[^|]+) \| (?P<speed>[\d,]+) \| (?P<epoch>[\d.]+) "
    r"\| (?P<run>[\d.]+) \| (?P<peak>[\d,]+|n/a) \| (?P<ratio>[\d.]+x|) \|$"
)


def table_rows(text: str) -> list[dict]:
    return [m.groupdict() for line in text.splitlines() if (m := ROW.match(line))]


def test_benchmark_prints_and_writes_every_row_at_a_tiny_size(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), *TINY, "--out", str(out)],
        cwd=tmp_path,  # the script finds the project from its own path
        env=train_env(),
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = [
        ("cnn", "ours (fp32)"),
        ("cnn", "plain (fp32, 1 worker)"),
        ("cnn", "plain (fp32, 0 workers)"),
        ("resnet-cached", "ours (fp32), feature pass"),
        ("resnet-cached", "ours (fp32), head epochs"),
        ("resnet-cached", "plain (fp32, 1 worker), no cache"),
        ("resnet-cached", "plain (fp32, 0 workers), no cache"),
    ]
    printed = table_rows(result.stdout)
    assert [(r["case"], r["pipeline"]) for r in printed] == expected
    for row in printed:
        assert float(row["speed"].replace(",", "")) > 0
        assert (row["ratio"] != "") == row["pipeline"].startswith("plain")
    assert "| case | pipeline | images/s | epoch s | 3 epochs s | peak RSS MiB | ours/plain |" in (
        result.stdout
    )

    text = out.read_text()
    name = re.search(r"<!-- bench:start (cpu: .+, ours in fp32) -->", text).group(1)
    assert text.startswith("# Benchmarks\n")
    assert f"## {name}" in text and text.count(SECTION_END) == 1
    assert "- command: `python bench/throughput.py --device cpu --images 256" in text
    assert table_rows(text) == printed


def test_imagefolder_case_times_plain_and_ours_uncached_and_cached(tmp_path):
    command = [
        sys.executable, str(ROOT / "bench" / "throughput.py"), "--device", "cpu",
        "--cases", "imagefolder", "--folder-images", "16", "--folder-batch-size", "4",
        "--warmup", "1", "--repeats", "1", "--num-workers", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=train_env(), text=True, capture_output=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = table_rows(result.stdout)
    assert [(r["case"], r["pipeline"]) for r in printed] == [
        ("imagefolder", "ours (fp32, 1 worker), uncached"),
        ("imagefolder", "ours (fp32, 1 worker), cache: decoding pass"),
        ("imagefolder", "ours (fp32, 1 worker), cache: epochs"),
        ("imagefolder", "plain (fp32, 1 worker)"),
    ]
    assert all(float(r["speed"].replace(",", "")) > 0 for r in printed)
    assert [r["ratio"] != "" for r in printed] == [False, False, False, True]


def test_rewriting_a_section_replaces_only_that_device(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nWhat the rows measure.\n")

    def section(name: str, body: str) -> str:
        return f"{SECTION_START.format(name)}\n## {name}\n{body}\n{SECTION_END}"

    write_section(path, "cuda: H100", section("cuda: H100", "old gpu"))
    write_section(path, "cpu: EPYC", section("cpu: EPYC", "cpu numbers"))
    write_section(path, "cuda: H100", section("cuda: H100", "new gpu"))

    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nWhat the rows measure.\n")
    assert "old gpu" not in text
    assert text.count("new gpu") == 1 and text.count("cpu numbers") == 1
    assert text.index("new gpu") < text.index("cpu numbers")  # replaced in place
    assert text.count(SECTION_END) == 2
