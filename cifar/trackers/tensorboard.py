"""--tracker tensorboard: event files in the run folder."""

import json

from accelerate.tracking import TensorBoardTracker

from cifar.trackers.base import Tracker, summary_scalars


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
