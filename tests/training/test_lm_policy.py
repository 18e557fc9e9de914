"""Generated training batches in LMDistillationModule: on-policy (lmbda), sequence-level KD, seeding, resume."""

from __future__ import annotations

import pytest
import torch
from test_lm_module import PAD, CausalMean, LMSplit, TinyLMData, adam

from kdlight.functional.lm import forward_kl
from kdlight.training import LMDistillationModule
from kdlight.training.lm_generation import GenerationSettings, generated_batch

from conftest import tiny_trainer

GREEDY = GenerationSettings(prompt_length=3, max_new_tokens=4, do_sample=False)
SAMPLED = GenerationSettings(prompt_length=3, max_new_tokens=4, do_sample=True)


def distiller(**kwargs) -> LMDistillationModule:
    torch.manual_seed(0)
    return LMDistillationModule(CausalMean(dim=16), CausalMean(dim=4), optimizer=adam, teacher_as_given=True, **kwargs)


@pytest.mark.parametrize(("lmbda", "seq_kd", "generator"), [(1.0, False, "student"), (0.0, True, "teacher")])
def test_the_first_step_trains_on_the_right_models_continuation(lmbda, seq_kd, generator):
    lm, data = distiller(lmbda=lmbda, seq_kd=seq_kd, generation=GREEDY), TinyLMData()
    x = next(iter(data.train_dataloader()))["inputs"]
    ids, labels = generated_batch(getattr(lm, generator), x, GREEDY, PAD)
    with torch.no_grad():
        expected = forward_kl(lm.student(ids), lm.teacher(ids), labels=labels).item()
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(lm, datamodule=data)
    assert trainer.logged_metrics["train/loss"].item() == pytest.approx(expected, rel=1e-5)
    assert trainer.logged_metrics["train/on_policy"].item() == (1.0 if generator == "student" else 0.0)


def test_lmbda_is_the_fraction_of_on_policy_steps_and_the_draw_is_seeded():
    first, again, other = (distiller(lmbda=0.3, generation=SAMPLED, generation_seed=s).policy for s in (0, 0, 1))
    steps = range(4000)
    chosen = [first.on_policy(s) for s in steps]
    assert chosen == [again.on_policy(s) for s in steps]
    assert chosen != [other.on_policy(s) for s in steps]
    assert sum(chosen) / len(chosen) == pytest.approx(0.3, abs=0.03)


def test_the_logged_epoch_mean_is_the_realised_fraction():
    lm, data = distiller(lmbda=0.5, generation=SAMPLED), TinyLMData(n=64, batch_size=4)  # 16 steps
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=data)
    realised = sum(lm.policy.on_policy(s) for s in range(16)) / 16
    assert 0 < realised < 1
    assert trainer.logged_metrics["train/on_policy_epoch"].item() == pytest.approx(realised)


def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    def fit(epochs: int, ckpt: str | None = None) -> LMDistillationModule:
        lm = distiller(lmbda=0.5, generation=SAMPLED)
        trainer = tiny_trainer(max_epochs=epochs, limit_val_batches=0)
        trainer.fit(lm, datamodule=TinyLMData(n=16, batch_size=4), ckpt_path=ckpt)
        if ckpt is None and epochs == 1:
            trainer.save_checkpoint(tmp_path / "half.ckpt")
        return lm

    whole = fit(2)
    fit(1)
    resumed = fit(2, str(tmp_path / "half.ckpt"))
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=0)


def test_generation_settings_from_a_yaml_dict():
    lm = distiller(seq_kd=True, generation={"prompt_length": 3, "max_new_tokens": 2})
    assert lm.policy.generation == GenerationSettings(prompt_length=3, max_new_tokens=2)
    assert distiller().policy is None  # no generation: batches as the data gives them


def test_bad_generation_arguments_are_one_line():
    with pytest.raises(ValueError, match="need generation settings") as error:
        distiller(lmbda=0.5)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"lmbda is the fraction .* in \[0, 1\]; got 1.5"):
        distiller(lmbda=1.5, generation=GREEDY)
    long_prompt = distiller(seq_kd=True, generation=GenerationSettings(prompt_length=11, max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompt_length=11 is longer than the data's sequences \(max_length=10\)"):
        tiny_trainer().validate(long_prompt, datamodule=TinyLMData(n=8), verbose=False)
    short_student = distiller(lmbda=1.0, generation=GenerationSettings(prompt_length=3, max_new_tokens=8))
    short_student.student.max_length = 10
    with pytest.raises(ValueError, match="student accepts at most max_length=10 tokens but generation makes"):
        tiny_trainer().validate(short_student, datamodule=TinyLMData(n=8), verbose=False)


def test_a_batch_without_a_full_prompt_trains_on_the_data_and_warns():
    data = TinyLMData()
    short = data.splits["train"].ids.clone()
    short[:, 6:] = PAD  # every training sequence has at most 6 real tokens
    data.splits["train"] = LMSplit(short)
    lm = distiller(lmbda=1.0, generation=GenerationSettings(prompt_length=8, max_new_tokens=1, do_sample=False))
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="no sequence of generation.prompt_length=8 real tokens"):
        trainer.fit(lm, datamodule=data)
    assert trainer.logged_metrics["train/on_policy"].item() == 0.0


def test_the_default_generation_seed_is_the_runs_seed(monkeypatch):
    policy = distiller(lmbda=0.5, generation=SAMPLED).policy
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    run_seed_1 = [policy.on_policy(s) for s in range(200)]
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    assert [policy.on_policy(s) for s in range(200)] != run_seed_1
    assert run_seed_1 == [
        distiller(lmbda=0.5, generation=SAMPLED, generation_seed=1).policy.on_policy(s) for s in range(200)
    ]
