"""cifar/evaluation.py: what summary.json says of the test set."""

import torch

from tests.helpers import SMALL, HostReads, read_json, run_train


def test_a_class_without_a_test_image_has_no_accuracy_not_zero(tmp_path):
    run_train([*SMALL, "--test-subset", "6", "--output-dir", tmp_path / "run"])
    summary = read_json(tmp_path / "run" / "summary.json")
    tested = {
        name: sum(row)
        for name, row in zip(summary["classes"], summary["confusion_matrix"], strict=True)
    }
    assert sum(tested.values()) == 6 and 0 in tested.values()  # 10 classes, 6 images
    for name, count in tested.items():
        accuracy = summary["per_class_accuracy"][name]
        assert (accuracy is None) == (count == 0), (name, count, accuracy)


def test_scoring_reads_the_device_a_fixed_number_of_times_whatever_the_batches(monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from cifar.evaluation import eval_model

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    generator = torch.Generator().manual_seed(0)

    def batches(n: int):
        return [(torch.randn(4, 3, 2, 2, generator=generator), torch.arange(4) % 10)] * n

    reads = {}
    try:
        for n in (1, 6):
            counter = HostReads(monkeypatch)
            result = eval_model(accelerator, model, batches(n), torch.nn.Identity(), 10)
            reads[n] = counter.count
            monkeypatch.undo()
            assert result["num_test_samples"] == 4 * n
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert reads[6] == reads[1], reads  # none per batch: the confusion matrix checks no input


def test_a_smaller_last_batch_is_padded_with_zeros_in_its_memory_format():
    from cifar.evaluation import padded

    inputs = torch.randn(5, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    out = padded(inputs, 8)
    assert out.shape == (8, 3, 4, 4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:5], inputs) and not out[5:].any()
    features = torch.randn(3, 2048)  # cached backbone features
    assert torch.equal(padded(features, 4)[:3], features) and padded(features, 3) is features
