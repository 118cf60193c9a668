"""Training: plain fine-tuning and DP-SGD (Opacus), with the privacy record saved beside the model."""

from leakaudit.train.loop import (
    DPSettings,
    TrainSettings,
    default_delta,
    save_trained,
    sequence_losses,
    train_model,
)

__all__ = ["DPSettings", "TrainSettings", "default_delta", "save_trained", "sequence_losses", "train_model"]
