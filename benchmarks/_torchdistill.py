"""The peer: Hinton KD through torchdistill's ``DistillationBox``, the way its examples train.

torchdistill is an optional benchmark dependency (``pip install kd-lightning[bench]``); this
module imports it lazily, so the rest of the benchmarks run without it.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, RandomSampler
from torchvision import transforms

LOG_FREQ = 100  # train.log_freq of torchdistill's sample configs


def available() -> bool:
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return False
    return True


class PerSampleImages(Dataset):
    """``torchvision.datasets.FashionMNIST``'s ``__getitem__`` over given uint8 images (a subset as easily as all).

    Per sample, as torchvision serves it: index the ``[N, H, W]`` tensor, ``Image.fromarray(..., mode="L")``,
    then the transform of torchdistill's sample configs, ``ToTensor`` then ``Normalize``. The
    ``Normalize`` statistics are the identity (mean 0, std 1): it costs what the usual per-sample
    normalisation costs while keeping the [0, 1] inputs the benchmark's teacher was trained on.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.data, self.targets = images[:, 0], labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.0,), (1.0,))])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.data[index], int(self.targets[index])
        return self.transform(Image.fromarray(image.numpy(), mode="L")), target


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
            # The sample configs' loader, but no worker processes: they would load on cores that the
            # other configurations, held to --threads, do not get (DataLoader's default is 0 as well).
            "kwargs": {"batch_size": batch_size, "num_workers": 0, "pin_memory": True, "drop_last": False},
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
    teacher: nn.Module, student: nn.Module, dataset: Dataset, config: dict[str, Any], data_seconds: list[float]
) -> Iterator[Callable[..., None]]:
    """One callable per epoch, each training the student for one epoch as torchdistill's example does.

    The loop of ``train_one_epoch`` in torchdistill's ``examples/torchvision/image_classification.py``:
    its ``MetricLogger`` around the loader, the loss read every step for the logger and the NaN
    check, images per second. Appends each epoch's time spent waiting for the loader to ``data_seconds``.
    """
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.misc.log import MetricLogger, SmoothedValue

    device = torch.device("cpu")
    with warnings.catch_warnings():  # pin_memory without an accelerator: ignored, as on the users' CPU machines
        warnings.simplefilter("ignore")
        box = get_distillation_box(teacher.eval(), student, {"train": dataset}, config, device, None, False, 1.0)

    def epoch(index: int, clock: Any = None) -> None:
        box.pre_epoch_process(epoch=index)
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
        metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
        loader = _TimedLoader(box.train_data_loader)
        for sample_batch, targets, supp_dict in metric_logger.log_every(loader, LOG_FREQ, f"Epoch: [{index}]"):
            if clock is not None:
                clock.step()
            start_time = time.time()
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
            metric_logger.meters["img/s"].update(sample_batch.shape[0] / (time.time() - start_time))
            if torch.isnan(loss) or torch.isinf(loss):
                raise ValueError(f"The training loop was broken due to loss = {loss}")
        data_seconds.append(loader.seconds)
        box.post_epoch_process()

    for index in range(config["num_epochs"]):
        yield functools.partial(epoch, index)


class _TimedLoader:
    """A loader that adds up the time its iterator takes to hand out batches (the input pipeline's share)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader, self.seconds = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch
