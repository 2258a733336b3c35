"""DreamBooth-LoRA fine-tuning: teach a model a new subject from a handful of photos."""

from dreamcli.training.dreambooth import TuneResult, tune
from dreamcli.training.inputs import TuneInputs, check_inputs
from dreamcli.training.loss import dreambooth_loss

__all__ = ["TuneInputs", "TuneResult", "check_inputs", "dreambooth_loss", "tune"]
