"""cifar/record/atomic.py: one atomic writer for every record and cache."""

import os

import pytest

from cifar.record import atomic_write
from tests.helpers import ROOT


def test_atomic_write_replaces_whole_or_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    atomic_write(str(path), "old")

    def fails_half_way(f):
        f.write(b"new, but only ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(str(path), fails_half_way)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["record.json"]
    atomic_write(str(path), b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["record.json"]


def test_every_record_and_cache_is_written_through_atomic_write():
    """No module writes a file by rename of its own (the checkpoint folder's rename aside)."""
    offenders = []
    for path in (ROOT / "cifar").rglob("*.py"):
        if path.name == "atomic.py":
            continue
        text = path.read_text()
        if "os.replace(" in text and path.name != "checkpoint.py":
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
