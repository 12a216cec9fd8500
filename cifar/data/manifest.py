"""An image folder's manifest: every image a run uses, train and test, subsets applied, as
(path relative to the folder, class, size in bytes, mtime in ns), none of them opened.

Its digest is one of the run's strict resume settings (MANIFEST_SETTING); the manifest itself is
kept in the run folder (data_manifest.json) so that a refused resume can say what changed; each
image cache stores the digest of the split it was decoded from and is used only when it matches.
A file rewritten with its old size and mtime put back is not seen: reading every file to hash
it would cost as much as decoding it.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field

from cifar.data.decode import shown
from cifar.record import FORMAT_KEY, MANIFEST_FILE, read_json, versioned

MANIFEST_SETTING = "image_folder_manifest"
MANIFEST_FORMAT = 1
FIELDS = ("path", "class", "size", "mtime_ns")
SPLITS = ("train", "test")
EXAMPLES = 3  # of each kind of change, in a refusal


def stat_entry(root: str, path: str, class_name: str) -> list:
    """[path relative to root, class, size, mtime_ns]; size and mtime None when the file cannot
    be stat'ed (a dangling link: named when it is read)."""
    try:
        status = os.stat(path)
        size, mtime = status.st_size, status.st_mtime_ns
    except OSError:
        size = mtime = None
    return [os.path.relpath(path, root), class_name, size, mtime]


def split_digest(name: str, entries: list) -> str:
    text = json.dumps([MANIFEST_FORMAT, name, entries], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class Manifest:
    """{split: entries} of one image folder as a run uses it."""

    splits: dict
    digests: dict = field(init=False)
    digest: str = field(init=False)

    def __post_init__(self):
        self.digests = {name: split_digest(name, self.splits[name]) for name in SPLITS}
        combined = "\n".join(f"{name} {self.digests[name]}" for name in SPLITS)
        self.digest = hashlib.sha256(combined.encode()).hexdigest()
        SEEN[self.digest] = self

    @classmethod
    def of(cls, root: str, train, test) -> "Manifest":
        """The manifest of two ImageFiles read from root."""
        return cls(
            {
                name: [
                    stat_entry(root, path, split.classes[label]) for path, label in split.samples
                ]
                for name, split in zip(SPLITS, (train, test), strict=True)
            }
        )

    def text(self, folder: str) -> str:
        """The manifest as JSON, one image a line (a diff or grep reads it)."""
        head = versioned({"image_folder": folder, "digest": self.digest, "fields": list(FIELDS)})
        parts = [json.dumps(head)[:-1]]
        for name in SPLITS:
            lines = ",\n".join(json.dumps(entry) for entry in self.splits[name])
            parts.append(f', "{name}": [\n{lines}\n]')
        return "".join(parts) + "}\n"


# Manifests made by this process, by digest: the current side of a refused resume's comparison.
SEEN: dict[str, Manifest] = {}


def recorded(run_dir: str) -> Manifest | None:
    """The manifest of run_dir's data_manifest.json; None when it is missing or not one."""
    try:
        data = read_json(os.path.join(run_dir, MANIFEST_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get(FORMAT_KEY), int):
        return None
    splits = {name: data.get(name) for name in SPLITS}
    well_formed = all(
        isinstance(entries, list)
        and all(isinstance(e, list) and len(e) == len(FIELDS) for e in entries)
        for entries in splits.values()
    )
    if not well_formed:
        return None
    manifest = Manifest(splits)
    return manifest if manifest.digest == data.get("digest") else None


def up_to_date(run_dir: str, digest: str) -> bool:
    """Whether run_dir's data_manifest.json is the manifest of that digest."""
    manifest = recorded(run_dir)
    return manifest is not None and manifest.digest == digest


def run_folder_of(folder: str) -> str:
    """The run folder of a checkpoint folder (run/checkpoints/step-N), or folder itself."""
    parent = os.path.dirname(os.path.abspath(folder))
    if os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent)
    return os.path.abspath(folder)


def describe_change(old_digest, new_digest, folder: str) -> str:
    """What changed in the image folder since the run recorded old_digest (for a refusal)."""
    before = recorded(run_folder_of(folder))
    after = SEEN.get(new_digest)
    if before is None or before.digest != old_digest or after is None:
        where = os.path.join(run_folder_of(folder), MANIFEST_FILE)
        return (
            f"the image folder's files are not those the run was trained on (manifest "
            f"{str(old_digest)[:12]} -> {str(new_digest)[:12]}; {where}, which would list each "
            f"file, is missing or is not that manifest)"
        )
    return (
        f"the image folder's files are not those the run was trained on: {changes(before, after)}"
    )


def changes(before: Manifest, after: Manifest) -> str:
    """'2 added (a, b); 1 removed (c); ...': each kind of change, counted, with examples. A file
    gone from one place and come to another is a move when its name inside the class folder, or
    its size and mtime (which a rename keeps), are the same."""
    kinds = {
        "added": [],
        "removed": [],
        "moved to another class": [],
        "renamed": [],
        "changed size or mtime": [],
    }
    for name in SPLITS:
        old = {entry[0]: entry for entry in before.splits[name]}
        new = {entry[0]: entry for entry in after.splits[name]}
        for path in sorted(old.keys() & new.keys()):
            if old[path] != new[path]:
                kinds["changed size or mtime"].append(f"{path} ({sizes(old[path], new[path])})")
        gone = {path: old[path] for path in sorted(old.keys() - new.keys())}
        came = [new[path] for path in sorted(new.keys() - old.keys())]
        for key in (inside, stamp):
            sources = {}
            for entry in gone.values():
                sources.setdefault(key(entry), []).append(entry)
            unmatched = []
            for entry in came:
                candidates = sources.get(key(entry)) if key(entry) is not None else None
                if not candidates:
                    unmatched.append(entry)
                    continue
                source = candidates.pop(0)
                kind = "renamed" if source[1] == entry[1] else "moved to another class"
                kinds[kind].append(f"{source[0]} -> {entry[0]}")
                del gone[source[0]]
            came = unmatched
        kinds["added"] += [entry[0] for entry in came]
        kinds["removed"] += list(gone)
    kinds = {kind: list(map(shown, examples)) for kind, examples in kinds.items()}
    parts = []
    for kind, examples in kinds.items():
        if examples:
            more = f", and {len(examples) - EXAMPLES} more" if len(examples) > EXAMPLES else ""
            parts.append(f"{len(examples)} {kind} ({', '.join(examples[:EXAMPLES])}{more})")
    touched = kinds["changed size or mtime"]
    if touched and len(parts) == 1 and all(e.endswith("(modified since)") for e in touched):
        parts[0] += (
            "; only modification times changed, as a copy that does not keep them makes "
            "(stage the folder with rsync -a or cp -p)"
        )
    return "; ".join(parts) or "the same files in another order"


def inside(entry: list) -> tuple:
    """(split folder, path inside the class folder): what a move to another class keeps."""
    parts = entry[0].split(os.sep, 2)
    return (parts[0], parts[-1])


def stamp(entry: list) -> tuple | None:
    """(size, mtime): what a rename keeps; None when unknown."""
    return None if entry[2] is None else (entry[2], entry[3])


def sizes(old: list, new: list) -> str:
    if old[2] != new[2]:
        return f"{old[2]} -> {new[2]} bytes"
    return "modified since"
