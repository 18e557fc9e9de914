"""Model zoo: one architecture family per module.

Every model takes plain constructor arguments with defaults (usable by ``class_path`` in
YAML) including ``num_classes``, exposes an ``embedding`` submodule whose output is the
``[B, D]`` vector fed to the classifier, and a ``gradcam_layer``: the submodule Grad-CAM explains
when no layer is configured (the last spatial stage's output; ``None`` for the MLP).

Text models (``FastText``, ``TransformerClassifier``, ``HFClassifier``) take token ids ``[N, T]``,
build their attention mask from ``pad_token_id`` and expose ``get_input_embeddings()``,
``vocab_size``, ``pad_token_id`` and ``max_length``; :func:`check_text_models` checks them against
the data's ``Text`` modality. Causal language models (``CausalTransformer``, ``HFCausalLM``) take
the same token ids and return next-token logits ``[N, T, V]`` (no ``num_classes``);
:func:`check_lm_models` checks teacher and student against the data. Transformers share the tap
names ``hidden_states.<i>`` and ``attentions.<i>`` (read by :mod:`kdlight.objectives.text`).
"""

from __future__ import annotations

from torch import nn

from kdlight.models.causal_lm import CausalTransformer, HFCausalLM, check_lm_models
from kdlight.models.cnn import CNN1d, CNN2d
from kdlight.models.ensemble import TeacherEnsemble
from kdlight.models.fasttext import FastText
from kdlight.models.hf import HFClassifier
from kdlight.models.mlp import MLP
from kdlight.models.outputs import logits_of, return_logits
from kdlight.models.resnet_cifar import (
    CifarResNet,
    ResNet8x4,
    ResNet20,
    ResNet32x4,
    ResNet56,
    ResNet110,
)
from kdlight.models.text_checks import check_text_models
from kdlight.models.transformer import TransformerClassifier
from kdlight.models.wrn import WRN16_2, WRN40_2, WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn2d": CNN2d,
    "cnn1d": CNN1d,
    "fasttext": FastText,
    "transformer": TransformerClassifier,
    "hf": HFClassifier,
    "causal_transformer": CausalTransformer,
    "hf_causal_lm": HFCausalLM,
    "cifar_resnet": CifarResNet,
    "resnet8x4": ResNet8x4,
    "resnet32x4": ResNet32x4,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "resnet110": ResNet110,
    "wide_resnet": WideResNet,
    "wrn_16_2": WRN16_2,
    "wrn_40_2": WRN40_2,
}

__all__ = [
    "MLP",
    "CNN1d",
    "CNN2d",
    "CifarResNet",
    "ResNet8x4",
    "ResNet20",
    "ResNet32x4",
    "ResNet56",
    "ResNet110",
    "WideResNet",
    "WRN16_2",
    "WRN40_2",
    "TeacherEnsemble",
    "FastText",
    "TransformerClassifier",
    "HFClassifier",
    "logits_of",
    "return_logits",
    "check_text_models",
    "CausalTransformer",
    "HFCausalLM",
    "check_lm_models",
    "MODELS",
]
