"""Streaming loader vs torchvision ``ImageFolder`` + ``DataLoader``: images/s, and peak memory as data grows 10×.

``python -m benchmarks.streaming_loader [--images 20000] [--workers 2] [--repeats 3]`` generates
a synthetic JPEG folder (random crops of scikit-learn's two sample photos, 160–256 px, quality
90, 10 classes), converts it once with ``prepare_dataset`` and then, alternating, iterates one
epoch of each loader with the same worker count, batch size and output size (every image
resized whole to ``--image_size``; no on-device work, which is the same for both):

- ``ImageFolder`` + ``DataLoader``: PIL decode, ``PILToTensor`` + ``Resize`` (what torchvision users write);
- ``ImageFolder`` + ``DataLoader`` with torchvision's decoder (the decoder the streaming module uses);
- ``StreamingImageDataModule``'s training loader (LitData chunks, shuffled) over the whole
  prepared set, as ``ImageFolder`` reads the whole folder (``val_fraction=0``: a data set with
  its own prepared ``val/`` split, such as ImageNet, streams its training set this way);
- the same with the module's default seeded 10 % validation hold-out (``streaming_split``: the
  training set is then a LitData subset, hundreds of short runs of samples).

Peak resident memory is measured in fresh subprocesses (``rss`` sub-command) over one epoch, at
the folder's size and at 10× (the same files listed ten times, hard-linked; both runs read as
many images as the 1× epoch holds, so only the data set size differs), as the proportional
set size (PSS: shared pages split among the processes) summed over the main process and its
loader workers, sampled every 50 ms; ``anon`` excludes file-backed pages (the page cache that
memory-mapped chunks show as resident). ``--decoders`` also times the JPEG
decoders on the same files. ``--smoke`` runs everything on 60 images (used by a test).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from kd_lightning.data.batch import Batch
from kd_lightning.data.prepare import prepare_dataset
from kd_lightning.data.streaming import StreamingImageDataModule

NUM_CLASSES = 10


def make_jpeg_folder(root: Path, num_images: int, seed: int = 0, sizes: tuple[int, int] = (160, 256)) -> Path:
    """``root/<class>/<n>.jpg``: crops of real photos (realistic JPEG statistics) at random sizes."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = random.Random(seed)
    for n in range(num_images):
        folder = root / f"class_{n % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        photo = photos[n % len(photos)]
        side = rng.randint(120, 400)
        top, left = rng.randint(0, photo.shape[0] - side), rng.randint(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop.resize((rng.randint(*sizes), rng.randint(*sizes))).save(folder / f"{n}.jpg", quality=90)
    return root


def replicate_folder(source: Path, target: Path, times: int) -> Path:
    """The same images ``times`` over, as hard links: 10× the data without 10× the generation."""
    for path in source.rglob("*.jpg"):
        folder = target / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(times):
            link = folder / f"{copy}_{path.name}"
            if not link.exists():
                os.link(path, link)
    return target


def _read_rgb(path: str) -> torch.Tensor:
    return decode_image(path, mode=ImageReadMode.RGB)


def image_folder_loader(folder: Path, size: int, workers: int, batch_size: int, torchvision_io: bool) -> DataLoader:
    resize = v2.Resize((size, size), antialias=True)
    if torchvision_io:
        dataset = ImageFolder(str(folder), loader=_read_rgb, transform=resize)
    else:
        dataset = ImageFolder(str(folder), transform=v2.Compose([v2.PILToTensor(), resize]))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def streaming_loader(prepared: Path, size: int, workers: int, batch_size: int, val_fraction: float = 0.1):
    data = StreamingImageDataModule(
        str(prepared), image_size=size, num_workers=workers, batch_size=batch_size, val_fraction=val_fraction
    )
    data.setup("fit")
    return data.train_dataloader()


def epoch_rate(loader, max_images: int | None = None) -> float:
    """Images per second over one epoch, or its first ``max_images`` (worker start-up included)."""
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch) if isinstance(batch, Batch) else len(batch[0])  # Batch (streaming) or [images, labels]
        if max_images is not None and seen >= max_images:
            break
    return seen / (time.perf_counter() - start)


def make_loader(kind: str, folder: Path, prepared: Path, args: argparse.Namespace):
    if kind.startswith("streaming"):
        val_fraction = 0.1 if kind == "streaming_split" else 0.0
        return streaming_loader(prepared, args.image_size, args.workers, args.batch_size, val_fraction)
    return image_folder_loader(folder, args.image_size, args.workers, args.batch_size, kind == "folder_tvio")


LOADERS = ("folder_pil", "folder_tvio", "streaming", "streaming_split")


def _tree_memory_kib(pid: int) -> tuple[int, int]:
    """``(Pss, Pss_Anon)`` in KiB summed over ``pid`` and its descendants.

    Proportional set size splits each shared page among the processes that map it, so forked
    workers sharing the parent's pages are not counted twice (a sum of RSS would count them so).
    """
    total = anon = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in rollup if ":" in line)
        total += int(fields.get("Pss", "0 kB").split()[0])
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0])
        stack += [int(c) for c in children]
    return total, anon


