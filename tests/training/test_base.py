"""kdlight.training.base: training-log arithmetic."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from kdlight.training.base import accuracy_and_macro_f1, confusion_counts


def test_confusion_counts_match_sklearn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 7, (500,), generator=g)
    predicted = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, 7, (500,), generator=g))
    counts = confusion_counts(target, predicted, num_classes=7)
    expected = confusion_matrix(target.numpy(), predicted.numpy(), labels=list(range(7)))
    assert counts.dtype == torch.float32 and np.array_equal(counts.numpy(), expected)
    accuracy, f1 = accuracy_and_macro_f1(counts.double())
    assert abs(float(accuracy) - float((target == predicted).double().mean())) < 1e-7
    assert abs(float(f1) - f1_score(target.numpy(), predicted.numpy(), average="macro")) < 1e-6


def test_confusion_counts_leave_absent_classes_empty():
    counts = confusion_counts(torch.tensor([0, 0, 2]), torch.tensor([0, 2, 2]), num_classes=4)
    assert counts.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
