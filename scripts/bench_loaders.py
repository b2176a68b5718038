"""Benchmark the two loaders of an image folder: peak memory (the training process and its decoder workers
together) and images per second of real training runs, with the data's share of the step time.

Folders: the CIFAR-10 JPEG copy (32 px), and two subsets of it upsampled to 224 px whose decoded size is several
times a memory budget (`--budget-mb`), of different sizes: streaming's peak must stay the same whatever the
folder's size and within the budget, while the in-memory loader's grows with it.

    python scripts/bench_loaders.py --tar ../shared/data/cifar10-jpeg.tar --work /tmp/bench_loaders \\
        --output docs/bench_loaders
"""
import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

from rpe_bench import provenance

PROJECT = Path(__file__).resolve().parents[1]


def extract(tar: Path, folder: Path) -> Path:
    if not (folder / "train").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar) as archive:
            archive.extractall(folder, filter="data")
    return folder


def upsampled(source: Path, folder: Path, per_class_train: int, per_class_test: int, size: int) -> Path:
    """The first images of each class of `source`, resized to size x size JPEGs (quality 90)."""
    if (folder / "train").is_dir():
        return folder
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for class_folder in sorted((source / split).iterdir()):
            target = folder / split / class_folder.name
            target.mkdir(parents=True)
            for path in sorted(class_folder.iterdir())[:count]:
                with Image.open(path) as image:
                    image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(
                        target / f"{path.stem}.jpg", quality=90)
    return folder


def images_in(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*.jpg"))


class PeakMemory:
    """The largest memory of a process and its children together, sampled every 0.1 s: their proportional set
    size (PSS), which counts the pages a forked worker shares with its parent once, where summing resident sizes
    would count torch's libraries once per process."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.peak = psutil.Process(process.pid), 0
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while True:
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(member.memory_full_info().pss for member in tree))
            except psutil.Error:
                return
            time.sleep(0.1)


def train(folder: Path, image_size: int, patch_size: int, loader: str, batches: int, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run each time, never a resumed one
    command = [sys.executable, "-m", "rpe_bench.train", "dataset=image_folder", f"dataset.root={folder}",
               f"dataset.image_size={image_size}", f"model.patch_size={patch_size}", f"dataset.loader={loader}",
               "model.emb_dim=64", "model.depth=2", "model.num_heads=2", "trainer.epochs=1", "trainer.batch_size=64",
               f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=2",
               "trainer.inference_timing_batches=1", "dataset.extrapolation_sizes=[]", "logger.mode=disabled",
               f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = PeakMemory(process)
    _, errors = process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {errors[-2000:]}")
    record = json.loads((run_dir / "results.json").read_text())
    epoch = record["history"][0]
    return {"loader": loader, "peak_pss_mb": peak.peak / 2**20, "images_per_second": epoch["images_per_second"],
            "data_share": record["data_time_fraction"], "train_batches": batches,
            "command_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", type=Path, required=True, help="the CIFAR-10 JPEG copy (cifar10-jpeg.tar)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_loaders"), help="where folders are made")
    parser.add_argument("--budget-mb", type=int, default=512, help="the memory budget the large folders exceed")
    parser.add_argument("--batches", type=int, default=40, help="training batches of 64 per run")
    parser.add_argument("--output", type=Path, default=Path("docs/bench_loaders"), help="writes .json and .md")
    args = parser.parse_args()
    cifar = extract(args.tar, args.work / "cifar10")
    folders = [("CIFAR-10 JPEG, 32 px", cifar, 32, 4),
               ("CIFAR-10 subset at 224 px, 300 a class", upsampled(cifar, args.work / "up224_small", 300, 50, 224),
                224, 32),
               ("CIFAR-10 subset at 224 px, 1000 a class", upsampled(cifar, args.work / "up224_large", 1000, 100, 224),
                224, 32)]
    rows = []
    for label, folder, size, patch in folders:
        count = images_in(folder)
        decoded_mb = count * 3 * size * size / 2**20
        for loader in ("stream", "memory"):
            for cache in folder.glob(".rpe_bench_cache_*"):
                cache.unlink()  # the in-memory loader decodes the folder, as a first run does
            row = train(folder, size, patch, loader, args.batches, args.work / "runs" / f"{folder.name}_{loader}")
            rows.append({"folder": label, "images": count, "decoded_mb": decoded_mb, **row})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": f"{provenance.cpu_model()}, {psutil.cpu_count()} cores", "budget_mb": args.budget_mb,
            "code": provenance.code_version(), "versions": provenance.library_versions(),
            "measured_utc": provenance.utc_now(), "batch_size": 64, "model": "emb 64, depth 2, 2 heads"}
    args.output.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Loader benchmark: in memory against streaming", "",
             f"{meta['machine']}; commit {meta['code']['commit']}{' (dirty)' if meta['code']['dirty'] else ''}; "
             f"torch {meta['versions']['torch']}; {meta['measured_utc']}. Each row is one training run of "
             f"{args.batches} batches of 64 (ViT {meta['model']}, 1 epoch), a new process; peak memory is the "
             f"training process and its decoder workers together (proportional set size: shared pages counted "
             f"once), sampled every 0.1 s; images/s and the data share are the run's own (`results.json`). "
             f"Memory budget: {args.budget_mb} MB.", "",
             "| folder | images | decoded MB | loader | peak memory MB | images/s | data share of step | run s |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['folder']} | {row['images']:,} | {row['decoded_mb']:.0f} | {row['loader']} | "
              f"{row['peak_pss_mb']:.0f} | {row['images_per_second']:.0f} | {100 * row['data_share']:.1f}% | "
              f"{row['command_seconds']:.0f} |" for row in rows]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
