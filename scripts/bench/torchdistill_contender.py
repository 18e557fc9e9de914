"""Section 1's torchdistill contender: the same KD workload trained by torchdistill's own machinery.

The teacher, student, training tensors, batch size, loss (``KDLoss``: ``0.1 * CE + 0.9 * T^2 * KL``,
T=4) and optimizer (Adam 3e-3) are those of the other section-1 contenders; torchdistill builds the
``DistillationBox`` (data loader with a ``RandomSampler`` over an in-memory ``TensorDataset``,
frozen teacher, optimizer, ``WeightedSumLoss`` of one ``KDLoss``) from a YAML config, as its users
do. Two loops drive the box: ``example`` is ``train_one_epoch`` of torchdistill's
``examples/torchvision/image_classification.py`` (``MetricLogger.log_every``, ``loss.item()``, the
NaN check) and ``box`` only calls the box (``forward_process`` + ``post_forward_process``).

torchdistill runs in this interpreter when importable here; otherwise in the interpreter named by
``KDLIGHT_TORCHDISTILL_PYTHON`` (e.g. a venv with the same torch build plus torchdistill), as a
worker subprocess that stays up for the whole run; otherwise the contender is skipped. Nothing is
downloaded: models and data are built in memory by ``bench.workloads``.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

#: section-1 variant name -> the loop that drives torchdistill's box
LOOPS = {"torchdistill": "example", "torchdistill_box": "box"}
ENV_PYTHON = "KDLIGHT_TORCHDISTILL_PYTHON"
_SCRIPTS = Path(__file__).resolve().parents[1]
_REPO = _SCRIPTS.parent

#: the train config: the KD sample configs of torchdistill (configs/sample/cifar10/kd/*.yaml), with
#: this benchmark's sampler, batch size, optimizer and loss weights
TRAIN_CONFIG = """
train:
  num_epochs: {epochs}
  log_freq: 100
  train_data_loader:
    dataset_id: 'train'
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.RandomSampler'
      kwargs:
    kwargs:
      batch_size: {batch_size}
      num_workers: 0
      drop_last: False
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    wrapper:
    requires_grad: False
  student:
    forward_proc: 'forward_batch_only'
    adaptations:
    sequential: []
    wrapper:
    requires_grad: True
    frozen_modules: []
  optimizer:
    key: 'Adam'
    kwargs:
      lr: 0.003
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: 4.0
              alpha: 0.1
              reduction: 'batchmean'
          weight: 1.0
"""


def import_torchdistill():
    """``torchdistill``, imported. A torchvision CUDA build beside a CPU-only torch cannot load its
    compiled ops and fails at import in ``torchvision._meta_registrations`` (fake kernels of nms,
    roi_align, ...); none of them is used here, so that module is then skipped and the import retried."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        import types

        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchdistill
    import torchdistill.core.distillation  # noqa: F401  (imports torchvision's models)

    return torchdistill


def fit(wl, loop: str, epochs: int, device: str) -> float:
    """Train samples/s of one torchdistill fit of ``epochs`` epochs (the first one untimed)."""
    import_torchdistill()
    from torch.utils.data import TensorDataset
    from torchdistill.common import yaml_util
    from torchdistill.core.distillation import get_distillation_box

    from bench.common import now, sync
    from bench.workloads import samples_per_s

    teacher, student = (m.to(device) for m in wl.models())
    teacher.eval()  # as in the other contenders; torchdistill's box freezes the teacher but leaves its mode alone
    x, y = wl.datamodule().split_tensors("train")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(TRAIN_CONFIG.format(epochs=epochs, batch_size=wl.batch_size))
        f.flush()
        train_config = yaml_util.load_yaml_file(f.name)["train"]
    box = get_distillation_box(
        teacher, student, {"train": TensorDataset(x, y)}, train_config, torch.device(device), None, False, 1
    )
    one_epoch = _example_epoch if loop == "example" else _box_epoch
    stamps = []
    for epoch in range(box.num_epochs):
        sync(device)
        stamps.append(now())
        box.pre_epoch_process(epoch=epoch)
        one_epoch(box, torch.device(device), epoch, train_config["log_freq"])
        box.post_epoch_process()
    sync(device)
    stamps.append(now())
    box.clean_modules()
    return samples_per_s(stamps, len(y))


