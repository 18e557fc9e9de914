"""LMModule: next-token training of one causal LM, metrics by hand, its checkpoint teaches, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from test_lm_module import LENGTH, CausalMean, Classifier, TinyLMData, adam

import kdlight
from kdlight.training import LMDistillationModule, LMModule

from conftest import tiny_trainer


class RecordedLMData(TinyLMData):
    """TinyLMData whose record names a tokenizer (as PythonSourceCorpus.data_record does)."""

    def __init__(self, vocabulary: str = "a", **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary

    def data_record(self) -> dict:
        return {"tokenizer": {"kind": "char", "vocab_size": 12, "vocab_sha256": self.vocabulary * 64}}


def scratch(dim: int = 16) -> LMModule:
    torch.manual_seed(0)
    return LMModule(CausalMean(dim=dim), optimizer=adam)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    counted = labels != -100
    return -torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][counted]


def test_lm_module_is_exported_at_the_top():
    assert kdlight.LMModule is LMModule


def test_a_short_fit_lowers_the_validation_loss_and_logs_the_training_loss():
    lm, data = scratch(), TinyLMData()
    (before,) = tiny_trainer().validate(lm, datamodule=data, verbose=False)
    trainer = tiny_trainer(max_epochs=4, log_every_n_steps=1)
    trainer.fit(lm, datamodule=data)
    assert {"train/loss", "train/loss_epoch"} <= set(trainer.logged_metrics)
    (after,) = trainer.validate(lm, datamodule=data, verbose=False)
    assert after["val/loss"] < 0.7 * before["val/loss"]


def test_validation_loss_and_perplexity_equal_the_token_level_values_by_hand():
    lm, data = scratch(), TinyLMData(n=20, batch_size=8)  # 8, 8, 4: a token-weighted epoch mean
    (results,) = tiny_trainer().validate(lm, datamodule=data, verbose=False)
    split = data.splits["val"]
    with torch.no_grad():
        expected = nll(lm.model(split.ids), split.labels).mean().item()
    assert results["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert results["val/ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_its_checkpoint_is_a_teacher_for_lm_distillation(tmp_path):
    lm, data = scratch(), RecordedLMData()
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=data)
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["kdlight_data"] == data.data_record()
    teacher = CausalMean(dim=16)
    distil = LMDistillationModule(teacher, CausalMean(dim=4), teacher_checkpoint=str(tmp_path / "best.ckpt"))
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in distil.teacher.state_dict().items())
    (results,) = tiny_trainer().validate(distil, datamodule=RecordedLMData(), verbose=False)
    with torch.no_grad():
        split = data.splits["val"]
        expected = math.exp(nll(lm.model(split.ids), split.labels).mean().item())
    assert results["val/teacher_ppl"] == pytest.approx(expected, rel=1e-5)


def test_a_student_on_another_vocabulary_is_refused_by_the_teachers_record(tmp_path):
    lm = scratch()
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=RecordedLMData("a", n=8))
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    distil = LMDistillationModule(CausalMean(dim=16), CausalMean(dim=4), teacher_checkpoint=str(tmp_path / "best.ckpt"))
    with pytest.raises(ValueError, match="trained on the token ids of another vocabulary") as error:
        tiny_trainer().validate(distil, datamodule=RecordedLMData("b", n=8), verbose=False)
    assert "\n" not in str(error.value)


def test_data_longer_than_the_models_max_length_is_one_line():
    model = CausalMean()
    model.max_length = LENGTH - 4
    with pytest.raises(ValueError, match=f"at most max_length={LENGTH - 4} tokens but the data yields up to {LENGTH}"):
        tiny_trainer().validate(LMModule(model), datamodule=TinyLMData(n=8), verbose=False)
    distil = LMDistillationModule(CausalMean(), model, teacher_as_given=True)
    with pytest.raises(ValueError, match="student accepts at most max_length"):
        tiny_trainer().validate(distil, datamodule=TinyLMData(n=8), verbose=False)


def test_a_classifier_and_a_non_text_model_are_refused():
    with pytest.raises(ValueError, match=r"model returned logits \[2, 12\] for ids \[2, 10\]; a causal LM"):
        tiny_trainer().validate(LMModule(Classifier()), datamodule=TinyLMData(n=8), verbose=False)
    with pytest.raises(ValueError, match="is not a text model"):
        tiny_trainer().validate(LMModule(torch.nn.Linear(10, 12)), datamodule=TinyLMData(n=8), verbose=False)


def test_a_code_lm_teacher_checkpoint_feeds_a_distilled_student(tmp_path):
    from kdlight.data.code_corpus import PythonSourceCorpus
    from kdlight.models import CausalTransformer

    def corpus() -> PythonSourceCorpus:
        return PythonSourceCorpus(batch_size=8, max_files=4, max_length=32)

    def model(d_model: int, max_length: int = 32) -> CausalTransformer:
        return CausalTransformer(259, d_model=d_model, depth=1, heads=2, max_length=max_length)

    torch.manual_seed(0)
    teacher = LMModule(model(32), optimizer=adam)
    trainer = tiny_trainer(max_steps=3, limit_val_batches=2)
    trainer.fit(teacher, datamodule=corpus())
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    assert "tokenizer" in torch.load(tmp_path / "best.ckpt", weights_only=True)["kdlight_data"]
    student = LMDistillationModule(model(32), model(16), teacher_checkpoint=str(tmp_path / "best.ckpt"))
    (results,) = tiny_trainer(limit_val_batches=2).validate(student, datamodule=corpus(), verbose=False)
    assert results["val/teacher_ppl"] < 259 and 0 <= results["val/agreement"] <= 1
    with pytest.raises(ValueError, match="at most max_length=16 tokens but the data yields up to 32"):
        tiny_trainer().validate(LMModule(model(16, max_length=16)), datamodule=corpus(), verbose=False)
