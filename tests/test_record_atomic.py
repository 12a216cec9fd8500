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


def test_a_record_is_readable_as_a_file_open_makes_it_not_private_as_mkstemp(tmp_path):
    """mkstemp makes 0600 files: a run folder shared on a cluster would be unreadable to the
    group. A record gets the mode open() gives a new file under the same umask."""
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic_write(str(tmp_path / "record.json"), "{}")
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    atomic_write(str(tmp_path / "private.json"), "{}", mode=0o600)
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
