"""The experiment tracker (W&B, TensorBoard) through Accelerate's trackers, on the main
process only."""

import importlib.util
import json
import os
import uuid
import warnings

import torch
from accelerate.tracking import GeneralTracker, TensorBoardTracker

from cifar.errors import UserError
from cifar.record import write_json

TRACKER_FILE = "tracker.json"


def wandb_base_url() -> str:
    """The W&B server runs log to (WANDB_BASE_URL, `wandb login --host`, else W&B's own)."""
    from wandb.sdk import wandb_setup

    return wandb_setup.singleton().settings.base_url


def wandb_has_credentials() -> bool:
    """Whether wandb finds credentials for its server, the way wandb.init looks for them: an
    API key (WANDB_API_KEY, the netrc entry of a self-hosted WANDB_BASE_URL, `wandb login`) or
    an identity-token file. Reads no network and changes no file."""
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib import wbauth

    try:
        auth = wbauth.authenticate_session(
            host=wandb_base_url(), source="train.py", prompt=False, update_session=False
        )
    except AuthenticationError as error:
        raise UserError(
            f"W&B credentials are malformed: {error}. Fix them (`wandb login --relogin`), or "
            f"log offline with WANDB_MODE=offline, or train without a tracker: --tracker none."
        ) from None
    return auth is not None


WANDB_PROBE_SECONDS = 10  # the longest a run waits to learn that the W&B server is unreachable


def wandb_reachable(url: str, seconds: float = WANDB_PROBE_SECONDS) -> bool:
    """Whether the W&B server answers HTTP at all within `seconds` (name lookup included,
    proxies from the environment honoured); any HTTP status counts as an answer."""
    import threading
    import urllib.error
    import urllib.request

    answered = threading.Event()

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds)
            answered.set()
        except urllib.error.HTTPError:
            answered.set()
        except Exception:  # no route, no name, TLS, timeout: not reachable
            pass

    # A thread, because a hanging name lookup ignores the socket timeout.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return answered.is_set()


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
    """The tracker is installed and, for W&B asked to log online, has credentials."""
    if config.tracker != "none" and importlib.util.find_spec(config.tracker) is None:
        raise UserError(
            f"--tracker {config.tracker} needs the {config.tracker} package, which is not "
            f"installed. Run `pip install {config.tracker}`, or train without a tracker: "
            f"--tracker none."
        )
    online = config.tracker == "wandb" and os.environ.get("WANDB_MODE") == "online"
    if online and not wandb_has_credentials():
        raise UserError(
            f"WANDB_MODE=online, but wandb finds no credentials for {wandb_base_url()}. "
            f"Log in with `wandb login` (or set WANDB_API_KEY), or log offline with "
            f"WANDB_MODE=offline, or train without a tracker: --tracker none."
        )


def prepare_tracker(config, run_dir: str, is_main: bool) -> dict:
    """Settings for the tracker's init. W&B without WANDB_MODE: online when it has credentials
    and its server answers within WANDB_PROBE_SECONDS, else offline with one warning."""
    if config.tracker != "wandb":
        return {}
    sync = f"`wandb sync {os.path.join(os.path.abspath(run_dir), 'wandb', 'offline-run-*')}`"
    if not os.environ.get("WANDB_MODE") and is_main:
        reason = ""
        if not wandb_has_credentials():
            reason = "no W&B credentials found (`wandb login`, WANDB_API_KEY)"
        elif not wandb_reachable(wandb_base_url()):
            reason = f"{wandb_base_url()} did not answer within {WANDB_PROBE_SECONDS} s"
        if reason:
            os.environ["WANDB_MODE"] = "offline"
            warnings.warn(
                f"{reason}: logging offline to the run folder; upload later with {sync}",
                stacklevel=2,
            )
    if os.environ.get("WANDB_MODE") == "offline":
        # Logged tables (their images) are staged as artifacts in WANDB_DATA_DIR until `wandb
        # sync` uploads them; keep them in the run folder rather than in ~/.local/share/wandb.
        os.environ.setdefault("WANDB_DATA_DIR", os.path.join(os.path.abspath(run_dir), "wandb"))
    settings = {
        "dir": run_dir,
        "name": config.run_name or os.path.basename(os.path.abspath(run_dir)),
        "group": config.wandb_group or f"{config.dataset}-study",
        "tags": list(config.tags) + [config.model, config.dataset],
        "resume": "allow",
    }
    if os.environ.get("WANDB_MODE"):
        settings["mode"] = os.environ["WANDB_MODE"]
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
    # TensorBoard needs its folder when the Accelerator is made, before the run folder is known,
    # so the tracker joins here instead of through Accelerator(log_with=...): run_dir/tensorboard.
    names = [t.name if isinstance(t, GeneralTracker) else str(t) for t in accelerator.log_with]
    if "tensorboard" not in names:
        accelerator.log_with.append(TensorBoardTracker("tensorboard", run_dir))
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