def measure_rss(kind: str, folder: Path, prepared: Path, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory of this process tree over one epoch of ``kind`` (run in a fresh process)."""
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total, anon = _tree_memory_kib(os.getpid())
            peak[0], peak[1] = max(peak[0], total), max(peak[1], anon)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rate = epoch_rate(make_loader(kind, folder, prepared, args), args.max_images)
    stop.set()
    sampler.join()
    return {"pss_mib": peak[0] / 1024, "anon_mib": peak[1] / 1024, "images_per_s": rate}


def rss_in_subprocess(kind: str, folder: Path, prepared: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.streaming_loader", "rss", kind, str(folder), str(prepared)]
    command += ["--workers", str(args.workers), "--batch_size", str(args.batch_size)]
    command += ["--image_size", str(args.image_size), "--max_images", str(args.images)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def decoder_rates(folder: Path, repeats: int, limit: int = 500) -> dict[str, float]:
    """JPEG → ``uint8`` RGB tensor, images/s on one thread, for each decoder that is installed."""
    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:limit]]
    decoders = {
        "torchvision.io.decode_jpeg": lambda d: decode_image(torch.frombuffer(bytearray(d), dtype=torch.uint8)),
        "PIL": lambda d: torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1),
    }
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda d: torch.from_numpy(simplejpeg.decode_jpeg(d, colorspace="RGB")).permute(
            2, 0, 1
        )
    except ImportError:
        pass
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()
        decoders["PyTurboJPEG"] = lambda d: torch.from_numpy(jpeg.decode(d, pixel_format=turbojpeg.TJPF_RGB)).permute(
            2, 0, 1
        )
    except (ImportError, RuntimeError):
        pass
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for blob in blobs:
                decode(blob)
            rates[name].append(len(blobs) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def run(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    folder, folder10 = work / f"jpeg_{args.images}", work / f"jpeg_{args.images}_x10"
    prepared, prepared10 = work / f"litdata_{args.images}", work / f"litdata_{args.images}_x10"
    start = time.perf_counter()
    if not folder.exists():
        make_jpeg_folder(folder, args.images)
    print(f"synthetic folder: {args.images} JPEGs, {time.perf_counter() - start:.0f} s")
    for source, target in ((folder, prepared), (replicate_folder(folder, folder10, 10), prepared10)):
        if not (target / "train").exists():
            start = time.perf_counter()
            prepare_dataset(str(source), str(target), num_workers=args.workers, verbose=False)
            print(f"prepare {source.name}: {time.perf_counter() - start:.0f} s")

    if args.decoders:
        print("\nJPEG decode, one thread, images/s (median of", args.repeats, "):")
        for name, rate in decoder_rates(folder, args.repeats).items():
            print(f"  {name:28s} {rate:8.0f}")

    rates: dict[str, list[float]] = {kind: [] for kind in LOADERS}
    for _ in range(args.repeats):
        for kind in LOADERS:  # alternating, so load changes on the shared machine hit all alike
            rates[kind].append(epoch_rate(make_loader(kind, folder, prepared, args)))
    medians = {kind: statistics.median(values) for kind, values in rates.items()}
    print(f"\nloader throughput, {args.workers} workers, batch {args.batch_size}, {args.image_size} px, images/s:")
    for kind in LOADERS:
        print(f"  {kind:15s} median {medians[kind]:7.0f}   runs {[round(r) for r in rates[kind]]}")
    for streamed, baseline in product(("streaming", "streaming_split"), ("folder_pil", "folder_tvio")):
        # Also the median of the per-round ratios: each round's loaders ran back to back, so a load
        # change on the shared machine cancels out of a round's ratio more than out of the medians.
        paired = statistics.median(s / b for s, b in zip(rates[streamed], rates[baseline], strict=True))
        print(
            f"  {streamed:15s} / {baseline:11s} = {medians[streamed] / medians[baseline]:.2f} (ratio of medians), "
            f"{paired:.2f} (median of per-round ratios)"
        )

    print("\npeak memory over one epoch (PSS of main + workers, fresh process each), MiB:")
    for kind in ("streaming_split", "folder_pil"):
        one = rss_in_subprocess(kind, folder, prepared, args)
        ten = rss_in_subprocess(kind, folder10, prepared10, args)
        print(
            f"  {kind:15s} 1x pss {one['pss_mib']:6.0f} anon {one['anon_mib']:6.0f} | "
            f"10x pss {ten['pss_mib']:6.0f} anon {ten['anon_mib']:6.0f} | "
            f"10x/1x pss {ten['pss_mib'] / one['pss_mib']:.2f} anon {ten['anon_mib'] / one['anon_mib']:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "rss"])
    parser.add_argument("rss_args", nargs="*", help="(rss, internal) LOADER FOLDER PREPARED")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decoders", action="store_true", help="also time the JPEG decoders")
    parser.add_argument("--max_images", type=int, default=None, help="(rss) stop after this many images")
    parser.add_argument("--work_dir", default="/tmp/kd_lightning_streaming_bench")
    parser.add_argument("--smoke", action="store_true", help="60 images, 1 repeat: checks that everything runs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.mode == "rss":
        kind, folder, prepared = args.rss_args
        print(json.dumps(measure_rss(kind, Path(folder), Path(prepared), args)))
        return
    if args.smoke:
        args.images, args.repeats, args.batch_size, args.decoders = 60, 1, 16, True
    run(args)


if __name__ == "__main__":
    main()
