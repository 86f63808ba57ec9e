"""Config sections shared by every stage that trains a model on a registered dataset.

``train``, ``offline`` and any later stage build their YAML schema from these, so a field means
the same everywhere and model/data mismatches are refused the same way, before any compute.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeadapt.config import not_built_yet
from edgeadapt.data.config import DataSection
from edgeadapt.data.registry import dataset_info
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import model_modality
from edgeadapt.training.config import TrainConfig


class TrainSection(TrainConfig):
    """The loop's hyperparameters plus batch sizes and the validation metric."""

    epochs: int = Field(ge=1, description="Passes over the training data.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    batch_size: int = Field(ge=1, description="Samples per micro-batch.")
    eval_batch_size: int = Field(256, ge=1, description="Samples per evaluation batch.")
    monitor: str | None = Field(None, description="Validation metric for early stopping and best-weight "
                                "restore; default accuracy for classification, loss otherwise.")

    def loop_config(self) -> TrainConfig:
        """The :class:`TrainConfig` the shared loop runs (without the batching fields)."""
        return TrainConfig(**self.model_dump(exclude={"batch_size", "eval_batch_size", "monitor"}))

    def monitor_for(self, task_name: str) -> str:
        """``monitor``, or its default for a task: accuracy for classification, loss otherwise."""
        return self.monitor or ("accuracy" if task_name == "classification" else "loss")


def check_model_data(model: str, dataset: str) -> None:
    """Refuse an image model on text data and vice versa, naming ``data.name``
    (:class:`~edgeadapt.errors.ConfigError`). Modality comes from the model's family table."""
    modality, task = model_modality(model), dataset_info(dataset).task
    if (modality == "image") != (task == "image-classification"):
        raise ConfigError(f"data.name: dataset {dataset!r} is {task} data but model {model!r} "
                          f"is {'an image' if modality == 'image' else 'a text'} model; "
                          "pick a matching dataset or model")


class ModelDataConfig(BaseModel):
    """Base of every config that runs a model on a registered dataset: both must exist and match
    (an image model on image data, a text model on text data), checked before any compute."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Built-in model name, local Hugging Face directory or edgeadapt "
                       "model artifact.")
    data: DataSection

    @field_validator("model")
    @classmethod
    def _model_exists(cls, model: str, info: ValidationInfo) -> str:
        if not not_built_yet(model, "model", info):  # `validate`: an earlier step writes it
            model_modality(model)
        return model

    @model_validator(mode="after")
    def _model_matches_data(self, info: ValidationInfo) -> ModelDataConfig:
        if not not_built_yet(self.model, "model", info):
            check_model_data(self.model, self.data.name)
        return self
