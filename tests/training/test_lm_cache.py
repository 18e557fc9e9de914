"""Top-k teacher-output cache: exact at k = V, lookups match the teacher, reuse, refusals, atomic builds."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlight.data.lm import IGNORE_INDEX, next_token_labels
from kdlight.functional.lm import forward_kl
from kdlight.models.causal_lm import CausalTransformer
from kdlight.objectives import Composite
from kdlight.objectives.lm import GeneralizedJSD, NextTokenCE, SkewKL, TokenKL, TokenTVD
from kdlight.training.lm_cache import cache_root, cached_terms, check_cached_objective, open_topk_cache

VOCAB, PAD, LENGTH, ROWS = 24, 0, 12, 10
TOKENIZER = {"tokenizer": {"kind": "byte", "vocab_size": VOCAB, "max_length": LENGTH, "vocab_sha256": "a" * 64}}


def tiny_lm(seed: int) -> CausalTransformer:
    torch.manual_seed(seed)
    return CausalTransformer(VOCAB, d_model=16, depth=1, heads=2, max_length=LENGTH, pad_token_id=PAD)


def sample_ids(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (ROWS, LENGTH), generator=gen)
    lengths = torch.randint(3, LENGTH + 1, (ROWS,), generator=gen)
    return ids.masked_fill(torch.arange(LENGTH) >= lengths[:, None], PAD)


class Counting(nn.Module):
    """Wraps a teacher and counts its forward calls; ``fail_at``: raise on that call (a build killed midway)."""

    def __init__(self, inner: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("teacher died mid-build")
        return self.inner(ids)


def build(root, teacher=None, k=VOCAB, record=TOKENIZER, storage="float32", temperature=1.0, ids=None):
    teacher = teacher if teacher is not None else Counting(tiny_lm(0))
    ids = sample_ids() if ids is None else ids
    return open_topk_cache(root, k, teacher, ids, PAD, record, temperature, batch_size=4, storage=storage)


def test_full_vocabulary_cache_gives_the_full_forward_kl_and_its_gradient(tmp_path):
    ids, teacher = sample_ids(), tiny_lm(0)
    cache = build(tmp_path, Counting(teacher), k=VOCAB, temperature=2.0)
    labels = next_token_labels(ids, PAD)
    index = torch.tensor([7, 2, 5, 0])
    student = tiny_lm(1)(ids[index]).detach().requires_grad_()
    logprobs, top = cache.lookup(index)
    (term,) = cached_terms(TokenKL(temperature=2.0, weight=0.3), student, labels[index], logprobs, top, 2.0)
    full_student = student.detach().clone().requires_grad_()
    with torch.no_grad():
        teacher_logits = teacher(ids[index])
    expected = forward_kl(full_student, teacher_logits, labels=labels[index], temperature=2.0)
    assert (term.name, term.weight) == ("fkl", 0.3)
    torch.testing.assert_close(term.value, expected, atol=1e-6, rtol=1e-5)
    term.value.backward(), expected.backward()
    torch.testing.assert_close(student.grad, full_student.grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("storage, atol", [("float32", 1e-6), ("float16", 2e-2)])
def test_lookup_returns_the_teachers_top_k_of_those_rows(tmp_path, storage, atol):
    ids, teacher, k = sample_ids(), tiny_lm(0), 5
    cache = build(tmp_path, Counting(teacher), k=k, storage=storage, temperature=0.5)
    index = torch.tensor([9, 3, 3, 0])
    logprobs, top = cache.lookup(index)
    with torch.no_grad():
        reference = F.log_softmax(teacher(ids[index]).double() / 0.5, dim=-1)
    assert logprobs.dtype == torch.float32 and top.dtype == torch.int64 and top.shape == (4, LENGTH, k)
    torch.testing.assert_close(logprobs.double(), reference.topk(k, dim=-1).values, atol=atol, rtol=0)
    torch.testing.assert_close(logprobs.double(), reference.gather(-1, top), atol=atol, rtol=0)
    assert bool((torch.logsumexp(logprobs, -1) <= 1e-6).all())  # never more than the whole mass


def test_reopening_reuses_the_cache_without_running_the_teacher(tmp_path):
    first = Counting(tiny_lm(0))
    cache = build(tmp_path, first, k=3)
    assert first.calls == 3 and cache.built  # ceil(10 / 4) batches
    again = Counting(tiny_lm(0))
    reopened = build(tmp_path, again, k=3)
    assert again.calls == 0 and not reopened.built and reopened.directory == cache.directory
    explicit = build(cache.directory, again, k=3)  # pointing at the cache itself works too
    assert again.calls == 0 and explicit.directory == cache.directory
    torch.testing.assert_close(reopened.lookup(torch.arange(ROWS)), cache.lookup(torch.arange(ROWS)))


def test_parent_directory_keeps_one_cache_per_key(tmp_path):
    one, other = build(tmp_path, k=3), build(tmp_path, Counting(tiny_lm(5)), k=3)
    assert one.directory != other.directory and other.built
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([one.directory.name, other.directory.name])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher": Counting(tiny_lm(5))}, "another teacher's weights"),
        ({"record": {"tokenizer": {**TOKENIZER["tokenizer"], "vocab_sha256": "b" * 64}}}, "another tokenizer"),
        ({"k": 4}, r"k=3 \(this run asks for k=4\)"),
        ({"ids": sample_ids(seed=1)}, "other training data"),
    ],
)
def test_an_explicit_cache_of_another_key_is_refused_in_one_line(tmp_path, change, message):
    cache = build(tmp_path, k=3)
    with pytest.raises(ValueError, match=message) as info:
        build(cache.directory, **{"k": 3, **change})
    assert "\n" not in str(info.value) and "delete it or point teacher_cache" in str(info.value)


def test_a_build_killed_midway_leaves_no_cache_that_opens(tmp_path):
    with pytest.raises(RuntimeError, match="teacher died"):
        build(tmp_path, Counting(tiny_lm(0), fail_at=2), k=3)
    assert list(tmp_path.iterdir()) == []  # neither a cache nor a half-written temp directory
    healthy = Counting(tiny_lm(0))
    cache = build(tmp_path, healthy, k=3)
    assert healthy.calls == 3 and cache.built


def test_temp_directories_of_dead_builders_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from kdlight.training.teacher_cache import _host

    stale = tmp_path / f".topk3-0123456789abcdef.tmp-{_host()}-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "logprobs.npy").write_bytes(b"half")
    build(tmp_path, k=3)
    assert not stale.exists()


def test_lookup_outside_the_cached_rows_is_refused(tmp_path):
    cache = build(tmp_path, k=2)
    with pytest.raises(ValueError, match="outside the cache's 10 sequences"):
        cache.lookup(torch.tensor([3, 10]))


@pytest.mark.parametrize(
    "objective", [TokenKL("reverse"), GeneralizedJSD(), TokenTVD(), SkewKL(), Composite([TokenKL(), TokenTVD()])]
)
def test_terms_that_need_the_full_teacher_distribution_are_refused(objective):
    logits, labels = torch.randn(2, 4, VOCAB), torch.zeros(2, 4, dtype=torch.long)
    logprobs, top = F.log_softmax(torch.randn(2, 4, VOCAB), -1).topk(3, -1)
    with pytest.raises(ValueError, match="needs the teacher's full next-token distribution") as info:
        cached_terms(objective, logits, labels, logprobs, top, 1.0)
    assert "\n" not in str(info.value)


def test_a_temperature_other_than_the_caches_is_refused():
    with pytest.raises(ValueError, match="differs from the teacher cache's"):
        check_cached_objective(TokenKL(temperature=2.0), 1.0)


def test_composite_keeps_scales_and_computes_cross_entropy_as_usual():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, VOCAB), torch.randn(2, 5, VOCAB)
    labels = torch.randint(0, VOCAB, (2, 5))
    labels[1, 3:] = IGNORE_INDEX
    logprobs, top = F.log_softmax(teacher, -1).topk(VOCAB, -1)
    objective = Composite([TokenKL(weight=0.5), NextTokenCE(weight=1.0)], scale=[1.0, 2.0])
    terms = {t.name: t for t in cached_terms(objective, student, labels, logprobs, top, 1.0)}
    counted = labels != IGNORE_INDEX
    expected_ce = F.cross_entropy(student[counted], labels[counted])
    torch.testing.assert_close(terms["ce"].value, expected_ce)
    torch.testing.assert_close(terms["fkl"].value, forward_kl(student, teacher, labels=labels), atol=1e-6, rtol=1e-5)
    assert (terms["fkl"].weight, terms["ce"].weight) == (0.5, 2.0)


def test_corpus_rows_line_up_with_batch_index_and_record_the_tokenizer(tmp_path):
    from kdlight.data.code_corpus import PythonSourceCorpus

    data = PythonSourceCorpus(batch_size=4, max_files=4, max_length=32)
    data.setup("fit")
    torch.manual_seed(0)
    teacher = CausalTransformer(data.vocab_size, d_model=16, depth=1, heads=2, max_length=32)
    inputs = data.train_inputs()
    cache = open_topk_cache(tmp_path, 4, teacher, inputs, data.pad_id, data.data_record(), batch_size=64)
    assert cache.manifest["tokenizer"]["vocab_sha256"] == data.data_record()["tokenizer"]["vocab_sha256"]
    batch = next(iter(data.train_dataloader()))  # shuffled: rows of train_inputs() by "index"
    assert len(cache) == len(inputs) and not torch.equal(batch["index"], torch.arange(4))
    logprobs, top = cache.lookup(batch["index"])
    with torch.no_grad():
        reference = F.log_softmax(teacher(batch["inputs"]), dim=-1)
    torch.testing.assert_close(logprobs, reference.gather(-1, top), atol=2e-2, rtol=0)
    torch.testing.assert_close(logprobs, reference.topk(4, -1).values, atol=2e-2, rtol=0)


def test_auto_location(tmp_path, monkeypatch):
    assert cache_root("auto", str(tmp_path / "runs" / "teacher.ckpt")) == tmp_path / "runs" / "lm_topk_cache"
    monkeypatch.setenv("KDLIGHT_CACHE_DIR", str(tmp_path / "shared"))
    assert cache_root("auto") == tmp_path / "shared" / "lm_topk"
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
