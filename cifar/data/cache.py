"""Where decoded or unpacked data is cached: $XDG_CACHE_HOME/cifar-accelerate/<kind>
(~/.cache when unset), or, where that cannot be written (a batch user without a home), a
folder beside the data folder (never inside it: an image folder's classes are its folders),
else the system's temporary folder; said once when it falls back."""

import functools
import os
import tempfile


def cache_dir(kind: str, data_dir: str) -> str:
    """A writable folder for the caches of kind (created)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [
        os.path.join(home, "cifar-accelerate", kind),
        os.path.join(os.path.dirname(os.path.abspath(data_dir)), ".cifar-accelerate-cache", kind),
        os.path.join(tempfile.gettempdir(), f"cifar-accelerate-{os.getuid()}", kind),
    ]
    for folder in candidates:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            if folder != candidates[0]:
                note_fallback(candidates[0], folder)
            return folder
    return candidates[-1]  # unwritable everywhere: the write itself says why


@functools.cache
def note_fallback(wanted: str, used: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"note: cannot write the cache folder {wanted}; caching in {used}", flush=True)