def _box_epoch(box, device, epoch: int, log_freq: int) -> None:
    for sample_batch, targets, supp_dict in box.train_data_loader:
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)


def _example_epoch(box, device, epoch: int, log_freq: int) -> None:
    """``train_one_epoch`` of torchdistill's examples/torchvision/image_classification.py."""
    from torchdistill.common.main_util import is_main_process
    from torchdistill.misc.log import MetricLogger, SmoothedValue

    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
    header = f"Epoch: [{epoch}]"
    for sample_batch, targets, supp_dict in metric_logger.log_every(box.train_data_loader, log_freq, header):
        start_time = time.time()
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        batch_size = sample_batch.shape[0]
        metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
        metric_logger.meters["img/s"].update(batch_size / (time.time() - start_time))
        if (torch.isnan(loss) or torch.isinf(loss)) and is_main_process():
            raise ValueError(f"The training loop was broken due to loss = {loss}")


class Worker:
    """A torchdistill interpreter kept running: one JSON request per line in, one reply per line out."""

    def __init__(self, python: str, threads: int) -> None:
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", str(threads), json.dumps([p for p in sys.path if p])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.close)
        self.version = self.request({"op": "version"})

    def request(self, message: dict):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torchdistill worker exited (code {self.proc.wait()}); its error is on stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torchdistill worker: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class Contender:
    """Where torchdistill runs: ``fit(wl, variant, epochs)`` -> train samples/s."""

    def __init__(self, cfg) -> None:
        self.device = cfg.device
        self.worker: Worker | None = None
        self.skipped: str | None = None
        try:
            self.version = import_torchdistill().__version__
            self.where = f"torchdistill {self.version} in this interpreter"
            return
        except ImportError:
            pass
        python = os.environ.get(ENV_PYTHON)
        if not python:
            self.skipped = f"torchdistill rows skipped: torchdistill is not importable here and {ENV_PYTHON} is unset"
            return
        try:
            self.worker = Worker(python, cfg.threads)
        except (OSError, RuntimeError) as exc:
            self.skipped = f"torchdistill rows skipped: {ENV_PYTHON}={python} failed: {exc}"
            return
        self.version = self.worker.version["torchdistill"]
        self.where = (
            f"torchdistill {self.version} in a worker process of {python} (torch {self.worker.version['torch']}, "
            f"{self.worker.version['threads']} thread(s))"
        )

    def fit(self, wl, variant: str, epochs: int) -> float:
        if self.worker is None:
            return fit(wl, LOOPS[variant], epochs, self.device)
        workload = dataclasses.asdict(wl)
        return self.worker.request(
            {"op": "fit", "workload": workload, "loop": LOOPS[variant], "epochs": epochs, "device": self.device}
        )


def _serve(threads: int, parent_path: list[str]) -> None:
    """Worker main: answer requests from stdin until it closes; anything printed goes to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    # this repo and the bench package first; the parent's packages (Lightning, sklearn) after this venv's own
    sys.path[:0] = [str(_REPO), str(_SCRIPTS)]
    sys.path += [p for p in parent_path if p not in sys.path]
    torch.set_num_threads(threads)
    from bench.workloads import Workload

    for line in sys.stdin:
        message = json.loads(line)
        try:
            if message["op"] == "version":
                result = {
                    "torchdistill": import_torchdistill().__version__,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                }
            else:
                spec = message["workload"]
                wl = Workload(**{**spec, "variants": tuple(spec["variants"])})
                result = fit(wl, message["loop"], message["epochs"], message["device"])
            reply = {"result": result}
        except Exception as exc:  # one line back to the parent, which raises it (the traceback: stderr)
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    import warnings

    warnings.filterwarnings("ignore")
    _serve(int(sys.argv[2]), json.loads(sys.argv[3]))
