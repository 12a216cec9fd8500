"""cifar/evaluation.py: what summary.json says of the test set."""

from tests.helpers import SMALL, read_json, run_train


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
