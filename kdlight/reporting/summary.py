"""FitSummary: a one-screen summary of the best epoch when ``fit`` ends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["FitSummary", "run_directory"]

_EXPLAIN = "val/explain/"


#: |rank correlation - chance level| below which the summary flags a method as near chance
NEAR_CHANCE = 0.05


def run_directory(trainer: Trainer) -> str | None:
    """Where the first logger writes: the W&B run folder, a CSV/TensorBoard ``log_dir``, else the
    trainer's ``default_root_dir`` (no logger)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            if getattr(logger, "_experiment", None) is not None:
                return str(Path(logger.experiment.dir).parent)
            continue
        directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if directory:
            return str(Path(directory))
    return str(Path(trainer.default_root_dir)) if trainer.default_root_dir else None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class FitSummary(Callback):
    """Print (rank zero) a one-screen summary at the end of ``fit``.

    It names the best epoch by ``monitor`` (the checkpoint callback's ``monitor`` / ``mode`` when
    it has one, else ``val/acc`` / ``max``) and, at that epoch, the top-1 agreement with the teacher
    (``val/agreement``), the teacher's accuracy and, per explanation method, the rank correlation
    with its chance level. Explanation metrics come from the nearest epoch on which
    :class:`kdlight.explain.ExplanationAgreement` ran (every N epochs and after the last one of
    ``fit``, also when ``fit`` stops early), and the summary names that epoch.
    Then the best checkpoint and the run directory.

    After ``fit``, :attr:`summary` holds the numbers as a dict and :attr:`text` the printed text.

    Args:
        monitor: the metric that picks the best epoch (default: the checkpoint callback's).
        mode: ``max`` or ``min`` (default: the checkpoint callback's, else ``max``).
        verbose: print the summary (to ``sys.stdout``); False only records it.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, verbose: bool = True) -> None:
        super().__init__()
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.history: dict[int, dict[str, float]] = {}
        self.explained: dict[int, dict[str, float]] = {}
        self._seen_results: dict[int, int] = {}
        self.summary: dict[str, Any] = {}
        self.text = ""

    # -- recording -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.history, self.explained = {}, {}
        self._seen_results = {}
        self._fresh_explanations(trainer)  # results left from an earlier run are not this fit's
        self.summary, self.text = {}, ""

    def _fresh_explanations(self, trainer: Trainer) -> list[tuple[int | None, dict[str, float]]]:
        """``(epoch, scalars)`` of each ExplanationAgreement callback that ran since the last look;
        ``epoch`` is the callback's ``last_epoch`` (``None`` if it does not say)."""
        fresh: list[tuple[int | None, dict[str, float]]] = []
        for callback in trainer.callbacks:
            results = getattr(callback, "last_results", None)
            if not isinstance(results, dict) or not hasattr(callback, "methods"):
                continue
            if results and self._seen_results.get(id(callback)) != id(results):
                self._seen_results[id(callback)] = id(results)
                epoch = getattr(callback, "last_epoch", None)
                fresh.append(
                    (
                        epoch if isinstance(epoch, int) else None,
                        {k: v for k, v in results.items() if k.startswith(_EXPLAIN)},
                    )
                )
        return fresh

    def _record_explanations(self, trainer: Trainer, default_epoch: int) -> None:
        for epoch, results in self._fresh_explanations(trainer):
            if results:
                self.explained.setdefault(default_epoch if epoch is None else epoch, {}).update(results)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        epoch = trainer.current_epoch
        values = {
            k: v
            for k, v in ((k, _float(v)) for k, v in trainer.callback_metrics.items())
            if v is not None and k.startswith("val/") and not k.startswith(_EXPLAIN)
        }
        self.history[epoch] = values
        self._record_explanations(trainer, epoch)

    # -- the summary ---------------------------------------------------------------------------
    def _monitor(self, trainer: Trainer) -> tuple[str, str]:
        checkpoint = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        monitor = self.monitor or (checkpoint.monitor if checkpoint is not None and checkpoint.monitor else "val/acc")
        mode = self.mode or (checkpoint.mode if checkpoint is not None and checkpoint.monitor == monitor else "max")
        return monitor, mode

    def summarize(self, trainer: Trainer) -> dict[str, Any]:
        """The summary numbers (also what is printed)."""
        monitor, mode = self._monitor(trainer)
        out: dict[str, Any] = {"monitor": monitor, "mode": mode, "epochs_run": len(self.history)}
        scored = {e: v[monitor] for e, v in self.history.items() if monitor in v}
        if scored:
            pick = max if mode == "max" else min
            best_value = pick(scored.values())
            best_epoch = min(e for e, v in scored.items() if v == best_value)
            at_best = self.history[best_epoch]
            out.update(best_epoch=best_epoch, best_value=best_value)
            for key in ("val/acc", "val/agreement", "val/teacher_acc", "val/kl"):
                if key in at_best:
                    out[key] = at_best[key]
            if self.explained:
                epoch = min(self.explained, key=lambda e: (abs(e - best_epoch), -e))
                out["explain_epoch"] = epoch
                out["explain"] = {
                    k[len(_EXPLAIN) :]: v
                    for k, v in self.explained[epoch].items()
                    if k.endswith("/rank_correlation") or k.endswith("/chance_rank_correlation")
                }
        checkpoint = trainer.checkpoint_callback
        out["best_checkpoint"] = getattr(checkpoint, "best_model_path", "") or None
        out["run_dir"] = run_directory(trainer)
        return out

    def format(self, summary: dict[str, Any]) -> str:
        """The summary as a few aligned lines."""
        lines = ["", "-- kdlight fit summary " + "-" * 45]
        row = lambda name, value: lines.append(f"{name:<22}{value}")  # noqa: E731
        monitor = summary["monitor"]
        if "best_epoch" not in summary:
            row(f"best {monitor}", f"n/a (no validation epoch logged {monitor})")
        else:
            row(
                f"best {monitor}",
                f"{summary['best_value']:.4f} at epoch {summary['best_epoch']} "
                f"(of {summary['epochs_run']} validation epochs)",
            )
            if monitor != "val/acc" and "val/acc" in summary:
                row("val/acc", f"{summary['val/acc']:.4f}")
            if "val/agreement" in summary:
                row("val/agreement", f"{summary['val/agreement']:.4f}  top-1 agreement with the teacher")
            if "val/teacher_acc" in summary:
                row("teacher acc", f"{summary['val/teacher_acc']:.4f}  val/teacher_acc")
            explain = summary.get("explain") or {}
            methods = sorted(
                k.rsplit("/", 1)[0] for k in explain if k.endswith("/rank_correlation") and "/chance_" not in k
            )
            if methods:
                where = "" if summary["explain_epoch"] == summary["best_epoch"] else ", the nearest explained one"
                lines.append(
                    f"explanations at epoch {summary['explain_epoch']}{where}: rank correlation with the teacher (chance level)"
                )
                width = max(20, *(len(m) + 2 for m in methods))
                for method in methods:
                    value, chance = (
                        explain[f"{method}/rank_correlation"],
                        explain.get(f"{method}/chance_rank_correlation"),
                    )
                    chance_text = f"  ({chance:.3f})" if chance is not None else ""
                    near = "  <- near chance" if chance is not None and abs(value - chance) < NEAR_CHANCE else ""
                    lines.append(f"  {method:<{width}}{value:.3f}{chance_text}{near}")
                lines.append(
                    "  (chance level: a freshly initialised student; near it = no more agreement than that; see the README)"
                )
        row("best checkpoint", summary.get("best_checkpoint") or "none saved")
        row("run dir", summary.get("run_dir") or "none")
        lines.append("-" * 68)
        return "\n".join(lines)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # an explanation of the final weights made after the last validation (fit stopped early)
        self._record_explanations(trainer, max(self.history, default=0))
        self.summary = self.summarize(trainer)
        self.text = self.format(self.summary)
        self._print(self.text)

    @rank_zero_only
    def _print(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stdout, flush=True)
