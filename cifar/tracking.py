"""What a run leaves behind: the run folder's files and the experiment tracker (W&B, TensorBoard).

Only the main process writes; every file is replaced atomically.
"""

import importlib.util
import json
import os
import uuid
import warnings

from cifar.checkpoint import write_json
from cifar.errors import UserError

TRACKER_FILE = "tracker.json"


class RunFiles:
    """config.json, metrics.jsonl and summary.json of one run folder."""

    def __init__(self, run_dir: str, is_main: bool):
        self.run_dir, self.is_main = run_dir, is_main

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def write_config(self, config: dict) -> None:
        if self.is_main:
            write_json(self.path("config.json"), config)

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl, one object per finished epoch (rewritten whole, so resumes never
        leave a duplicate or half line)."""
        if not self.is_main:
            return
        temporary = self.path(f"metrics.jsonl.tmp{os.getpid()}")
        with open(temporary, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in history)
        os.replace(temporary, self.path("metrics.jsonl"))

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            write_json(self.path("summary.json"), summary)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser(os.environ.get("NETRC", "~/.netrc"))
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


def tracker_run_id(run_dir: str) -> str:
    """The tracker run id of this run folder: made once, reused on resume."""
    path = os.path.join(run_dir, TRACKER_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["run_id"]
    run_id = uuid.uuid4().hex[:8]
    write_json(path, {"run_id": run_id})
    return run_id


def check_tracker_installed(config) -> None:
    if config.tracker != "none" and importlib.util.find_spec(config.tracker) is None:
        raise UserError(
            f"--tracker {config.tracker} needs the {config.tracker} package, which is not "
            f"installed. Run `pip install {config.tracker}`, or train without a tracker: "
            f"--tracker none."
        )


def prepare_tracker(config, run_dir: str, is_main: bool) -> dict:
    """Settings for the tracker's init (W&B: offline when there is no API key)."""
    if config.tracker != "wandb":
        return {}
    if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        if is_main:
            warnings.warn(
                "no W&B API key found: logging offline to the run folder "
                "(sync later with `wandb sync`)",
                stacklevel=2,
            )
    settings = {
        "dir": run_dir,
        "name": config.run_name or os.path.basename(os.path.abspath(run_dir)),
        "group": config.wandb_group or f"{config.dataset}-study",
        "tags": list(config.tags) + [config.model, config.dataset],
        "resume": "allow",
    }
    if config.wandb_entity:
        settings["entity"] = config.wandb_entity
    return {"wandb": settings}


def start_tracker(accelerator, config, run_dir: str, init_kwargs: dict, flat_config: dict):
    """Start the configured tracker on the main process, resuming its run when there is one."""
    if config.tracker == "none":
        return
    if config.tracker == "wandb":
        run_id = tracker_run_id(run_dir) if accelerator.is_main_process else ""
        init_kwargs["wandb"]["id"] = run_id
        accelerator.init_trackers(config.wandb_project, flat_config, init_kwargs=init_kwargs)
        return
    scalar_config = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_config.items()
    }
    accelerator.init_trackers("tensorboard", scalar_config)


def wandb_sync_hint(accelerator, config) -> str:
    if config.tracker != "wandb" or os.environ.get("WANDB_MODE") != "offline":
        return ""
    run = accelerator.get_tracker("wandb", unwrap=True)
    folder = getattr(run, "dir", "") or ""
    return f"W&B run saved offline; upload it with: wandb sync {os.path.dirname(folder)}"


def log_run_end(accelerator, config, run, summary: dict) -> None:
    """Final tracker entries: the summary values (equal to summary.json)."""
    if config.tracker == "none":
        return
    accelerator.log(
        {
            f"summary/{k}": v
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        step=run.progress["global_step"],
    )
