"""LMDistillationModule: frozen teacher, logged terms, perplexity and agreement by hand, padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdlight.core.batch import collate
from kdlight.core.modality import Text
from kdlight.objectives import Composite
from kdlight.objectives.lm import NextTokenCE, TokenKL
from kdlight.training.lm import LMDistillationModule, next_token_labels

from conftest import tiny_trainer

VOCAB, PAD, LENGTH = 12, 0, 10


class CausalMean(nn.Module):
    """A minimal causal LM: each position predicts from the mean embedding of the tokens up to it."""

    def __init__(self, dim: int = 8, vocab_size: int = VOCAB, pad_token_id: int = PAD) -> None:
        super().__init__()
        self.vocab_size, self.pad_token_id, self.max_length = vocab_size, pad_token_id, None
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, vocab_size)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = (ids != self.pad_token_id).float().unsqueeze(-1)
        summed = (self.embed(ids) * real).cumsum(1)
        return self.out(summed / real.cumsum(1).clamp(min=1))


def synthetic_ids(n: int, seed: int) -> torch.Tensor:
    """Right-padded sequences that count up from a random start (mod the 11 real tokens)."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(1, VOCAB, (n, 1), generator=gen)
    ids = (start + torch.arange(LENGTH)) % (VOCAB - 1) + 1
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=gen)
    return ids.masked_fill(torch.arange(LENGTH) >= lengths[:, None], PAD)


class LMSplit(Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids, self.labels = ids, next_token_labels(ids, PAD)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"inputs": ids, "attention_mask": ids != PAD, "labels": self.labels[i], "index": torch.tensor(i)}


class TinyLMData(LightningDataModule):
    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        self.modality = Text(VOCAB, PAD, max_length=LENGTH)
        self.splits = {name: LMSplit(synthetic_ids(n, seed)) for seed, name in enumerate(("train", "val", "test"))}
        self.batch_size = batch_size

    def loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")


def adam(params):
    return torch.optim.Adam(params, lr=0.05)


def module(objective=None, **kwargs) -> LMDistillationModule:
    torch.manual_seed(0)
    teacher, student = CausalMean(dim=16), CausalMean(dim=4)
    return LMDistillationModule(teacher, student, objective, optimizer=adam, teacher_as_given=True, **kwargs)


def test_next_token_labels_shift_and_ignore_padding():
    ids = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9]])
    expected = torch.tensor([[6, 7, -100, -100, -100], [2, 3, 4, 9, -100]])
    assert torch.equal(next_token_labels(ids, pad_id=0), expected)


def test_teacher_stays_bit_identical_and_out_of_the_optimizer():
    lm = module()
    before = {k: v.clone() for k, v in lm.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in lm.student.state_dict().items()}
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=TinyLMData())
    assert all(torch.equal(before[k], v) for k, v in lm.teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in lm.student.state_dict().items())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in lm.student.parameters()}
    assert not any(p.requires_grad for p in lm.teacher.parameters()) and not lm.teacher.training


