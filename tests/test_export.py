"""cifar/export.py and the portable model: ONNX (through onnxruntime), TorchScript and .pt2 give
PyTorch's logits on any batch size; load_trained rebuilds the model without Accelerate; an older
run gets the very same files from its last checkpoint; W&B keeps them as a model artifact."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    ROOT,
    SMOKE,
    assert_disk_error,
    assert_one_paragraph,
    call_main,
    copy_of,
    damage,
    eval_path_scores,
    fashion_run,
    fashion_test_set,
    folder_hashes,
    full_disk,
    offline_logs,
    read_json,
    read_wandb_records,
    require_package,
    run_module,
    run_train,
    train_env,
)

ODD_BATCH = 37  # neither the batch the files were traced with nor one they were checked on


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fashion_run(tmp_path_factory)


def run_exported(fmt: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    """The logits of an exported file, through the runtime that format is for."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images)
    return torch.export.load(str(path)).module()(images)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, suffix, tolerance",
    [("onnx", "onnx", 1e-4), ("torchscript", "pt", 1e-5), ("exported", "pt2", 1e-5)],
)
@torch.no_grad()
def test_an_exported_file_gives_pytorchs_logits_on_any_batch_size(
    run_dir, tmp_path, fmt, suffix, tolerance
):
    if fmt == "onnx":
        require_package("onnxruntime")
    from cifar.models import load_trained

    out = tmp_path / f"model.{suffix}"
    before = folder_hashes(run_dir)
    result = run_module("cifar.export", [run_dir, "--format", fmt, "--out", out])
    assert f"wrote {out} ({fmt}): input uint8 RGB N x 3 x 32 x 32 (any N), output N x 10" in (
        result.stdout
    )
    assert "loaded back, its logits are within" in result.stdout
    assert folder_hashes(run_dir) == before

    trained = load_trained(str(run_dir))
    images = fashion_test_set().images
    for batch in (images[:ODD_BATCH], images[ODD_BATCH : ODD_BATCH + 1]):
        expected = trained(batch)
        got = run_exported(fmt, out, batch)
        assert got.shape == expected.shape == (len(batch), 10)
        assert (got - expected).abs().max().item() <= tolerance
        assert got.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()


