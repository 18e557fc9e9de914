"""Logger rows (CSV or W&B history) into one tidy frame of epoch-level and step-level metrics."""

from __future__ import annotations

import pandas as pd

__all__ = ["INDEX_COLUMNS", "metric_columns", "tidy_metrics"]

#: columns of :attr:`kdlight.analysis.Run.metrics` that are not metrics
INDEX_COLUMNS = ("level", "epoch", "step")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a metrics frame (everything but ``level``, ``epoch``, ``step``)."""
    return [c for c in frame.columns if c not in INDEX_COLUMNS]


def _levels(raw: pd.DataFrame, metrics: list[str]) -> dict[str, tuple[str, str]]:
    """``column -> (level, name)``.

    ``X_epoch`` is the epoch-level ``X``; ``X_step`` the step-level ``X`` (Lightning's names for
    ``on_step=True, on_epoch=True``). A plain ``X`` with an ``X_epoch`` twin is step-level (kdlight
    logs step values as ``train/loss`` and epoch means as ``train/loss_epoch``). Any other column is
    step-level when it is logged in the same rows as step-level columns or more than once per
    epoch, else epoch-level.
    """
    columns = set(raw.columns)
    out: dict[str, tuple[str, str]] = {}
    for col in metrics:
        if col.endswith("_epoch") and len(col) > 6:
            out[col] = ("epoch", col[:-6])
        elif col.endswith("_step") and len(col) > 5 and col[:-5] not in columns:
            out[col] = ("step", col[:-5])
    twins = {name for level, name in out.values() if level == "epoch"}
    for col in metrics:
        if col not in out and col in twins:
            out[col] = ("step", col)
    known_step = [c for c, (level, _) in out.items() if level == "step"]
    step_rows = raw[known_step].notna().any(axis=1) if known_step else pd.Series(False, index=raw.index)
    for col in metrics:
        if col in out:
            continue
        present = raw[col].notna()
        per_epoch = raw.loc[present].groupby("epoch").size().max() if present.any() else 0
        is_step = bool((present & step_rows).any()) or per_epoch > 1
        out[col] = ("step" if is_step else "epoch", col)
    return out


def tidy_metrics(raw: pd.DataFrame) -> pd.DataFrame:
    """Logger rows (``epoch``, ``step`` and metric columns, NaN where not logged) -> the tidy frame
    of :attr:`kdlight.analysis.Run.metrics`: one row per epoch for epoch-level metrics, one per
    step for the rest."""
    if "epoch" not in raw.columns or "step" not in raw.columns:
        raise ValueError(f"metric rows need 'epoch' and 'step' columns, got {list(raw.columns)}")
    raw = raw.copy()
    raw["epoch"] = raw["epoch"].ffill().bfill()
    raw = raw[raw["epoch"].notna() & raw["step"].notna()]
    metrics = [c for c in raw.columns if c not in ("epoch", "step")]
    for col in metrics:
        raw[col] = pd.to_numeric(raw[col], errors="coerce")
    metrics = [c for c in metrics if raw[c].notna().any()]
    levels = _levels(raw, metrics)
    parts = []
    for level in ("epoch", "step"):
        cols = [c for c in metrics if levels[c][0] == level]
        if not cols:
            continue
        rows = raw[raw[cols].notna().any(axis=1)]
        other = "step" if level == "epoch" else "epoch"
        grouped = rows.groupby(level, sort=True)
        part = grouped[cols].last()  # last non-null value of each column
        part[other] = grouped[other].max()
        part = part.reset_index().rename(columns={c: levels[c][1] for c in cols})
        part.insert(0, "level", level)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(INDEX_COLUMNS))
    frame = pd.concat(parts, ignore_index=True, sort=False)
    names = sorted(c for c in frame.columns if c not in INDEX_COLUMNS)
    frame = frame[[*INDEX_COLUMNS, *names]]
    for col in ("epoch", "step"):
        frame[col] = frame[col].astype("int64")
    return frame
