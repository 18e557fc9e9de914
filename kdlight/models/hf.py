"""Any Hugging Face ``transformers`` sequence classifier, built from a config with random weights.

Nothing is downloaded: :class:`HFClassifier` builds ``AutoConfig.for_model(model_type, ...)`` and
``AutoModelForSequenceClassification.from_config``. ``transformers`` is imported when a model is
built, never when :mod:`kdlight.models` is imported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kdlight.models.transformer import check_token_ids, has_hooks

#: config names of the feed-forward width where a model type does not call it ``intermediate_size``
INTERMEDIATE_NAMES = {"distilbert": "hidden_dim", "gpt2": "n_inner"}
#: model types whose position ids start after the padding id (fairseq style): they need
#: ``max_length + pad_token_id + 1`` position embeddings
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "roberta-prelayernorm",
    "camembert",
    "xlm-roberta",
    "xlm-roberta-xl",
    "data2vec-text",
    "longformer",
    "ibert",
}
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def sequence_classifier_types() -> list[str]:
    """The ``model_type`` names ``AutoModelForSequenceClassification`` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return sorted(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


class HFTokenModel(nn.Module):
    """What :class:`HFClassifier` and :class:`~kdlight.models.HFCausalLM` share: a ``transformers``
    model built from its config with random weights (submodule ``hf``), the tap points
    ``hidden_states.<i>`` / ``attentions.<i>`` filled only while tapped, and ``forward(ids)`` with
    ``attention_mask = ids != pad_token_id`` returning the logits only."""

    gradcam_layer: str | None = None  # no convolution: no Grad-CAM
    #: further keyword arguments of every call of the library model
    library_kwargs: dict[str, Any] = {}

    def build_library_model(
        self,
        auto_class: type,
        valid_types: list[str],
        kind: str,
        model_type: str,
        vocab_size: int | None,
        pad_token_id: int,
        max_length: int,
        sizes: dict[str, Any],
        intermediate_size: int | None,
        overrides: dict[str, Any],
    ) -> None:
        """Check the arguments (one line each), build ``auto_class.from_config`` and the taps."""
        from transformers import AutoConfig

        name = type(self).__name__
        if vocab_size is None:
            raise ValueError(
                f"{name} needs vocab_size: the data module's tokenizer vocabulary size (its modality's vocab_size)"
            )
        if model_type not in valid_types:
            raise ValueError(f"unknown model_type {model_type!r} for {kind}; valid ones are: {', '.join(valid_types)}")
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size})")
        positions = max_length + (pad_token_id + 1 if model_type in PADDING_OFFSET_POSITIONS else 0)
        settings: dict[str, Any] = {
            "vocab_size": vocab_size,
            "pad_token_id": pad_token_id,
            "max_position_embeddings": positions,
            **sizes,
            INTERMEDIATE_NAMES.get(model_type, "intermediate_size"): intermediate_size or 4 * sizes["hidden_size"],
        }
        defaults = AutoConfig.for_model(model_type)
        for special in SPECIAL_IDS:  # defaults of a big pretrained vocabulary would point outside this one
            value = getattr(defaults, special, None)
            if isinstance(value, int) and value >= vocab_size:
                settings[special] = None
        hf_config = AutoConfig.for_model(model_type, **{**settings, **overrides})
        self.hf = auto_class.from_config(hf_config)
        self.model_type = model_type
        self.vocab_size = self.hf.get_input_embeddings().num_embeddings
        self.pad_token_id, self.max_length = pad_token_id, max_length
        self.depth = int(hf_config.num_hidden_layers)
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(self.depth + 1))
        self.attentions = nn.ModuleList(nn.Identity() for _ in range(self.depth))
        self._fast_attention = self.hf.config._attn_implementation

    def get_input_embeddings(self) -> nn.Module:
        """The library model's token embedding layer."""
        return self.hf.get_input_embeddings()

    def _use_attention(self, implementation: str) -> None:
        if self.hf.config._attn_implementation != implementation:
            self.hf.set_attn_implementation(implementation)

    def forward(self, ids: Tensor) -> Tensor:
        check_token_ids(type(self).__name__, ids, self.max_length)
        want_hidden, want_attentions = has_hooks(self.hidden_states), has_hooks(self.attentions)
        self._use_attention("eager" if want_attentions else self._fast_attention)
        output = self.hf(
            input_ids=ids,
            attention_mask=(ids != self.pad_token_id).long(),
            output_hidden_states=want_hidden,
            output_attentions=want_attentions,
            return_dict=True,
            **self.library_kwargs,
        )
        if want_hidden:
            for tap, hidden in zip(self.hidden_states, output.hidden_states, strict=True):
                tap(hidden)
        if want_attentions:
            for tap, probs in zip(self.attentions, output.attentions, strict=True):
                tap(probs)
        return output.logits


class HFClassifier(HFTokenModel):
    """A ``transformers`` sequence classifier of ``model_type`` with random weights, on token ids.

    ``forward(ids)`` builds ``attention_mask = ids != pad_token_id`` and returns the logits only.
    The tap points are those of :class:`~kdlight.models.transformer.TransformerClassifier`:
    identity modules ``hidden_states.<i>`` (``[N, T, D]``; ``0`` the embedding output, ``depth``
    the last layer as the library returns it) and ``attentions.<i>`` (``[N, heads, T, T]``), fed
    from ``output_hidden_states`` / ``output_attentions``. These are requested only while a forward
    hook sits on a tap (e.g. :class:`~kdlight.training.taps.FeatureTaps`), so a plain forward costs
    nothing extra; while attentions are tapped the model runs its ``"eager"`` attention (SDPA
    returns no probabilities). In training mode Hugging Face returns the attention probabilities
    after attention dropout. There is no ``embedding`` tap (the pooled vector lives inside each
    family's head): name ``hidden_states.<depth>`` instead. The library model is the submodule
    ``hf`` (e.g. ``hf.bert.embeddings``).

    Args:
        model_type: a ``transformers`` model type with a sequence-classification head, e.g.
            ``"bert"``, ``"distilbert"``, ``"roberta"``, ``"gpt2"``.
        vocab_size: number of token ids (the tokenizer's vocabulary); required.
        num_classes: number of logits.
        pad_token_id: the padding id.
        max_length: longest sequence accepted (sets the position embeddings).
        hidden_size, num_hidden_layers, num_attention_heads: width, depth and heads (mapped to each
            family's own config names by ``transformers``' ``attribute_map``).
        intermediate_size: feed-forward width (``None``: ``4 * hidden_size``); ``hidden_dim`` for
            DistilBERT, ``n_inner`` for GPT-2.
        config: other config fields of that model type, as a dict (the form YAML / jsonargparse takes:
            ``config: {hidden_dropout_prob: 0.0}``).
        config_overrides: the same as keyword arguments, passed through (Python only).
    """

    def __init__(
        self,
        model_type: str = "bert",
        vocab_size: int | None = None,
        num_classes: int = 2,
        pad_token_id: int = 0,
        max_length: int = 128,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        config: dict[str, Any] | None = None,
        **config_overrides: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.num_classes = num_classes
        self.build_library_model(
            AutoModelForSequenceClassification,
            sequence_classifier_types(),
            "a transformers sequence classifier",
            model_type,
            vocab_size,
            pad_token_id,
            max_length,
            {
                "num_labels": num_classes,
                "hidden_size": hidden_size,
                "num_hidden_layers": num_hidden_layers,
                "num_attention_heads": num_attention_heads,
            },
            intermediate_size,
            {**(config or {}), **config_overrides},
        )