@pytest.mark.slow
def test_load_trained_needs_neither_accelerate_nor_the_run_and_agrees_with_evaluation(
    run_dir, tmp_path
):
    images = fashion_test_set().images
    torch.save(images, tmp_path / "images.pt")
    code = (
        "import sys, torch\n"
        "from cifar.models import load_trained\n"
        f"model = load_trained({str(run_dir)!r})\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(images).softmax(dim=1), {str(tmp_path / 'scores.pt')!r})\n"
        "print('accelerate' in sys.modules, model.classes[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=train_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "T-shirt/top"]
    scores = torch.load(tmp_path / "scores.pt")
    expected = eval_path_scores(run_dir, images)
    assert (scores - expected).abs().max().item() <= 1e-5
    assert scores.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()


@pytest.mark.slow
def test_an_older_run_gets_the_same_portable_model_from_its_last_checkpoint(run_dir, tmp_path):
    from cifar.export import main

    names = ("model.safetensors", "model.json")
    older = copy_of(run_dir, tmp_path, lambda d: [(d / n).unlink() for n in names])
    code, out, err = call_main(main, [older])
    assert code == 0, err
    assert out == f"wrote {older / 'model.safetensors'} and model.json from its last checkpoint\n"
    # Byte for byte what the run wrote when it finished: the same weights, statistics, card.
    for name in names:
        assert (older / name).read_bytes() == (run_dir / name).read_bytes(), name
    before = folder_hashes(older)
    code, out, err = call_main(main, [older])
    assert (code, out) == (0, f"{older} already has its portable model ({', '.join(names)}).\n")
    assert folder_hashes(older) == before


def rewind_last_checkpoint(run: Path) -> None:
    """The run's last checkpoint made to say it is one epoch short: not the summary's end."""
    for name in ("model.safetensors", "model.json"):
        (run / name).unlink()
    progress = sorted((run / "checkpoints").glob("step-*"))[-1] / "progress.json"
    data = json.loads(progress.read_text())
    data["epoch"] -= 1
    progress.write_text(json.dumps(data))


BAD = {
    "not-finished": (lambda d: (d / "summary.json").unlink(), [], "is not finished"),
    "not-ours": (lambda d: (d / "run.lock").unlink(), [], "is not a run folder made by"),
    "corrupt-model": (
        lambda d: damage(d / "model.safetensors"),
        ["--format", "onnx", "--out", "m.onnx"],
        "cannot be loaded",
    ),
    "corrupt-card": (
        lambda d: (d / "model.json").write_text("{"),
        [],
        "model.json cannot be read as JSON",
    ),
    "checkpoint-not-the-end": (rewind_last_checkpoint, [], "is not the end of the run"),
    "pt2-name": (None, ["--format", "exported", "--out", "m.pt"], "Name it FILE.pt2"),
    "out-without-format": (None, ["--out", "m.onnx"], "--out needs --format"),
    "format-without-out": (None, ["--format", "torchscript"], "needs --out FILE"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_input_is_one_paragraph_and_changes_nothing(run_dir, tmp_path, case, monkeypatch):
    from cifar.export import main

    edit, flags, phrase = BAD[case]
    bad = copy_of(run_dir, tmp_path, edit)
    monkeypatch.chdir(tmp_path)
    before = folder_hashes(tmp_path)
    code, out, err = call_main(main, [bad, *flags])
    assert_one_paragraph(code, err, phrase)
    assert out == "" and folder_hashes(tmp_path) == before


@pytest.mark.slow
def test_onnx_without_its_packages_says_which_extra_to_install(run_dir, tmp_path, monkeypatch):
    from cifar.export import main

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # then it cannot be imported
    code, _, err = call_main(main, [run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx"])
    assert_one_paragraph(code, err, "pip install 'cifar-accelerate[export]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_wandb_offline_log_holds_the_portable_model_as_a_model_artifact(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    run_train(
        [*SMOKE, "--tracker", "wandb", "--output-dir", run_dir], env={"WANDB_MODE": "offline"}
    )

    (log,) = offline_logs(run_dir)
    artifacts = [
        record.artifact
        for record in read_wandb_records(log)
        if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "model"
    ]
    assert len(artifacts) == 1
    (artifact,) = artifacts
    run_id = read_json(run_dir / "tracker.json")["run_id"]
    assert artifact.name == f"model-{run_id}"
    assert json.loads(artifact.metadata) == read_json(run_dir / "model.json")
    files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    assert set(files) == {"model.safetensors", "model.json"}
    for name, staged in files.items():
        assert staged.read_bytes() == (run_dir / name).read_bytes(), name


@pytest.mark.fast
@pytest.mark.parametrize("image_size, input_size", [(32, 32), (32, 48)])
def test_the_card_formula_is_the_training_input_transform(image_size, input_size):
    """TrainedClassifier feeds the network what InputTransform fed it in training (to float
    rounding: one computes (x / 255 - mean) / std, the other a fused multiply-add)."""
    from cifar.data.transforms import InputTransform
    from cifar.models import TrainedClassifier

    torch.manual_seed(0)
    seen = []
    network = torch.nn.Sequential(torch.nn.Identity())
    network.register_forward_hook(lambda module, args, output: seen.append(output))
    mean, std = [0.3, 0.5, 0.7], [0.2, 0.25, 0.3]
    card = {"mean": mean, "std": std, "image_size": image_size, "input_size": input_size}
    images = torch.randint(0, 256, (4, 3, image_size, image_size), dtype=torch.uint8)
    TrainedClassifier(network, card)(images)
    expected = InputTransform(mean, std, input_size)(images)
    assert seen[0].shape == expected.shape == (4, 3, input_size, input_size)
    assert (seen[0] - expected).abs().max().item() < 1e-5


@pytest.mark.fast
@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda c: c.pop("format_version"), "model cards begin at version 1"),
        (lambda c: c.pop("weights_sha256"), "it lacks weights_sha256"),
        (lambda c: c.update(mean=[0.5, 0.5]), "its mean is not three numbers"),
        (lambda c: c.update(std=[0.5, 0.0, 0.5]), "std, image_size or input_size"),
        (lambda c: c.update(classes=[]), "it names no class"),
        (lambda c: c.update(format_version=99), "by a newer cifar-accelerate"),
    ],
)
def test_the_model_card_validator_names_what_is_wrong(edit, problem):
    from cifar.record import RecordError
    from cifar.record.schema import check_model_card

    card = {
        "format_version": 1, "model": "cnn", "builder": {}, "classes": ["a", "b"],
        "image_size": 32, "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
        "weights": "model.safetensors", "weights_sha256": "0" * 64, "input": {},
        "network_input": {}, "output": {},
    }  # fmt: skip
    check_model_card(card)
    edit(card)
    with pytest.raises(RecordError, match=problem):
        check_model_card(card)


@pytest.mark.slow
def test_a_cache_features_run_gets_its_whole_network_backbone_and_head(tmp_path):
    """--cache-features trains the head alone on a frozen backbone's features; its portable
    model is the whole network (here a random backbone drawn again from the seed), scoring the
    test images as the run scored their features, and its checkpoint gives the same bytes."""
    from cifar.evaluate import main as evaluate
    from cifar.export import main as export

    run_dir = tmp_path / "run"
    run_train(
        [*SMOKE, "--model", "resnet18", "--no-pretrained", "--cache-features", "--augment",
         "none", "--image-size", "32", "--output-dir", run_dir]
    )  # fmt: skip
    code, _, err = call_main(evaluate, [run_dir, "--out", tmp_path / "eval.json"])
    assert code == 0, err
    scored, summary = read_json(tmp_path / "eval.json"), read_json(run_dir / "summary.json")
    assert (scored["test_accuracy"], scored["test_loss"]) == (
        summary["test_accuracy"],
        summary["test_loss"],
    )
    names = ("model.safetensors", "model.json")
    older = copy_of(run_dir, tmp_path, lambda d: [(d / n).unlink() for n in names])
    assert call_main(export, [older])[0] == 0
    for name in names:
        assert (older / name).read_bytes() == (run_dir / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt"), ("exported", "pt2")]
)
def test_an_export_to_a_full_disk_is_one_paragraph_and_leaves_nothing_behind(
    run_dir, tmp_path, fmt, suffix
):
    if fmt == "onnx":
        require_package("onnxscript")
    before = folder_hashes(run_dir)
    with full_disk(tmp_path) as disk:
        out = disk / f"model.{suffix}"
        result = run_module("cifar.export", [run_dir, "--format", fmt, "--out", out], check=False)
        left = sorted(p.name for p in disk.iterdir())
    assert_disk_error(result.returncode, result.stderr, "could not write", "MiB free")
    assert left == ["filler"]  # neither the file nor its scratch folder
    assert folder_hashes(run_dir) == before
