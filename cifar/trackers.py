"""The experiment trackers (W&B, TensorBoard, none), one adapter class each, in a registry.

An adapter owns everything a run asks of its tracker: whether its package is installed and its
credentials are usable (`check`), its settings (`prepare`), how it joins the Accelerator
(`log_with`, `start`), the end-of-run entries (`log_run_end`) and the upload hint
(`sync_hint`). The live tracker is Accelerate's GeneralTracker; only the main process logs.
"""

import importlib.util
import json
import os
import uuid

import torch
from accelerate.tracking import TensorBoardTracker

from cifar.distributed import bare_module
from cifar.errors import UserError, warn
from cifar.evaluation import classify
from cifar.record import write_json

TRACKER_FILE = "tracker.json"
SAMPLE_IMAGES = 32  # test images in the end-of-run predictions table
WANDB_PROBE_SECONDS = 10  # the longest a run waits to learn that the W&B server is unreachable


class Tracker:
    """The tracker `--tracker NAME` picks; subclasses override what their tracker does."""

    name = ""
    package = ""  # the module `--tracker NAME` needs installed
    log_with = None  # Accelerator(log_with=...), for a tracker that joins as it is made
    summarizes_studies = False  # whether a study logs its results as a run of this tracker

    def check(self) -> None:
        """A UserError, before any work, when the tracker cannot log: its package is missing."""
        if importlib.util.find_spec(self.package) is None:
            raise UserError(
                f"--tracker {self.name} needs the {self.package} package, which is not "
                f"installed. Run `pip install {self.package}`, or train without a tracker: "
                f"--tracker none."
            )

    def prepare(self, config, run_dir: str, is_main: bool) -> dict:
        """Accelerate's init_kwargs for this tracker, once the run folder is known."""
        return {}

    def start(self, accelerator, config, run_dir: str, init_kwargs: dict, flat_config: dict):
        """Start the tracker's run on the main process, resuming it when there is one."""

    def log_run_end(self, accelerator, run, summary: dict) -> None:
        """Final tracker entries, from the main process: the summary values (equal to
        summary.json), per-class accuracy, the confusion matrix and sample test predictions.

        Nothing here is collective: only the main process runs the model, on its own first
        test images, outside any DDP wrapper.
        """
        if not accelerator.is_main_process:
            return
        tta = summary.get("test_time_augmentation") == "flip"
        samples = predict_samples(accelerator, run, SAMPLE_IMAGES, tta)
        tracker = accelerator.get_tracker(self.name, unwrap=True)
        self.log_end(tracker, summary, samples, run.progress.global_step)

    def log_end(self, tracker, summary: dict, samples: dict | None, step: int) -> None:
        """log_run_end's entries, written with the tracker's own object."""

    def sync_hint(self, accelerator) -> str:
        """What to run to upload a run logged offline; empty when there is nothing to do."""
        return ""

    def log_model(self, accelerator, run_dir: str) -> None:
        """Log the run's portable model (model.safetensors + model.json) where the tracker keeps
        files; nothing for a tracker without them."""


class NoTracker(Tracker):
    """--tracker none: the run folder only; nothing to install, start or log."""

    name = "none"

    def check(self) -> None:
        pass

    def log_run_end(self, accelerator, run, summary: dict) -> None:
        pass


class ConfigTensorBoardTracker(TensorBoardTracker):
    """Accelerate's TensorBoard tracker, given the Config as HParams, which take scalars only:
    lists (tags, arm flags) go in as their text."""

    def store_init_configuration(self, values: dict):
        scalars = (int, float, str, bool)
        super().store_init_configuration(
            {k: v if isinstance(v, scalars) else str(v) for k, v in values.items()}
        )


