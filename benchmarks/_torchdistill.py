"""The peer: Hinton KD through torchdistill's ``DistillationBox``, the way its examples train.

torchdistill is an optional benchmark dependency (``pip install kd-lightning[bench]``); this
module imports it lazily, so the rest of the benchmarks run without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, RandomSampler
from torchvision.transforms.functional import to_tensor


def available() -> bool:
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return False
    return True


class PerSampleImages(Dataset):
    """uint8 images served one by one as PIL images through ``ToTensor``, as ``torchvision.datasets.FashionMNIST``
    does (``Image.fromarray(..., mode="L")`` then the transform): the input pipeline torchdistill's examples use."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images[:, 0].numpy()
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(Image.fromarray(self.images[index], mode="L")), self.labels[index]


def hinton_kd_config(
    epochs: int, batch_size: int, temperature: float, alpha: float, optimizer: dict[str, Any]
) -> dict[str, Any]:
    """torchdistill's train config for ``(1 − α)·CE + α·T²·KL``: its ``KDLoss`` calls the CE weight ``alpha``."""
    kd = {
        "student_module_path": ".",
        "student_module_io": "output",
        "teacher_module_path": ".",
        "teacher_module_io": "output",
        "temperature": temperature,
        "alpha": 1.0 - alpha,
        "beta": alpha,
        "reduction": "batchmean",
    }
    model = {"forward_proc": "forward_batch_only", "sequential": [], "forward_hook": {"input": [], "output": []}}
    return {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch_size, "num_workers": 0, "drop_last": False},
        },
        "teacher": {**model, "requires_grad": False},
        "student": {**model, "requires_grad": True},
        "optimizer": {"key": optimizer["key"], "kwargs": dict(optimizer["kwargs"])},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}},
        },
    }


def distill_epochs(
    teacher: nn.Module, student: nn.Module, dataset: Dataset, config: dict[str, Any]
) -> Iterator[Callable[..., None]]:
    """One callable per epoch, each training the student for one epoch (the loop of torchdistill's examples)."""
    from torchdistill.core.distillation import get_distillation_box

    device = torch.device("cpu")
    box = get_distillation_box(teacher.eval(), student, {"train": dataset}, config, device, None, False, 1.0)

    def epoch(index: int, clock: Any = None) -> None:
        box.pre_epoch_process(epoch=index)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            if clock is not None:
                clock.step()
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()

    for index in range(config["num_epochs"]):
        yield functools.partial(epoch, index)
