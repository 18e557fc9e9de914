"""ContextAttribution on a distilled code LM: logged values against a direct computation, chance
level, figures, one-line refusals."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from kdlight.data.code_corpus import PythonSourceCorpus
from kdlight.explain import ContextAttribution
from kdlight.explain.attribution.context_tokens import context_attributions
from kdlight.explain.metrics import metric_names, metric_spec
from kdlight.functional import agreement as F
from kdlight.models.causal_lm import CausalTransformer
from kdlight.training.lm import LMDistillationModule
from kdlight.training.reinit import reinitialized

from conftest import tiny_trainer

LENGTH, PROBES, STEPS, TOP_K = 32, 4, 4, 3
METRICS = {
    "cosine": F.cosine_agreement,
    "rank_correlation": F.rank_correlation,
    "feature_agreement": F.feature_agreement,
}
KEY = "val/explain_lm/integrated_gradients"


@pytest.fixture(scope="module")
def corpus() -> PythonSourceCorpus:
    data = PythonSourceCorpus(batch_size=8, max_files=4, max_length=LENGTH)
    data.setup("fit")
    return data


def lm_module() -> LMDistillationModule:
    torch.manual_seed(0)
    teacher = CausalTransformer(259, d_model=32, depth=1, heads=2, max_length=LENGTH)
    student = CausalTransformer(259, d_model=16, depth=1, heads=2, max_length=LENGTH)
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    return LMDistillationModule(teacher, student, optimizer=adam, teacher_as_given=True)


def expected_scores(teacher, student, data: PythonSourceCorpus, relative: list[int]) -> dict[str, float]:
    """Per (probe, position) pair, straight from context_attributions and the agreement functions."""
    samples = [data.val_dataloader().dataset[i] for i in range(PROBES)]
    sums: dict[str, list[float]] = {name: [] for name in METRICS}
    agree = []
    for sample in samples:
        ids, labels = sample["inputs"].view(1, -1), sample["labels"]
        last = int((labels != -100).nonzero().max())
        for p in relative:
            at = p if p >= 0 else last + 1 + p
            position = torch.tensor([at])
            with torch.no_grad():
                target = teacher(ids)[0, at].argmax().view(1)
                agree.append(float(student(ids)[0, at].argmax() == target))
            t = context_attributions(teacher, ids, position, target, n_steps=STEPS)[:, : at + 1]
            s = context_attributions(student, ids, position, target, n_steps=STEPS)[:, : at + 1]
            for name, fn in METRICS.items():
                value = fn(s, t, min(TOP_K, at + 1)) if name == "feature_agreement" else fn(s, t)
                sums[name].append(float(value))
    means = {
        name: sum(v for v in values if math.isfinite(v)) / sum(map(math.isfinite, values))
        for name, values in sums.items()
    }
    return means | {"prediction_agreement": sum(agree) / len(agree)}


def test_logged_values_equal_a_direct_computation_with_chance_and_figures(corpus, tmp_path):
    module = lm_module()
    callback = ContextAttribution(
        num_probes=PROBES, positions=[5, -1], n_steps=STEPS, metrics=list(METRICS), top_k=TOP_K, num_figures=2
    )
    logger = CSVLogger(tmp_path, name="run")
    trainer = tiny_trainer(limit_train_batches=2, limit_val_batches=1, logger=logger, callbacks=[callback])
    trainer.fit(module, datamodule=corpus)

    results = callback.last_results
    teacher, student = module.teacher.eval(), module.student.eval()
    expected = expected_scores(teacher, student, corpus, [5, -1])
    for name in METRICS:
        assert results[f"{KEY}/{name}"] == pytest.approx(expected[name], abs=1e-5)
    assert results["val/explain_lm/prediction_agreement"] == pytest.approx(expected["prediction_agreement"])
    assert results["val/explain_lm/num_positions"] == 2 * PROBES
    assert results[f"{KEY}/nonfinite"] == 0

    fresh = reinitialized(module.student, 0)
    chance = expected_scores(teacher, fresh, corpus, [5, -1])
    has_chance = [name for name in METRICS if metric_spec(name).has_chance]
    for name in has_chance:
        assert results[f"{KEY}/chance_{name}"] == pytest.approx(chance[name], abs=1e-5)

    logged = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    assert logged[f"{KEY}/cosine"].dropna().iloc[-1] == pytest.approx(results[f"{KEY}/cosine"], abs=1e-6)
    written = {p.name for p in (tmp_path / "run" / "version_0" / "explain").iterdir()}
    stem = KEY.replace("/", "_")
    assert {f"{stem}_heatmaps_epoch000.png", f"{stem}_heatmaps_html_epoch000.html"} <= written
    table = pd.read_csv(tmp_path / "run" / "version_0" / "explain" / f"{stem}_per_position_epoch000.csv")
    assert len(table) == 2 * PROBES and set(METRICS) <= set(table.columns)
    assert table["cosine"].mean() == pytest.approx(results[f"{KEY}/cosine"], abs=1e-5)


def test_validate_logs_every_default_metric_and_its_chance(corpus):
    """Under trainer.validate (inference mode): the default metrics are ExplanationAgreement's."""
    callback = ContextAttribution(num_probes=2, n_steps=2, log_figures=False)
    (results,) = tiny_trainer(limit_val_batches=1, callbacks=[callback]).validate(
        lm_module(), datamodule=corpus, verbose=False
    )
    names = metric_names("maps")
    assert {f"{KEY}/{name}" for name in names} <= set(results)
    assert {f"{KEY}/chance_{name}" for name in metric_names("maps", has_chance=True)} <= set(results)
    assert results["val/explain_lm/num_positions"] == 2