def test_a_short_fit_lowers_the_distillation_loss_and_logs_each_term():
    lm = module(Composite([TokenKL(), NextTokenCE(weight=0.5)]))
    data = TinyLMData()
    batch = next(iter(data.train_dataloader()))

    def loss_now() -> float:
        with torch.no_grad():
            _, terms = lm.lm_step(batch["inputs"], batch["labels"])
        return sum(t.weighted for t in terms).item()

    lm._attach_taps()
    first = loss_now()
    trainer = tiny_trainer(max_epochs=4, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(lm, datamodule=data)
    assert loss_now() < 0.8 * first
    logged = trainer.logged_metrics
    assert {"train/loss", "train/loss_fkl", "train/loss_ce"} <= set(logged)
    assert logged["train/loss"].item() == pytest.approx(
        logged["train/loss_fkl"].item() + 0.5 * logged["train/loss_ce"].item(), rel=1e-5
    )


def test_validation_metrics_equal_the_token_level_values_by_hand():
    lm = module()
    data = TinyLMData(n=20, batch_size=8)  # batches of 8, 8 and 4: token-weighted means over the epoch
    (results,) = tiny_trainer().validate(lm, datamodule=data, verbose=False)
    ids, labels = data.splits["val"].ids, data.splits["val"].labels
    counted = labels != -100
    with torch.no_grad():
        s_logits, t_logits = lm.student(ids).double(), lm.teacher(ids).double()

    def nll(logits: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][counted]

    p_t, log_ps, log_pt = t_logits.softmax(-1), s_logits.log_softmax(-1), t_logits.log_softmax(-1)
    kl = (p_t * (log_pt - log_ps)).sum(-1)[counted].mean()
    agreement = (s_logits.argmax(-1) == t_logits.argmax(-1))[counted].double().mean()
    assert results["val/student_ppl"] == pytest.approx(math.exp(nll(s_logits).mean()), rel=1e-5)
    assert results["val/teacher_ppl"] == pytest.approx(math.exp(nll(t_logits).mean()), rel=1e-5)
    assert results["val/loss"] == pytest.approx(nll(s_logits).mean().item(), rel=1e-5)
    assert results["val/kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert results["val/agreement"] == pytest.approx(agreement.item(), abs=1e-6)


def test_padding_never_counts_in_the_metrics():
    lm = module()
    data = TinyLMData(n=16)
    (plain,) = tiny_trainer().test(lm, datamodule=data, verbose=False)
    split = data.splits["test"]
    padded = torch.cat([split.ids, torch.full((len(split.ids), 4), PAD)], dim=1)  # more padding
    data.modality = Text(VOCAB, PAD, max_length=LENGTH + 4)
    data.splits["test"] = LMSplit(padded)
    (more,) = tiny_trainer().test(lm, datamodule=data, verbose=False)
    for name in ("test/student_ppl", "test/teacher_ppl", "test/kl", "test/agreement", "test/loss"):
        assert more[name] == pytest.approx(plain[name], rel=1e-5), name


def test_labels_are_derived_from_the_inputs_when_the_batch_has_none():
    lm = module()
    lm._attach_taps()
    ids = synthetic_ids(4, seed=3)
    x, labels = lm.lm_inputs({"inputs": ids})
    assert torch.equal(labels, next_token_labels(ids, PAD))


def test_mismatched_vocabularies_and_classifiers_are_one_line_errors():
    teacher, student = CausalMean(), CausalMean(vocab_size=VOCAB + 3)
    lm = LMDistillationModule(teacher, student, teacher_as_given=True)
    with pytest.raises(ValueError, match="different vocabularies") as error:
        tiny_trainer().validate(lm, datamodule=TinyLMData(n=8), verbose=False)
    assert "\n" not in str(error.value)


class Classifier(CausalMean):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids)[:, -1]


def test_a_classifier_is_refused():
    lm = LMDistillationModule(Classifier(), Classifier(), teacher_as_given=True)
    with pytest.raises(ValueError, match=r"teacher returned logits \[2, 12\] for ids \[2, 10\]; a causal LM"):
        tiny_trainer().validate(lm, datamodule=TinyLMData(n=8), verbose=False)


def test_a_random_teacher_needs_teacher_as_given():
    lm = LMDistillationModule(CausalMean(), CausalMean())
    with pytest.raises(ValueError, match="teacher_checkpoint is not set"):
        tiny_trainer(max_epochs=1).fit(lm, datamodule=TinyLMData(n=8))


def test_hand_checked_cross_entropy_matches_torch():  # the reference the tests above rely on
    logits, labels = torch.randn(2, 5, VOCAB).double(), torch.tensor([[1, 2, -100, 3, -100], [4, 5, 6, 7, 8]])
    by_torch = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    by_hand = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][labels != -100]
    torch.testing.assert_close(by_hand.mean(), by_torch)


def test_checkpoint_round_trip_restores_student_and_teacher(tmp_path):
    lm = module()
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(lm, datamodule=TinyLMData(n=8))
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    restored = LMDistillationModule.load_from_checkpoint(
        tmp_path / "lm.ckpt", teacher=CausalMean(dim=16), student=CausalMean(dim=4), weights_only=False
    )
    for name in ("teacher", "student"):
        saved, loaded = getattr(lm, name).state_dict(), getattr(restored, name).state_dict()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved), name
    assert restored.teacher_as_given and not restored.teacher.training
