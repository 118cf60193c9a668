"""Training: plain fine-tuning and DP-SGD (Opacus), with the privacy record saved beside the model."""

from leakaudit.train.loop import (
    DPSettings,
    LoraSettings,
    TrainSettings,
    apply_lora,
    default_delta,
    matched_settings,
    merge_lora,
    save_trained,
    sequence_losses,
    train_model,
)

__all__ = [
    "DPSettings", "LoraSettings", "TrainSettings", "apply_lora", "default_delta", "matched_settings", "merge_lora",
    "save_trained", "sequence_losses", "train_model",
]
