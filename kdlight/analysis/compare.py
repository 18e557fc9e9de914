"""Compare trained networks with a teacher: accuracy, prediction and explanation agreement."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_f1_score

from kdlight.core.modality import Modality, Text
from kdlight.core.weights import load_weights
from kdlight.explain import AttributionConfig, attribute
from kdlight.functional.agreement import cosine_agreement, predictive_kl, rank_correlation, top1_agreement


def network_of(module: nn.Module) -> nn.Module:
    """The network a kdlight module trains: ``ClassifierModule.model`` or ``DistillationModule.student``."""
    for name in ("student", "model"):
        if isinstance(getattr(module, name, None), nn.Module):
            return getattr(module, name)
    return module


def load_network(module: nn.Module, checkpoint: str | Path) -> nn.Module:
    """The trained network of ``module`` with the weights stored in ``checkpoint``, in eval mode."""
    network = network_of(module)
    load_weights(network, checkpoint, role="model")
    return network.eval()


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in x.split(batch_size)])


def compare_models(
    networks: dict[str, nn.Module],
    teacher: str,
    inputs: Tensor,
    labels: Tensor,
    train_inputs: Tensor | None = None,
    modality: Modality | None = None,
) -> list[dict[str, float | str | int]]:
    """One row per network: accuracy, macro-F1, top-1 agreement and KL with the teacher, and how
    its explanations agree with the teacher's on the same inputs for the teacher's predicted class:
    Spearman rank correlation of |saliency| and cosine of integrated-gradients maps. ``modality``:
    the data module's (default: read off the inputs)."""
    t_logits = _logits(networks[teacher], inputs)
    target = t_logits.argmax(-1)
    methods = {"saliency": AttributionConfig(method="saliency"), "ig": AttributionConfig(method="integrated_gradients")}
    explain = functools.partial(attribute, target=target, train_inputs=train_inputs, modality=modality)
    t_maps = {k: explain(networks[teacher], inputs, config=c) for k, c in methods.items()}
    valid = modality.valid(inputs) if isinstance(modality, Text) else None  # text: real tokens only
    rows = []
    for name, net in networks.items():
        logits = _logits(net, inputs)
        maps = {k: explain(net, inputs, config=c) for k, c in methods.items()}
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in net.parameters()),
                "acc": (logits.argmax(-1) == labels).float().mean().item(),
                "macro_f1": multiclass_f1_score(logits, labels, logits.shape[-1], average="macro").item(),
                "agreement": top1_agreement(logits, t_logits).mean().item(),
                "kl": predictive_kl(logits, t_logits).mean().item(),
                "saliency_rank_correlation": _scores(rank_correlation, maps["saliency"], t_maps["saliency"], valid),
                "ig_cosine": _scores(cosine_agreement, maps["ig"], t_maps["ig"], valid),
            }
        )
    return rows


def _scores(metric, a: Tensor, b: Tensor, valid: Tensor | None) -> float:
    """Mean of ``metric``'s per-sample scores, over each sample's real tokens when ``valid`` is given."""
    if valid is None:
        return metric(a, b).nanmean().item()
    per_sample = [metric(a[i : i + 1, valid[i]], b[i : i + 1, valid[i]]) for i in range(len(a)) if valid[i].any()]
    return torch.cat(per_sample).nanmean().item()


def format_table(rows: list[dict], title: str = "") -> str:
    """A Markdown table of :func:`compare_models` rows."""
    head = "| model | params | test acc | macro-F1 | top-1 agreement | KL(t‖s) | saliency rank corr. | IG cosine |"
    lines = [f"**{title}**", "", head, "|" + "---|" * 8] if title else [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {100 * r['acc']:.1f} % | {100 * r['macro_f1']:.1f} % | "
            f"{100 * r['agreement']:.1f} % | {r['kl']:.3f} | {r['saliency_rank_correlation']:.3f} | {r['ig_cosine']:.3f} |"
        )
    return "\n".join(lines)