SAMPLE_IMAGES = 32  # test images in the end-of-run predictions table


def log_run_end(accelerator, config, run, summary: dict) -> None:
    """Final tracker entries, from the main process: the summary values (equal to summary.json),
    per-class accuracy, the confusion matrix and a table of sample test predictions.

    W&B also gets summary.json as its run summary. Nothing here is collective: only the main
    process runs the model, on its own first test images, outside any DDP wrapper.
    """
    if config.tracker == "none" or not accelerator.is_main_process:
        return
    step = run.progress.global_step
    samples = predict_samples(accelerator, run, SAMPLE_IMAGES)
    tracker = accelerator.get_tracker(config.tracker, unwrap=True)
    if config.tracker == "wandb":
        log_wandb_end(tracker, summary, samples, step)
    else:
        log_tensorboard_end(tracker, summary, samples, step)


def summary_scalars(summary: dict) -> dict:
    """summary/<key> for every number of summary.json, per-class accuracy included."""
    scalars = {
        f"summary/{k}": v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for name, accuracy in summary["per_class_accuracy"].items():
        scalars[f"summary/per_class_accuracy/{name}"] = accuracy
    return scalars


@torch.no_grad()
def predict_samples(accelerator, run, count: int) -> dict | None:
    """The first `count` images of this process's test shard with label, prediction and its
    softmax probability; None when the loader yields cached features instead of images."""
    model = accelerator.unwrap_model(run.model, keep_torch_compile=False)
    was_training = model.training
    model.eval()
    images, labels, predictions, confidences = [], [], [], []
    seen = 0
    for batch, batch_labels in run.test_loader:
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            return None
        batch, batch_labels = batch[: count - seen], batch_labels[: count - seen]
        with accelerator.autocast():
            logits = model(run.to_input(batch))
        confidence, prediction = logits.float().softmax(dim=1).max(dim=1)
        images.append(batch.permute(0, 2, 3, 1).cpu())  # N x H x W x C, as image libraries want
        labels += batch_labels.tolist()
        predictions += prediction.tolist()
        confidences += confidence.tolist()
        seen += len(batch)
        if seen >= count:
            break
    model.train(was_training)
    if not seen:
        return None
    return {
        "images": torch.cat(images).numpy(),
        "labels": [run.classes[i] for i in labels],
        "predictions": [run.classes[i] for i in predictions],
        "confidences": confidences,
    }


def log_wandb_end(wandb_run, summary: dict, samples: dict | None, step: int) -> None:
    import wandb

    classes = summary["classes"]
    per_class = wandb.Table(
        columns=["class", "accuracy"], data=[[c, summary["per_class_accuracy"][c]] for c in classes]
    )
    matrix = summary["confusion_matrix"]
    cells = [[a, p, matrix[i][j]] for i, a in enumerate(classes) for j, p in enumerate(classes)]
    entries = {
        **summary_scalars(summary),
        "test/per_class_accuracy": wandb.plot.bar(
            per_class, "class", "accuracy", title="Per-class test accuracy"
        ),
        # The chart wandb.plot.confusion_matrix makes, built from the counts in summary.json.
        "test/confusion_matrix": wandb.plot_table(
            "wandb/confusion_matrix/v1",
            wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": "Test confusion matrix"},
        ),
    }
    if samples is not None:
        rows = zip(
            samples["images"],
            samples["labels"],
            samples["predictions"],
            samples["confidences"],
            strict=True,
        )
        entries["test/samples"] = wandb.Table(
            columns=["image", "label", "prediction", "confidence", "correct"],
            data=[[wandb.Image(im), lab, pred, conf, lab == pred] for im, lab, pred, conf in rows],
        )
    wandb_run.log(entries, step=step)
    wandb_run.summary.update(summary)


def log_tensorboard_end(writer, summary: dict, samples: dict | None, step: int) -> None:
    from cifar.report import confusion_figure, samples_figure

    for key, value in summary_scalars(summary).items():
        writer.add_scalar(key, value, step)
    writer.add_figure("test/confusion_matrix", confusion_figure(summary), step)
    if samples is not None:
        writer.add_figure("test/samples", samples_figure(samples), step)
    writer.add_text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```", step)
    writer.flush()
