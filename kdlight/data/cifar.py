"""CIFAR-10 / CIFAR-100 from the standard python-pickle archives in a local directory.

kdlight never downloads data: get ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and point ``data_dir`` at the extracted
folder (``cifar-10-batches-py`` / ``cifar-100-python``) or at its parent.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from kdlight.core.modality import Image
from kdlight.data.base import ArrayDataModule, stratified_split

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip


class UnsafePickleError(pickle.UnpicklingError):
    """A CIFAR file names a Python global outside the python-version format (it could run code)."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, limited to latin-1."""
    try:
        latin1 = codecs.lookup(encoding).name == "iso8859-1"
    except (LookupError, TypeError):
        latin1 = False
    if not latin1 or not isinstance(text, str):
        raise UnsafePickleError(
            f"it calls _codecs.encode with encoding {encoding!r}, which the CIFAR python-version format never does"
        )
    return text.encode("latin-1")


def _numpy_global(module: str, name: str) -> Any:
    """``module.name`` from numpy 2's ``numpy._core`` (or numpy 1's ``numpy.core``), whichever exists."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


# The globals the official "python version" files need (numpy arrays inside dicts of bytes/lists/ints),
# written by numpy 1 (numpy.core) or numpy 2 (numpy._core), with any pickle protocol.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("_codecs", "encode"): lambda: _latin1_encode,  # bytes in protocols 0-2
}


class CIFARUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR "python version" files that refuses every other global.

    A plain ``pickle.load`` runs whatever code a planted file names; this one only builds numpy
    arrays, bytes, lists, dicts and numbers, and raises :class:`UnsafePickleError` otherwise.
    """

    def __init__(self, file: Any, path: Path | str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        resolve = _CIFAR_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to load {self.path}: it references {module}.{name}, which the CIFAR python-version "
                "format never contains (a tampered or foreign file); replace it with the original from "
                "https://www.cs.toronto.edu/~kriz/cifar.html"
            )
        return resolve()


def load_cifar_pickle(path: Path | str) -> Any:
    """Read one CIFAR "python version" file (``encoding="bytes"``, as the official loader does)
    with :class:`CIFARUnpickler`, so a tampered file cannot run code."""
    with open(path, "rb") as f:
        try:
            return CIFARUnpickler(f, path, encoding="bytes").load()
        except UnsafePickleError as err:
            if str(err).startswith("refusing to load"):
                raise
            raise UnsafePickleError(f"refusing to load {path}: {err}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise pickle.UnpicklingError(
                f"cannot read {path} ({reason}): it is truncated or not a CIFAR python-version file; "
                "re-extract it from the archive at https://www.cs.toronto.edu/~kriz/cifar.html"
            ) from None


