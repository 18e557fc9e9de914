"""LMDistillationModule(teacher_cache=...): training from the teacher's cached top-k log-probabilities."""

from __future__ import annotations

import pytest
import torch
from test_lm_module import CausalMean, TinyLMData, adam

from kdlight.models import CausalTransformer
from kdlight.objectives.lm import TokenKL
from kdlight.training import LMDistillationModule

from conftest import tiny_trainer

VOCAB = 259  # the byte tokenizer


def corpus():
    from kdlight.data.code_corpus import PythonSourceCorpus

    return PythonSourceCorpus(batch_size=4, max_files=4, max_length=16)


def distiller(**kwargs) -> LMDistillationModule:
    torch.manual_seed(0)
    teacher = CausalTransformer(VOCAB, d_model=16, depth=1, heads=2, max_length=16)
    student = CausalTransformer(VOCAB, d_model=8, depth=1, heads=2, max_length=16)
    return LMDistillationModule(teacher, student, optimizer=adam, teacher_as_given=True, **kwargs)


def first_step_loss(lm: LMDistillationModule) -> float:
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(lm, datamodule=corpus())
    return trainer.logged_metrics["train/loss"].item()


def test_a_cache_of_the_whole_vocabulary_gives_the_online_loss(tmp_path):
    online = first_step_loss(distiller())
    cached = first_step_loss(distiller(teacher_cache=str(tmp_path), teacher_cache_k=VOCAB))
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [f"topk{VOCAB}"]
    assert cached == pytest.approx(online, rel=1e-3)  # k = V is exact up to the float16 storage


def test_a_small_cache_bounds_the_online_loss_from_below(tmp_path):
    online = first_step_loss(distiller())
    cached = first_step_loss(distiller(teacher_cache=str(tmp_path), teacher_cache_k=8))
    assert 0 < cached <= online * (1 + 1e-3)  # coarsening to k tokens + one bucket cannot raise a KL


def test_objectives_that_need_the_full_teacher_distribution_are_refused(tmp_path):
    lm = distiller(objective=TokenKL(direction="reverse"), teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match="needs the teacher's full next-token distribution") as error:
        tiny_trainer(max_steps=1).fit(lm, datamodule=corpus())
    assert "\n" not in str(error.value)


def test_data_without_sample_indices_is_refused(tmp_path):
    lm = LMDistillationModule(CausalMean(), CausalMean(), teacher_as_given=True, teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match="teacher_cache needs a data module whose training batches carry sample"):
        tiny_trainer(max_steps=1).fit(lm, datamodule=TinyLMData(n=8))


def test_generated_batches_run_the_teacher_online(tmp_path):
    from kdlight.training.lm_generation import GenerationSettings

    settings = GenerationSettings(prompt_length=4, max_new_tokens=4, do_sample=False)
    online = first_step_loss(distiller(lmbda=1.0, generation=settings))
    cached = first_step_loss(distiller(lmbda=1.0, generation=settings, teacher_cache=str(tmp_path), teacher_cache_k=8))
    assert cached == pytest.approx(online, rel=1e-6)


def test_a_refused_fit_builds_no_cache(tmp_path):
    torch.manual_seed(0)
    teacher = CausalTransformer(VOCAB, d_model=16, depth=1, heads=2, max_length=16)
    student = CausalTransformer(VOCAB, d_model=8, depth=1, heads=2, max_length=16)
    lm = LMDistillationModule(teacher, student, optimizer=adam, teacher_cache=str(tmp_path))  # no teacher weights
    with pytest.raises(ValueError, match="teacher_checkpoint is not set"):
        tiny_trainer(max_steps=1).fit(lm, datamodule=corpus())
    assert list(tmp_path.iterdir()) == []


def test_the_cache_is_built_from_the_teacher_a_resumed_fit_restores(tmp_path):
    from kdlight.training.lm_cache import open_topk_cache

    lm = distiller(teacher_cache=str(tmp_path / "first"), teacher_cache_k=8)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=corpus())
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    trained_teacher = {k: v.clone() for k, v in lm.teacher.state_dict().items()}
    torch.manual_seed(123)  # another random teacher until the checkpoint restores the saved one
    resumed = LMDistillationModule(
        CausalTransformer(VOCAB, d_model=16, depth=1, heads=2, max_length=16),
        CausalTransformer(VOCAB, d_model=8, depth=1, heads=2, max_length=16),
        optimizer=adam,
        teacher_as_given=True,
        teacher_cache=str(tmp_path / "resumed"),
        teacher_cache_k=8,
    )
    tiny_trainer(max_steps=2, limit_val_batches=0).fit(resumed, datamodule=corpus(), ckpt_path=tmp_path / "one.ckpt")
    for name, value in trained_teacher.items():
        assert torch.equal(resumed.teacher.state_dict()[name], value)
    data = corpus()
    data.setup("fit")
    expected = open_topk_cache(tmp_path / "check", 8, lm.teacher, data.train_inputs(), 0, data.data_record())
    index = torch.arange(4)
    assert torch.equal(resumed.topk.cache.lookup(index)[1], expected.lookup(index)[1])
