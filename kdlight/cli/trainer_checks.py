"""Trainer settings that Lightning reports late or obscurely (a ZeroDivisionError after the first
epoch, "No supported gpu backend found!"), checked before anything is built."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def check_trainer_config(trainer: Mapping[str, Any] | Any, cuda_devices: int | None = None) -> None:
    """Raise ValueError for trainer settings that would fail late or with a misleading message.

    ``trainer``: the parsed ``trainer`` config (a dict or jsonargparse Namespace). ``cuda_devices``:
    the number of CUDA GPUs (default: ``torch.cuda.device_count()``).
    """
    check_validation_interval(trainer.get("check_val_every_n_epoch"))
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count()
    if cuda_devices == 0:
        check_gpu_settings(trainer.get("accelerator"), trainer.get("strategy"), trainer.get("devices"))


def check_validation_interval(every_n_epochs: Any) -> None:
    """``check_val_every_n_epoch`` 0 or negative: Lightning divides by it at the end of the first epoch."""
    if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
        raise ValueError(
            f"trainer.check_val_every_n_epoch must be an integer >= 1 (or null to validate by val_check_interval "
            f"steps only), got {every_n_epochs!r}; to skip validation set --trainer.limit_val_batches=0"
        )


def check_gpu_settings(accelerator: Any, strategy: Any, devices: Any) -> None:
    """GPU accelerator or GPU-only strategy on a machine without CUDA: say what it needs and how to run on CPU."""
    fragment = f" (configs/trainer/{strategy}.yaml)" if strategy in ("ddp", "fsdp") else ""  # the shipped fragments
    accelerator, strategy = _flag_name(accelerator), _flag_name(strategy)
    if strategy.startswith("fsdp"):
        raise ValueError(
            f"trainer.strategy={strategy}{fragment} needs {_gpus_needed(devices)} and this machine has no CUDA GPU; "
            "FSDP does not run on CPU: to try the run on CPU use "
            "--trainer.strategy=ddp --trainer.accelerator=cpu --trainer.devices=2"
        )
    if accelerator not in ("gpu", "cuda"):
        return
    if strategy.startswith("ddp"):
        raise ValueError(
            f"trainer.strategy={strategy} with accelerator={accelerator}{fragment} needs {_gpus_needed(devices)} "
            f"and this machine has no CUDA GPU; to run {strategy} on CPU use "
            "--trainer.accelerator=cpu --trainer.devices=2"
        )
    raise ValueError(
        f"trainer.accelerator={accelerator} needs {_gpus_needed(devices)} and this machine has no CUDA GPU; "
        "use --trainer.accelerator=cpu (or auto)"
    )


def _flag_name(value: Any) -> str:
    """A trainer flag as a lower-case name: ``"ddp"``, or a class path's class (``DDPStrategy`` -> ``"ddp"``)."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value.lower()
    class_path = value.get("class_path") if hasattr(value, "get") else type(value).__name__
    name = str(class_path).rsplit(".", 1)[-1].lower()
    return re.sub(r"(strategy|accelerator)$", "", name) or name


def _gpus_needed(devices: Any) -> str:
    """How many GPUs ``devices`` asks for, in words."""
    if devices in (None, "auto", -1, "-1"):
        return f"at least one CUDA GPU (devices={'auto' if devices is None else devices}: every GPU of the node)"
    if isinstance(devices, (list, tuple)):
        return f"{len(devices)} CUDA GPU(s) (devices={list(devices)})"
    text = str(devices)
    if "," in text:
        ids = [d for d in text.split(",") if d.strip()]
        return f"{len(ids)} CUDA GPU(s) (devices={text})"
    return f"{text} CUDA GPU{'s' if text != '1' else ''} (devices={text})"