class NoTeacher(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def validation_step(self, batch, batch_idx):
        return None


class NoModality(LightningDataModule):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4, LENGTH, dtype=torch.long)), batch_size=2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ContextAttribution(method="occlusion"), "valid methods: integrated_gradients, input_x_gradient"),
        (lambda: ContextAttribution(positions="first"), "positions must be 'last' or a non-empty list of ints"),
        (lambda: ContextAttribution(metrics=["nope"]), "unknown metric 'nope'"),
    ],
)
def test_bad_settings_are_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "module, data, message",
    [
        ("lm", "corpus", r"positions \[40\] are outside the sequence of 32 tokens"),
        ("plain", "corpus", "needs a module with a teacher and a student"),
        ("lm", "plain", "needs token data: a datamodule whose modality is kdlight.core.modality.Text"),
    ],
)
def test_bad_models_and_data_are_refused_in_one_line(corpus, module, data, message):
    callback = ContextAttribution(positions=[3, 40])
    pl_module = lm_module() if module == "lm" else NoTeacher()
    datamodule = corpus if data == "corpus" else NoModality()
    with pytest.raises(ValueError, match=message) as err:
        tiny_trainer(callbacks=[callback]).validate(pl_module, datamodule=datamodule, verbose=False)
    assert "\n" not in str(err.value)


def test_a_position_that_predicts_no_token_is_skipped(corpus):
    """The last column of a chunk has no next token (label -100): explaining it would explain nothing."""
    callback = ContextAttribution(num_probes=2, positions=[5, LENGTH - 1], n_steps=2, log_figures=False)
    (results,) = tiny_trainer(limit_val_batches=1, callbacks=[callback]).validate(
        lm_module(), datamodule=corpus, verbose=False
    )
    assert results["val/explain_lm/num_positions"] == 2  # position 5 of each probe only


def test_the_figure_window_ends_at_the_explained_position():
    from kdlight.explain.callback.lm_context import context_window

    values = torch.arange(20).view(1, 20).repeat(2, 1)
    out = context_window(values, torch.tensor([3, 15]), fill=-1, width=5)
    assert out.tolist() == [[0, 1, 2, 3, -1], [11, 12, 13, 14, 15]]
