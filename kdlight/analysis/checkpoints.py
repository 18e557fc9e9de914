"""Back from a run's files to objects: its module from a checkpoint, its data module from the
config, and teacher/student heatmaps recomputed from a distillation checkpoint."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["load_module", "datamodule_from_config", "heatmaps_from_checkpoint"]

#: the classes kdlight's CLI records, by their public names
_PUBLIC_MODULES = ("ClassifierModule", "DistillationModule")
_TARGETS = ("teacher", "student", "label")


def _checkpoint_class(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the module that wrote ``checkpoint``: stored by LightningCLI, else
    recognised from the state_dict prefixes of kdlight's modules."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"]
    keys = list(checkpoint.get("state_dict") or {})
    if any(k.startswith("teacher.") for k in keys) and any(k.startswith("student.") for k in keys):
        return "kdlight.DistillationModule"
    if any(k.startswith("model.") for k in keys):
        return "kdlight.ClassifierModule"
    return None


def load_module(checkpoint: str | Path, cls: type | None = None, **overrides: Any):
    """``cls.load_from_checkpoint(checkpoint)`` (default :class:`kdlight.DistillationModule`) in
    eval mode on the CPU, after checking the checkpoint was written by that class.

    A ``DistillationModule`` checkpoint is loaded with ``teacher_checkpoint=None`` (the teacher's
    weights are in the checkpoint; the original teacher file need not exist any more).
    """
    import torch

    import kdlight
    from kdlight.training.distillation import DistillationModule

    cls = cls or DistillationModule
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not read checkpoint {path}: {first}") from None
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no state_dict/hyper_parameters); it may be a bare state_dict"
        )
    found = _checkpoint_class(content)
    wanted = f"{cls.__module__}.{cls.__qualname__}"
    public = {f"kdlight.{n}": f"{getattr(kdlight, n).__module__}.{n}" for n in _PUBLIC_MODULES}
    if found is not None and public.get(found, found) != wanted and found != wanted:
        raise ValueError(f"checkpoint {path} holds a {found} but a {wanted} is needed here")
    hparams = content.get("hyper_parameters") or {}
    if cls is DistillationModule:
        if not {"teacher", "student"} <= set(hparams):
            raise ValueError(
                f"checkpoint {path} does not record its teacher/student classes (it was not written by the kdlight CLI); "
                "build the DistillationModule yourself and load the state_dict"
            )
        overrides.setdefault("teacher_checkpoint", None)
    module = cls.load_from_checkpoint(path, map_location="cpu", **overrides)
    return module.eval()


def datamodule_from_config(config: dict[str, Any]):
    """The data module a run's resolved config names (``data.class_path`` / ``init_args``)."""
    data = config.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise ValueError("the run's config names no data module (data.class_path); build the data module yourself")
    module_name, _, name = data["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ValueError(f"cannot import the run's data module {data['class_path']}") from None
    return cls(**(data.get("init_args") or {}))


def heatmaps_from_checkpoint(
    checkpoint: str | Path,
    datamodule,
    indices: Sequence[int],
    method: str = "saliency",
    split: str = "val",
    target: str = "teacher",
    method_args: dict[str, Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Teacher and student explanations of the ``split`` samples ``indices`` from a distillation
    checkpoint: a figure input | teacher | student (:func:`kdlight.explain.plots.explanation_figure`).

    ``target``: the class explained, ``teacher`` (its prediction, as the callback), ``student`` or
    ``label``. ``method_args``: extra :class:`kdlight.explain.AttributionConfig` fields. The samples
    come from the data module's ``split_tensors`` (else its loader) and go to the models as the
    data module holds them (no cast); the data module's ``modality`` says how they are explained
    and drawn.
    """
    import torch

    from kdlight.core.datamodule import data_capabilities
    from kdlight.explain import AttributionConfig, attribute
    from kdlight.explain.plots import explanation_figure

    if target not in _TARGETS:
        raise ValueError(f"target must be 'teacher', 'student' or 'label', got {target!r}")
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices is empty: give at least one sample index")
    config = AttributionConfig(method=method, **(method_args or {}))
    module = load_module(checkpoint)
    data = data_capabilities(datamodule)
    x_all, y_all = data.split_tensors(split)
    bad = [i for i in indices if not 0 <= i < len(x_all)]
    if bad:
        raise ValueError(f"indices {bad} are out of range for the {split} split ({len(x_all)} samples)")
    x, y = x_all[indices], y_all[indices]
    train_inputs = data.train_inputs()
    teacher, student = module.teacher.eval(), module.student.eval()
    with torch.no_grad():
        t_logits, s_logits = teacher(x), student(x)
    explained = {"teacher": t_logits.argmax(-1), "student": s_logits.argmax(-1), "label": y}[target]
    modality = data.modality  # None for a data module that declares none: kdlight then reads it off the inputs
    t_maps = attribute(teacher, x, explained, config, train_inputs=train_inputs, modality=modality)
    s_maps = attribute(student, x, explained, config, train_inputs=train_inputs, modality=modality)
    labels = [
        f"#{i} y={int(y[k])} t={int(t_logits[k].argmax())} s={int(s_logits[k].argmax())}" for k, i in enumerate(indices)
    ]
    return explanation_figure(
        x,
        t_maps,
        s_maps,
        labels=labels,
        feature_names=data.feature_names,
        title=title if title is not None else f"{method} ({split}) from {Path(checkpoint).name}",
        modality=modality,
    )