class TensorBoard(Tracker):
    """--tracker tensorboard: event files in <run folder>/tensorboard."""

    name = "tensorboard"
    package = "tensorboard"

    def start(self, accelerator, config, run_dir: str, init_kwargs: dict, flat_config: dict):
        # TensorBoard needs its folder when the Accelerator is made, before the run folder is
        # known, so it joins here instead of through Accelerator(log_with=...).
        if not any(isinstance(t, ConfigTensorBoardTracker) for t in accelerator.log_with):
            accelerator.log_with.append(ConfigTensorBoardTracker(self.name, run_dir))
        accelerator.init_trackers(self.name, flat_config)

    def log_end(self, writer, summary: dict, samples: dict | None, step: int) -> None:
        from cifar.report.classes import confusion_figure, per_class_figure
        from cifar.report.figures import samples_figure

        for key, value in summary_scalars(summary).items():
            writer.add_scalar(key, value, step)
        run = {"summary": summary, "label": f"{summary['model']} on {summary['dataset']}"}
        writer.add_figure("test/per_class_accuracy", per_class_figure([run]), step)
        writer.add_figure("test/confusion_matrix", confusion_figure(summary), step)
        if samples is not None:
            writer.add_figure("test/samples", samples_figure(samples), step)
        writer.add_text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```", step)
        writer.flush()


class WandB(Tracker):
    """--tracker wandb (the default): a W&B run, online when it can be, else offline into the
    run folder. A study's summary run goes through the same settings (`init_settings`)."""

    name = "wandb"
    package = "wandb"
    log_with = "wandb"
    summarizes_studies = True
    offline_warning = ""  # held back by choose_mode until announce_offline

    def check(self) -> None:
        """The package, and credentials when WANDB_MODE=online asks for the server."""
        super().check()
        if os.environ.get("WANDB_MODE") == "online" and not wandb_has_credentials():
            raise UserError(
                f"WANDB_MODE=online, but wandb finds no credentials for {wandb_base_url()}. "
                f"Log in with `wandb login` (or set WANDB_API_KEY), or log offline with "
                f"WANDB_MODE=offline, or train without a tracker: --tracker none."
            )

    def choose_mode(self, folder: str, announce: bool = True) -> str:
        """WANDB_MODE for a run logging into folder, as set, or (unset) online when there are
        credentials and the server answers within WANDB_PROBE_SECONDS, else offline with one
        warning (now, or with announce False at announce_offline). Offline runs stage their
        tables in folder/wandb. Empty means wandb's default."""
        folder = os.path.abspath(folder)
        environment = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
        if not os.environ.get("WANDB_MODE"):
            reason = ""
            if not wandb_has_credentials():
                reason = "no W&B credentials found (`wandb login`, WANDB_API_KEY)"
            elif not wandb_reachable(wandb_base_url()):
                reason = f"{wandb_base_url()} did not answer within {WANDB_PROBE_SECONDS} s"
            if reason:
                os.environ["WANDB_MODE"] = "offline"
                sync = f"`wandb sync {os.path.join(folder, 'wandb', 'offline-run-*')}`"
                self.offline_warning = (
                    f"{reason}: logging offline to {folder}; upload later with {sync}"
                )
                if announce:
                    self.announce_offline()
        if os.environ.get("WANDB_MODE") == "offline":
            # Logged tables (their images) are staged as artifacts in WANDB_DATA_DIR until
            # `wandb sync` uploads them; keep them in the folder, not in ~/.local/share/wandb.
            os.environ.setdefault("WANDB_DATA_DIR", os.path.join(folder, "wandb"))
        if environment != {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}:
            # wandb read the environment when the credentials were looked up, and would warn
            # that these changes are ignored (they are not: the mode is passed explicitly and
            # the data folder is read when tables are staged); a fresh session reads them.
            import wandb

            wandb.teardown()
        return os.environ.get("WANDB_MODE", "")

    def announce_offline(self) -> None:
        """The warning choose_mode held back, once: a run shows it only when it starts, so a
        start that fails (and removes its new folder) names no folder to sync."""
        if self.offline_warning:
            warn(self.offline_warning)
            self.offline_warning = ""

    def init_settings(
        self, folder: str, entity: str, decide: bool = True, announce: bool = True
    ) -> dict:
        """wandb.init settings every W&B run of the project shares: its folder, resuming, the
        entity, the mode (chosen here when `decide`: one process decides for a run; see
        choose_mode for announce) and wandb's quiet output unless WANDB_QUIET or WANDB_SILENT
        say otherwise: the run's links and the offline notice, not its banner, the tables
        of its history and summary or its log folder."""
        # wandb reads WANDB_MODE once, maybe before choose_mode set it: pass it explicitly.
        mode = os.environ.get("WANDB_MODE", "")
        if decide:
            mode = self.choose_mode(folder, announce)
        settings = {"dir": folder, "resume": "allow"}
        if not {"WANDB_QUIET", "WANDB_SILENT"} & set(os.environ):
            settings["settings"] = {"quiet": True}
        if mode:
            settings["mode"] = mode
        if entity:
            settings["entity"] = entity
        return settings

    def prepare(self, config, run_dir: str, is_main: bool) -> dict:
        settings = self.init_settings(run_dir, config.wandb_entity, is_main, announce=False)
        settings.update(
            name=config.run_name or os.path.basename(os.path.abspath(run_dir)),
            group=config.wandb_group or f"{config.dataset}-study",
            tags=list(config.tags) + [config.model, config.dataset],
        )
        return {self.name: settings}

    def start(self, accelerator, config, run_dir: str, init_kwargs: dict, flat_config: dict):
        run_id = tracker_run_id(run_dir) if accelerator.is_main_process else ""
        self.announce_offline()
        init_kwargs[self.name]["id"] = run_id
        accelerator.init_trackers(config.wandb_project, flat_config, init_kwargs=init_kwargs)

    def sync_hint(self, accelerator) -> str:
        if not accelerator.is_main_process:
            return ""
        return self.offline_note(accelerator.get_tracker(self.name, unwrap=True), "W&B run")

    def log_model(self, accelerator, run_dir: str) -> None:
        """The portable model as a W&B model artifact of this run, model.json as its metadata
        (offline too: `wandb sync` uploads it with the run)."""
        if not accelerator.is_main_process:
            return
        import wandb

        from cifar.record import MODEL_CARD, MODEL_WEIGHTS, read_json

        wandb_run = accelerator.get_tracker(self.name, unwrap=True)
        card = read_json(os.path.join(run_dir, MODEL_CARD))
        artifact = wandb.Artifact(f"model-{wandb_run.id}", type="model", metadata=card)
        for name in (MODEL_WEIGHTS, MODEL_CARD):
            artifact.add_file(os.path.join(run_dir, name), name=name)
        wandb_run.log_artifact(artifact, aliases=["latest", "final"])

    def offline_note(self, wandb_run, what: str) -> str:
        """'<what> saved offline; upload it with: wandb sync DIR' for an offline run, else ''."""
        if not getattr(wandb_run, "offline", False):
            return ""
        return f"{what} saved offline; upload it with: wandb sync {os.path.dirname(wandb_run.dir)}"

    def log_end(self, wandb_run, summary: dict, samples: dict | None, step: int) -> None:
        """Per-class accuracy as a bar chart, the confusion-matrix chart, the samples as a
        table; the run summary set to summary.json."""
        import wandb

        classes = summary["classes"]
        rows = per_class_rows(summary)
        per_class = wandb.Table(columns=["class", "accuracy"], data=rows)
        untested = len(classes) - len(rows)
        title = "Per-class test accuracy" + (
            f" ({untested} class(es) left out: no test image)" if untested else ""
        )
        matrix = summary["confusion_matrix"]
        cells = [[a, p, matrix[i][j]] for i, a in enumerate(classes) for j, p in enumerate(classes)]
        entries = {
            **summary_scalars(summary),
            "test/per_class_accuracy": wandb.plot.bar(per_class, "class", "accuracy", title=title),
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
            data = [[wandb.Image(im), lab, pred, conf, lab == pred] for im, lab, pred, conf in rows]
            entries["test/samples"] = wandb.Table(
                columns=["image", "label", "prediction", "confidence", "correct"], data=data
            )
        wandb_run.log(entries, step=step)
        wandb_run.summary.update(summary)


WANDB = WandB()
# --tracker's choices, the default first.
REGISTRY: dict[str, Tracker] = {t.name: t for t in (WANDB, TensorBoard(), NoTracker())}


def tracker_named(name: str) -> Tracker:
    """The adapter of --tracker NAME (config.py limits the names to the registry's)."""
    return REGISTRY[name]


def summarizes_studies(name) -> bool:
    """Whether a study whose runs logged with --tracker NAME logs its results there too (a
    name from a run's config.json, which may be anything)."""
    tracker = REGISTRY.get(name)
    return tracker is not None and tracker.summarizes_studies


def check_trackers(names) -> None:
    """check() every named tracker once: a UserError before any run starts."""
    for name in dict.fromkeys(names):
        tracker_named(name).check()


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


def summary_scalars(summary: dict) -> dict:
    """summary/<key> for every number of summary.json, per-class accuracy included."""
    scalars = {
        f"summary/{k}": v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for name, accuracy in per_class_rows(summary):
        scalars[f"summary/per_class_accuracy/{name}"] = accuracy
    return scalars


def per_class_rows(summary: dict) -> list[list]:
    """[class, accuracy] of each class the run had a test image of: a class with none has no
    accuracy (null in summary.json), and a tracker logs nothing for it rather than a 0."""
    accuracy = summary["per_class_accuracy"]
    return [[c, accuracy[c]] for c in summary["classes"] if accuracy.get(c) is not None]


@torch.no_grad()
def predict_samples(accelerator, run, count: int, tta: bool = False) -> dict | None:
    """The first `count` images of this process's test shard with label, prediction and its
    softmax probability, scored as the summary is (the EMA's weights with --ema, flips with
    --tta); None when the loader yields cached features instead of images."""
    model = bare_module(accelerator, run.scored_model)  # eager: compiled, it would compile again
    was_training = model.training
    model.eval()
    images, labels, predictions, confidences = [], [], [], []
    seen = 0
    for batch, batch_labels in run.test_loader:
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            return None
        batch, batch_labels = batch[: count - seen], batch_labels[: count - seen]
        with accelerator.autocast():
            logits = classify(model, run.to_input(batch), tta)
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