def random_crop_flip(img: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random ``H x W`` crop of ``img`` ([C, H, W]) zero-padded by ``padding`` pixels on each side,
    then a horizontal flip with probability 1/2 (torchvision's ``RandomCrop(32, padding=4)`` +
    ``RandomHorizontalFlip()``, with padding applied to the un-normalized image)."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (padding, padding, padding, padding))
    dy, dx = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    out = padded[..., dy : dy + h, dx : dx + w]
    if torch.rand((), generator=generator).item() < 0.5:
        out = out.flip(-1)
    return out.contiguous()


class CIFARDataset(Dataset):
    """uint8 ``[N, 3, 32, 32]`` images -> normalized float32, optionally randomly augmented.

    Augmentation draws from the dataset's own generator: seeded from ``seed`` in the main process,
    and from each DataLoader worker's seed inside a worker (so workers do not repeat each other).
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, augment: bool, seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.augment, self.seed = augment, seed
        self._gen: torch.Generator | None = None
        self._gen_owner: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_gen"], state["_gen_owner"] = None, None
        return state

    def _generator(self) -> torch.Generator:
        info = get_worker_info()
        owner = -1 if info is None else info.id
        if self._gen is None or self._gen_owner != owner:
            seed = self.seed if info is None else info.seed
            self._gen = torch.Generator().manual_seed(seed % (2**63))
            self._gen_owner = owner
        return self._gen

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.images[i].float().div_(255.0)
        if self.augment:
            img = random_crop_flip(img, padding=4, generator=self._generator())
        return (img - self.mean) / self.std, self.labels[i]


class _CIFARDataModule(ArrayDataModule):
    """Shared CIFAR logic; see :class:`CIFAR10DataModule` / :class:`CIFAR100DataModule`."""

    dataset_name: str
    folder: str
    archive: str
    train_files: list[str]
    test_files: list[str]
    label_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 0,
        val_fraction: float = 0.0,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        self.data_dir = str(data_dir)
        self.augment = augment
        self.augmented = bool(augment)
        self.input_shape = (3, 32, 32)
        self.modality = Image()
        self.num_classes = len(self.class_list)
        self.class_names = list(self.class_list)
        self._mean = torch.tensor(self.mean)
        self._std = torch.tensor(self.std)

    def resolve_dir(self) -> Path:
        """The folder holding the pickle files: ``data_dir/<folder>`` or ``data_dir`` itself."""
        root = Path(self.data_dir).expanduser()
        files = self.train_files + self.test_files
        candidates = [root / self.folder, root]
        for cand in candidates:
            if all((cand / f).is_file() for f in files):
                return cand
        present = next((c for c in candidates if c.is_dir() and any((c / f).exists() for f in files)), None)
        missing = (
            ""
            if present is None
            else f" (in '{present}' these are missing: {[f for f in files if not (present / f).is_file()]})"
        )
        raise FileNotFoundError(
            f"{self.dataset_name} not found under data_dir='{root}'{missing}. Put the folder '{self.folder}' "
            f"containing {', '.join(files)} at '{root / self.folder}' (or pass data_dir pointing at that folder "
            f"itself): extract {self.archive} from https://www.cs.toronto.edu/~kriz/cifar.html. "
            "kdlight never downloads data."
        )

    def prepare_data(self) -> None:
        self.resolve_dir()  # fail early, with the message above, if the files are not there

    @staticmethod
    def _read(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
        d = load_cifar_pickle(path)
        if not isinstance(d, dict):
            raise ValueError(
                f"{path} holds a {type(d).__name__}, not the dict of a CIFAR python-version file; replace it with the original"
            )
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        missing = [k for k in ("data", label_key) if k not in d]
        if missing:
            raise ValueError(
                f"{path} has no {missing} entries (it has {sorted(map(str, d))}); replace it with the original CIFAR file"
            )
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, np.asarray(d[label_key], dtype=np.int64)

    def _read_all(self, folder: Path, files: list[str]) -> tuple[Tensor, Tensor]:
        parts = [self._read(folder / f, self.label_key) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y)

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        folder = self.resolve_dir()
        x, y = self._read_all(folder, self.train_files)
        x_test, y_test = self._read_all(folder, self.test_files)
        test_idx = np.arange(len(y_test))
        if self.val_fraction > 0:
            val_idx, train_idx = stratified_split(y, [self.val_fraction], self.seed)
            tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
            splits = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x_test, y_test)}
        else:
            train_idx, val_idx = np.arange(len(y)), test_idx
            splits = {"train": (x, y), "val": (x_test, y_test), "test": (x_test, y_test)}
        # train/val index the training files, test indexes the test file(s)
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        return splits

    def _model_inputs(self, x: Tensor) -> Tensor:
        """uint8 images -> float32 normalized with the dataset's per-channel mean/std (pixels, not token ids)."""
        return (x.float() / 255.0 - self._mean.view(-1, 1, 1)) / self._std.view(-1, 1, 1)

    def _make_dataset(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        augment = self.augment and split == "train"
        return CIFARDataset(x, y, self._mean, self._std, augment=augment, seed=self.seed)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (50000 train / 10000 test, ``[3, 32, 32]``, 10 classes) from ``cifar-10-batches-py``.

    Normalized with the CIFAR-10 per-channel mean/std. With ``augment=True`` training images get a
    random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip.
    ``val_fraction=0.0`` (default) validates on the test set, the protocol of RepDistiller and most
    KD papers; ``val_fraction > 0`` carves a stratified, unaugmented validation split out of the
    training set from ``seed`` instead. ``train_inputs()`` returns all 50000 training images as
    float32 (about 600 MB).
    """

    dataset_name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    class_list = CIFAR10_CLASSES


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (50000 train / 10000 test, ``[3, 32, 32]``, 100 fine labels) from ``cifar-100-python``.

    Same protocol as :class:`CIFAR10DataModule` (CIFAR-100 mean/std, crop+flip augmentation,
    ``val_fraction=0.0`` validates on the test set as in RepDistiller).
    """

    dataset_name = "CIFAR-100"
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    train_files = ["train"]
    test_files = ["test"]
    label_key = "fine_labels"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_list = CIFAR100_CLASSES
