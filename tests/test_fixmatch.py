"""FixMatch: the unlabeled term, its confidence mask, the weak and strong views, and the module's training data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data import DigitsDataModule
from kd_lightning.data.batch import IGNORE_LABEL
from kd_lightning.data.transforms import (
    autocontrast,
    crop_at,
    cutout,
    equalize,
    posterize,
    solarize,
    strong_augment,
    weak_augment,
)
from kd_lightning.errors import ConfigError
from kd_lightning.modules import FixMatchModule
from kd_lightning.modules.fixmatch import confident_pseudo_labels, fixmatch_unlabeled_loss
from tests.conftest import make_trainer

STUDENT = {"name": "small_cnn", "kwargs": {"width": 4}}


def test_unlabeled_loss_by_hand() -> None:
    # Sample 0: softmax of (ln 99, 0, 0) puts 99/101 = 0.980 on class 0 (confident); sample 1: 0.5/0.5 (not).
    weak = torch.tensor([[math.log(99.0), 0.0, 0.0], [1.0, 1.0, -30.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 0.0, 0.0], [5.0, -5.0, 0.0]], requires_grad=True)
    loss, mask = fixmatch_unlabeled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [True, False]
    # Cross-entropy of uniform logits over 3 classes is ln 3, averaged over both samples (mean over all of μB).
    assert loss.item() == pytest.approx(math.log(3.0) / 2, rel=1e-6)
    loss.backward()
    assert weak.grad is None  # the pseudo-label is a constant
    assert strong.grad is not None and torch.all(strong.grad[1] == 0)
    expected = (F.softmax(strong[0].detach(), 0) - torch.tensor([1.0, 0.0, 0.0])) / 2
    assert torch.allclose(strong.grad[0], expected)


def test_unconfident_samples_do_not_change_the_loss() -> None:
    weak = torch.tensor([[4.0, 0.0], [0.1, 0.0], [0.0, 0.2]])
    strong = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    loss, mask = fixmatch_unlabeled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [True, False, False]
    changed = strong.clone()
    changed[1:] = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])
    assert fixmatch_unlabeled_loss(weak, changed, threshold=0.95)[0].item() == pytest.approx(loss.item())
    labels, at_half = confident_pseudo_labels(weak, threshold=0.5)
    assert labels.tolist() == [0, 0, 1] and at_half.tolist() == [True, True, True]


def test_pointwise_ops_by_hand() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).reshape(1, 1, 2, 2)
    assert posterize(x, torch.tensor([1])).flatten().tolist() == pytest.approx([0.0, 0.0, 128 / 255, 128 / 255])
    assert solarize(x, torch.tensor([0.5])).flatten().tolist() == [0.0, 0.25, 0.5, 0.0]
    dim = torch.tensor([0.2, 0.3, 0.4, 0.6]).reshape(1, 1, 2, 2)
    assert autocontrast(dim).flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    # Equalisation: each pixel becomes the share of pixels at or below its grey level.
    assert equalize(torch.tensor([0.0, 0.0, 0.5, 1.0]).reshape(1, 1, 2, 2)).flatten().tolist() == [0.5, 0.5, 0.75, 1.0]


def test_cutout_fills_one_square_within_half_the_side() -> None:
    images = torch.zeros(64, 1, 28, 28)
    out = cutout(images, max_fraction=0.5, fill=0.5, generator=torch.Generator().manual_seed(0))
    filled = out == 0.5
    assert torch.all(out[~filled] == 0)
    for mask in filled[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        # A rectangle (a square cut by the border) of side at most 14 px.
        assert 1 <= len(rows) <= 14 and 1 <= len(cols) <= 14
        assert int(mask.sum()) == len(rows) * len(cols)


def test_weak_view_is_a_flip_and_a_translation_of_at_most_four_pixels() -> None:
    images = torch.zeros(32, 1, 28, 28)
    images[:, :, 6:22, 6:22] = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    out = weak_augment(images, generator=torch.Generator().manual_seed(2))
    shifted = 0
    for image, view in zip(images, out, strict=True):
        candidates = [
            crop_at(candidate[None], 4, torch.tensor([dy]), torch.tensor([dx]))[0]
            for candidate in (image, image.flip(-1))
            for dy in range(9)
            for dx in range(9)
        ]
        assert any(torch.equal(view, c) for c in candidates)
        shifted += not torch.equal(view, image)
    assert shifted > 16


def test_strong_view_differs_from_the_weak_view_and_holds_a_cutout() -> None:
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    weak = weak_augment(images, generator=torch.Generator().manual_seed(4))
    strong = strong_augment(images, generator=torch.Generator().manual_seed(4))
    # The same flip and translation, then RandAugment and Cutout on top.
    assert strong.shape == images.shape and 0.0 <= strong.min() and strong.max() <= 1.0
    differs = (strong - weak).abs().flatten(1).amax(1) > 1e-4
    assert differs.float().mean() > 0.9
    assert torch.all((strong == 0.5).flatten(1).any(1))


def _digits(**kwargs) -> DigitsDataModule:
    data = DigitsDataModule(batch_size=32, val_fraction=0.0, samples_per_class=5, seed=3, **kwargs)
    data.setup("fit")
    return data


def test_module_keeps_only_the_labelled_images_and_trains() -> None:
    torch.manual_seed(0)
    data = _digits(unlabeled="rest")
    module = FixMatchModule(STUDENT, num_classes=10, labeled_batch_size=8)
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, data)
    assert module.labeled_images is not None and module.labeled_targets is not None
    assert len(module.labeled_targets) == 50 and torch.bincount(module.labeled_targets).tolist() == [5] * 10
    known = data.train_set.labels != IGNORE_LABEL
    assert torch.equal(module.labeled_images, data.train_set.images[known])
    assert trainer.global_step == 3
    assert 0.0 <= float(trainer.callback_metrics["train/mask_rate"]) <= 1.0


@pytest.mark.parametrize(
    ("options", "needle"), [({}, "unlabeled: rest"), ({"unlabeled": "rest", "hflip": True}, "hflip: false")]
)
def test_module_refuses_data_it_cannot_use(options: dict, needle: str) -> None:
    module = FixMatchModule(STUDENT, num_classes=10)
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    with pytest.raises(ConfigError, match=needle):
        trainer.fit(module, _digits(**options))
