"""ExplanationAgreement on token ids: metrics over the real tokens only, token figures, refusals."""

from __future__ import annotations

import html
import math
import re
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from kdlight import DistillationModule
from kdlight.core.batch import collate
from kdlight.core.modality import Tabular, Text
from kdlight.explain.attribution import METHODS, Method, get_method
from kdlight.explain.attribution.tokens import explains_tokens, token_method_names
from kdlight.explain.callback import ExplanationAgreement
from kdlight.explain.callback.measure import Measure
from kdlight.explain.callback.probes import Probes
from kdlight.explain.callback.tokens import real_tokens
from kdlight.explain.metrics import metric_names, metric_spec
from kdlight.models import FastText

from conftest import tiny_trainer

VOCAB, LENGTH, PAD = 24, 12, 0
TOKENS = ("<pad>", "good", "bad", "<b>&", *[f"w{i}" for i in range(4, VOCAB)])
TEXT = Text(VOCAB, pad_id=PAD, tokens=TOKENS)
METHOD = f"{__name__}.EmbeddingNorm"
KEY = f"val/explain/{METHOD}"


class EmbeddingNorm(Method):
    """The norm of each token's input embedding (0 at padding): deterministic, easy to recompute."""

    name = "embedding_norm"
    modalities = frozenset({"text"})

    def attribute(self, model, inputs, target, config, *, baselines, modality):
        return embedding_norms(model, inputs)


def embedding_norms(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(ids).norm(dim=-1) * (ids != PAD)


def token_ids(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids ``[n, LENGTH]``: 2..LENGTH real tokens then padding; label 1 iff "good" (id 1) beats "bad"."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, LENGTH), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    ids[torch.arange(n), torch.randint(0, 2, (n,), generator=g)] = 2 - labels  # the rationale token
    ids[torch.arange(LENGTH) >= lengths[:, None]] = PAD
    return ids, labels


class TinyText(LightningDataModule):
    """Token ids with their attention mask; the rationale token is the ground truth."""

    num_classes, class_names, modality = 2, ["bad", "good"], TEXT

    def __init__(self) -> None:
        super().__init__()
        self.splits = {"train": token_ids(64, 0), "val": token_ids(24, 1)}

    def _loader(self, split: str) -> DataLoader:
        ids, labels = self.splits[split]
        samples = [
            {"inputs": x, "target": y, "index": i, "attention_mask": x != PAD}
            for i, (x, y) in enumerate(zip(ids, labels))
        ]
        return DataLoader(samples, batch_size=16, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def ground_truth_masks(self, split: str, indices) -> torch.Tensor:
        ids = self.splits[split][0][torch.as_tensor(indices)]
        return (ids == 1) | (ids == 2)


# --------------------------------------------------------------------------------------------
# metrics over the real tokens, checked against the same metric on the unpadded slices by hand


def _probes(ids: torch.Tensor, labels: torch.Tensor, masks=None) -> Probes:
    logits = torch.zeros(len(ids), 2)
    valid = ids != PAD
    return Probes(ids, labels, logits, logits, labels, None, "key", TEXT, torch.arange(len(ids)), masks, valid)


def _maps(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Random maps with garbage (large values) at padding: padding must never count."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(ids != PAD, torch.randn(ids.shape, generator=g), 100.0 + torch.rand(ids.shape, generator=g))


def _by_hand(name: str, s_maps, t_maps, ids, k: int, rows=None) -> float:
    """Mean over probes of the metric of their real-token slices (top min(k, L))."""
    spec, values = metric_spec(name), []
    for i in range(len(ids)) if rows is None else rows:
        real = ids[i] != PAD
        a, b = s_maps[i, real][None], t_maps[i, real][None]
        value = float(spec.fn(a, b, min(k, int(real.sum()))) if spec.uses_k else spec.fn(a, b))
        if math.isfinite(value):
            values.append(value)
    return sum(values) / len(values) if values else float("nan")


def _padded(t: torch.Tensor, extra: int, value: float) -> torch.Tensor:
    return torch.cat([t, torch.full((len(t), extra), value, dtype=t.dtype)], 1)


def test_agreement_is_the_metric_of_the_real_tokens_and_more_padding_changes_nothing():
    ids, labels = token_ids(20, 3)
    s_maps, t_maps = _maps(ids, 1), _maps(ids, 2)
    k = 5  # more than some probes' real tokens: those use all of theirs
    measure = Measure({}, 0, 8, k, [metric_spec(n) for n in metric_names("maps")])
    ok = torch.ones(len(ids), dtype=torch.bool)
    ok[4] = False  # a skipped probe (non-finite map elsewhere)
    scores, per_class = measure.agreement("m", _probes(ids, labels), t_maps, s_maps, ok)
    kept = [i for i in range(len(ids)) if ok[i]]
    for name in metric_names("maps"):
        assert scores[name] == pytest.approx(_by_hand(name, s_maps, t_maps, ids, k, kept), abs=1e-6), name
    table = per_class.table()
    for c in (0, 1):
        rows = [i for i in kept if labels[i] == c]
        assert table[c]["count"] == len(rows)
        assert table[c]["mean"] == pytest.approx(_by_hand("rank_correlation", s_maps, t_maps, ids, k, rows), abs=1e-6)
    # pad every probe with 7 more positions (garbage maps there): the same numbers
    longer = _padded(ids, 7, PAD)
    again, per_class_again = measure.agreement(
        "m", _probes(longer, labels), _padded(t_maps, 7, -50.0), _padded(s_maps, 7, 50.0), ok
    )
    assert again == pytest.approx(scores, abs=1e-6)
    assert pd.DataFrame(per_class_again.table()).equals(pd.DataFrame(table))


def test_chance_level_and_localisation_see_the_real_tokens_only():
    ids, labels = token_ids(16, 4)
    t_maps, r_maps = _maps(ids, 5), _maps(ids, 6)
    k = 3
    masks = (ids == 1) | (ids == 2)
    specs = [metric_spec(n) for n in ("cosine", "feature_agreement")]
    measure = Measure({}, 0, 8, k, specs)
    measure.maps = lambda *args: r_maps  # the freshly initialised student's maps
    ok = torch.ones(len(ids), dtype=torch.bool)
    chance = measure.chance_level("m", nn.Linear(1, 1), _probes(ids, labels), t_maps, ok)
    assert chance["cosine"] == pytest.approx(_by_hand("cosine", r_maps, t_maps, ids, k), abs=1e-6)
    assert chance["feature_agreement"] == pytest.approx(_by_hand("feature_agreement", r_maps, t_maps, ids, k), abs=1e-6)
    scores = measure.localisation({"teacher": t_maps}, masks, ids != PAD)
    mass, hits = [], []
    for i in range(len(ids)):
        real = ids[i] != PAD
        a, m = t_maps[i, real].abs(), masks[i, real]
        mass.append(float(a[m].sum() / a.sum()))
        top = a.argsort(descending=True)[: min(k, len(a))]
        hits.append(float(m[top].sum()) / min(k, int(m.sum())))
    assert scores["teacher_localisation_mass"] == pytest.approx(sum(mass) / len(mass), abs=1e-6)
    assert scores["teacher_localisation_topk"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
    # more padding, with ground truth marked there: the same scores
    longer = measure.localisation(
        {"teacher": _padded(t_maps, 5, 9.0)}, _padded(masks, 5, True), _padded(ids, 5, PAD) != PAD
    )
    assert longer == pytest.approx(scores, abs=1e-6)


# --------------------------------------------------------------------------------------------
# in fit and validate


def _module() -> DistillationModule:
    torch.manual_seed(0)
    teacher, student = FastText(VOCAB, 2, embed_dim=16), FastText(VOCAB, 2, embed_dim=8)
    return DistillationModule(teacher, student, teacher_as_given=True, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))


def test_fit_scores_token_maps_on_real_tokens_and_writes_png_and_html(tmp_path):
    callback = ExplanationAgreement(methods=[METHOD], num_probes=16, batch_size=8, k=4, num_images=3)
    module, data = _module(), TinyText()
    trainer = tiny_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(tmp_path, name="run"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=data)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # NaN infidelity: no warning spam
    results = callback.last_results
    ids, _ = data.splits["val"]
    ids = ids[callback.probe_indices(len(ids))]
    t_maps, s_maps = embedding_norms(module.teacher, ids), embedding_norms(module.student, ids)
    for name in ("cosine", "rank_correlation", "feature_agreement"):
        assert results[f"{KEY}/{name}"] == pytest.approx(_by_hand(name, s_maps, t_maps, ids, 4), abs=1e-5)
    assert math.isnan(results[f"{KEY}/teacher_infidelity"]) and math.isnan(results[f"{KEY}/student_infidelity"])
    assert 0 <= results[f"{KEY}/student_deletion_auc"] <= 1 and results[f"{KEY}/nonfinite"] == 0
    assert 0 <= results[f"{KEY}/teacher_localisation_mass"] <= 1
    files = {p.name: p for p in (tmp_path / "run").rglob("*") if p.is_file()}
    stem = KEY.replace("/", "_")
    assert f"{stem}_heatmaps_epoch000.png" in files
    page = files[f"{stem}_heatmaps_html_epoch000.html"].read_text()
    shown = re.findall(r'class="kd-tok"[^>]*>([^<]*)</span>', page)
    words = [html.escape(TOKENS[i]) for probe in ids[:3] for _ in ("teacher", "student") for i in probe if i != PAD]
    assert shown == words  # the first 3 probes, teacher and student rows, padding never shown
    table = pd.read_csv(files[f"{stem}_per_class_epoch000.csv"])
    assert list(table["name"]) == ["bad", "good"] and table["count"].sum() == 16
    # validate runs under inference mode: the same numbers (same weights), HTML drawn at once
    (validated,) = trainer.validate(module, datamodule=data, verbose=False)
    assert validated[f"{KEY}/cosine"] == pytest.approx(results[f"{KEY}/cosine"], abs=1e-6)


def test_probes_carry_the_real_tokens_checked_against_their_attention_mask():
    ids, _ = token_ids(6, 7)
    assert torch.equal(real_tokens(TEXT, ids, ids != PAD), ids != PAD)
    assert torch.equal(real_tokens(TEXT, ids), ids != PAD)  # no mask: the padding decides
    with pytest.raises(ValueError, match="attention_mask disagrees with the padding"):
        real_tokens(TEXT, ids, torch.ones_like(ids, dtype=torch.bool))
    assert real_tokens(Tabular(), torch.randn(6, 4)) is None  # no padding: every position is scored


# --------------------------------------------------------------------------------------------
# refusals


def _refusal(method: str) -> str:
    with pytest.raises(ValueError) as err:
        ExplanationAgreement(methods=[method]).check_settings(
            SimpleNamespace(datamodule=TinyText()), _module(), (LENGTH,)
        )
    message = str(err.value)
    assert message.startswith("ExplanationAgreement") and "\n" not in message
    return message


def test_a_method_without_text_support_is_refused_at_setup_naming_those_with_it():
    text_methods = [name for name, method in METHODS.items() if method.supports(TEXT) and explains_tokens(method)]
    message = _refusal("grad_cam")
    assert "grad_cam explains image, signal inputs, these are text [T] inputs of shape [12]" in message
    assert re.search(r"methods for text inputs: (.*)\)$", message).group(1).split(", ") == text_methods
    untokened = [name for name, method in METHODS.items() if method.supports(TEXT) and not explains_tokens(method)]
    for name in untokened:  # e.g. DeepLift: supports every modality, but not token ids
        assert "methods that work for text: " + ", ".join(token_method_names()) in _refusal(name)
    assert get_method(METHOD).supports(TEXT) and explains_tokens(get_method(METHOD))


def test_stability_is_refused_for_token_ids():
    callback = ExplanationAgreement(methods=[METHOD], k=2, stability={"noise_scale": 0.1})
    with pytest.raises(ValueError, match="^ExplanationAgreement stability adds noise .* set stability: null"):
        callback.check_settings(SimpleNamespace(datamodule=TinyText()), _module(), (LENGTH,))
