"""Can a better linear probe widen the k=100 teacher's margin? Validation accuracy of probe variants (issue 14).

The few-label teacher (``configs/fashion_mnist/few_labels/teacher_linear_probe.yaml``: EfficientNet-Lite0,
stages 3+4 pooled, standardised, Adam) scores 0.8383 on the validation split at k=100 (seed 0). This sweep
fits the same features with an exactly converged L2-regularised logistic regression (full-batch L-BFGS, as
CLIP's linear probes do) over a range of penalties, with and without horizontally flipped copies of the
labelled images, and at a larger input (160 px), and prints validation accuracy only: a choice made here
may not look at the test set.

    python -m benchmarks.few_labels_probe_sweep                 # 112 and 160 px, about 5 minutes on 2 cores
    python -m benchmarks.few_labels_probe_sweep --sizes 112
    python -m benchmarks.few_labels_probe_sweep --sizes 112 --layer-sets stage:3,stage:4 stage:2,stage:3,stage:4
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from kd_lightning.cache.feature_cache import compute_features
from kd_lightning.data import FashionMNISTDataModule
from kd_lightning.models.factory import create_model

PENALTIES = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def logistic_regression_accuracy(
    train: torch.Tensor, labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor, penalty: float
) -> float:
    """Validation accuracy of a softmax regression on standardised features, fitted to convergence by L-BFGS."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    x, x_val = (train - mean) / std, (val - mean) / std
    weight = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((x_val @ weight + bias).argmax(1) == val_labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 160], help="input sizes of the backbone")
    parser.add_argument(
        "--layer-sets",
        nargs="+",
        default=["stage:3,stage:4"],
        help="pooled feature layers of the probe, comma-separated; one sweep per set",
    )
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    for layers, size in itertools.product(args.layer_sets, args.sizes):
        network = create_model(
            "efficientnet_lite0", 10, pretrained=True, feature_layers=layers.split(","), head_norm=True
        ).eval()
        data = FashionMNISTDataModule(
            data_dir="data", samples_per_class=args.per_class, val_fraction=0.02, seed=0, image_size=size
        )
        data.prepare_data()
        data.setup("fit")
        images, labels = data.train_set.images, data.train_set.labels
        train = compute_features(network, images, size, 100, cpu)
        flipped = compute_features(network, images.flip(-1), size, 100, cpu)
        val = compute_features(network, data.val_set.images, size, 100, cpu)
        val_labels = data.val_set.labels
        print(f"{layers} at {size} px, {len(labels)} labelled images, {len(val_labels)} validation images")
        for penalty in PENALTIES:
            plain = logistic_regression_accuracy(train, labels, val, val_labels, penalty)
            with_flips = logistic_regression_accuracy(
                torch.cat([train, flipped]), torch.cat([labels, labels]), val, val_labels, penalty
            )
            print(f"  L2 {penalty:g}: val {plain:.4f}, with flipped copies {with_flips:.4f}")


if __name__ == "__main__":
    main()
