"""One short GPU run: a bf16 fit of the distiller, images/s of its steps, bf16-vs-float32 losses.

    python -m benchmarks.gpu_check              # on a GPU machine
    python -m benchmarks.gpu_check --cpu-smoke  # the same checks, tiny, on the CPU

Without a GPU (and without ``--cpu-smoke``) it says so and exits 0. On a GPU it prints the
card, images/s for the plain student step, the distillation step and the cached distillation
step (Lightning ``precision="bf16-mixed"``, channels_last), runs a short bf16 fit with
validation, and checks that the CE and KD losses of one batch under bf16 autocast match float32
within ``--rtol``; a mismatch exits 1.
"""

from __future__ import annotations

import argparse
import sys

import lightning as L
import torch

from benchmarks._common import StepTimer, fashion_mnist, quiet, trainer
from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data.transforms import to_float_images
from kd_lightning.losses import StepContext
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner


def images_per_second(module: L.LightningModule, dm, accelerator: str, steps: int, batch: int) -> float:
    timer = StepTimer(warmup=3)
    options = dict(limit_train_batches=steps + 3, limit_val_batches=0, callbacks=[timer])
    trainer(accelerator=accelerator, precision="bf16-mixed", max_epochs=1, **options).fit(module, dm)
    return batch / timer.median


def loss_agreement(module: DistillationModule, dm, device: str) -> dict[str, tuple[float, float]]:
    """CE and KD of one batch in float32 and under bf16 autocast (losses themselves run in float32)."""
    module = module.to(device).eval()
    x = to_float_images(dm.train_set.images[: dm.batch_size].to(device))
    y = dm.train_set.labels[: dm.batch_size].to(device)
    with torch.no_grad():
        fp32 = module.loss_components(module.student_outputs(x), module.teacher(x), StepContext(y))
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            bf16 = module.loss_components(module.student_outputs(x), module.teacher(x), StepContext(y))
    return {name: (fp32[name].float().item(), bf16[name].float().item()) for name in fp32}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-smoke", action="store_true", help="run tiny versions of the checks on the CPU")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rtol", type=float, default=0.03, help="bf16 vs float32 loss tolerance (relative)")
    args = parser.parse_args()
    quiet()
    if torch.cuda.is_available():
        accelerator, device = "gpu", "cuda"
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    elif args.cpu_smoke:
        accelerator, device = "cpu", "cpu"
        args.teacher, args.student, args.batch_size, args.steps = "resnet8", "small_cnn", 32, 2
        print("no GPU available: CPU smoke run with tiny networks (figures are not GPU figures)")
    else:
        print("no GPU available: nothing to check (use --cpu-smoke for a tiny CPU run of the same path)")
        return 0

    L.seed_everything(0, verbose=False)
    dm, source = fashion_mnist(batch_size=args.batch_size, samples_per_class=args.batch_size * (args.steps + 3) // 9)
    dm.setup("fit")
    teacher = ModelSpec(args.teacher)
    fast = dict(channels_last=True)
    print(f"data: {source}; teacher {args.teacher}, student {args.student}, batch {args.batch_size}, bf16-mixed")
    modules = {
        "student step": FrozenBackboneFinetuner(args.student, 10, strategy="full", **fast),
        "distillation step": DistillationModule(args.student, teacher, 10, **fast),
        "cached distillation step": DistillationModule(
            args.student, teacher, 10, teacher_cache=TeacherCacheConfig(), **fast
        ),
    }
    rates = {name: images_per_second(m, dm, accelerator, args.steps, args.batch_size) for name, m in modules.items()}
    for name, rate in rates.items():
        print(f"{name:<26} {rate:10.0f} images/s  ({rate / rates['student step']:.2f}x the student step)")

    module = DistillationModule(args.student, teacher, 10, **fast)
    options = dict(limit_train_batches=args.steps, limit_val_batches=4)
    t = trainer(accelerator=accelerator, precision="bf16-mixed", max_epochs=1, **options)
    t.fit(module, dm)
    print(
        f"bf16 fit: {t.global_step} steps, val/acc {t.callback_metrics['val/acc'].item():.4f}, "
        f"train/loss {t.callback_metrics['train/loss'].item():.4f}"
    )

    ok = True
    for name, (fp32, bf16) in loss_agreement(module, dm, device).items():
        rel = abs(bf16 - fp32) / max(abs(fp32), 1e-8)
        ok &= rel <= args.rtol
        print(f"loss {name}: float32 {fp32:.5f}, bf16 {bf16:.5f}, relative difference {rel:.4f} (tol {args.rtol})")
    print("bf16 vs float32:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
