"""Models that return a ModelOutput or a dict train, validate and are explained like tensor models."""

from __future__ import annotations

import lightning as L
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from kdlight.data import DigitsDataModule
from kdlight.explain import ExplanationAgreement
from kdlight.models import MLP
from kdlight.training import DistillationModule


class DictMLP(MLP):
    def forward(self, x):
        return {"logits": super().forward(x), "extra": torch.zeros(1)}


class OutputMLP(MLP):
    def forward(self, x):
        return SequenceClassifierOutput(logits=super().forward(x))


def test_a_fit_with_wrapped_outputs_is_explained_and_plain_models_stay_unhooked(tmp_path):
    teacher, student = OutputMLP(hidden=[16]), DictMLP(hidden=[8])
    plain = MLP(hidden=[8])
    module = DistillationModule(teacher, student, teacher_as_given=True)
    callback = ExplanationAgreement(methods=["saliency"], num_probes=8, every_n_epochs=1, log_images=False)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    x = torch.randn(3, 64)
    assert isinstance(teacher(x), torch.Tensor) and isinstance(student(x), torch.Tensor)
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["val/explain/saliency/cosine"].item()))
    other = DistillationModule(MLP(hidden=[16]), plain, teacher_as_given=True)
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, default_root_dir=tmp_path).fit(other, datamodule=DigitsDataModule(batch_size=16))  # fmt: skip
    assert not plain._forward_hooks  # tensor models keep nn.Module's fast call path
