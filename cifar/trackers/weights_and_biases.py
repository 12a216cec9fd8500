"""--tracker wandb: a W&B run, online when it can be, else offline into the run folder; how
wandb finds credentials and whether its server answers.
"""

import os

from cifar.errors import UserError, warn
from cifar.trackers.base import (
    Tracker,
    per_class_rows,
    summary_scalars,
    tracker_run_id,
)

WANDB_PROBE_SECONDS = 10  # the longest a run waits to learn that the W&B server is unreachable


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
