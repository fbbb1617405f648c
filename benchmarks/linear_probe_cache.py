"""Linear-probe epoch time with and without the feature cache, and the accuracy of both.

    python -m benchmarks.linear_probe_cache [--backbone resnet18] [--per-class 50] [--epochs 3]

A randomly initialised torchvision ResNet-18 (11.2M parameters; no pretrained weights exist
offline) at Fashion-MNIST's 28×28: big enough that the backbone forward dominates an uncached
epoch, which is exactly the cost the cache removes. Random weights still give a usable probe.
"""

from __future__ import annotations

import argparse

import lightning as L

from benchmarks._common import EpochTimer, fashion_mnist, header, quiet, trainer
from kd_lightning.modules import FrozenBackboneFinetuner


def run(backbone: str, per_class: int, epochs: int, cached: bool, test_batches: int) -> tuple[list[float], float]:
    L.seed_everything(0, verbose=False)
    dm, _ = fashion_mnist(batch_size=64, samples_per_class=per_class, val_fraction=0.005)
    module = FrozenBackboneFinetuner(backbone, num_classes=10, feature_cache=cached)
    timer = EpochTimer()
    t = trainer(max_epochs=epochs, callbacks=[timer], limit_test_batches=test_batches)
    t.fit(module, dm)
    acc = t.test(module, dm, verbose=False)[0]["test/acc"]
    return timer.times, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-batches", type=int, default=10)
    args = parser.parse_args()
    quiet()
    _, data = fashion_mnist()
    header(f"linear probe, {args.backbone}, {data}, {args.per_class}/class, {args.epochs} epochs")
    plain, plain_acc = run(args.backbone, args.per_class, args.epochs, False, args.test_batches)
    cached, cached_acc = run(args.backbone, args.per_class, args.epochs, True, args.test_batches)
    later = lambda times: sum(times[1:]) / len(times[1:])  # noqa: E731
    print(f"{'':>10} {'epoch 1 (s)':>12} {'later epochs (s)':>17} {'test acc':>9}")
    print(f"{'uncached':>10} {plain[0]:12.3f} {later(plain):17.4f} {plain_acc:9.4f}")
    print(f"{'cached':>10} {cached[0]:12.3f} {later(cached):17.4f} {cached_acc:9.4f}")
    print("(cached epoch 1 excludes the cache build, which runs at fit start: one backbone pass over train + val)")
    print(f"speed-up per epoch after the first: {later(plain) / later(cached):.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
