"""Local parallel sweeps (`hydra/launcher=parallel`): N jobs at once through Hydra's joblib launcher, T threads
each. N defaults to the usable cores and T to cores // N; an N whose estimated memory does not fit is refused.
The launcher itself is hydra_plugins/rpe_bench_launcher (Hydra loads launchers from that namespace only).

Small ViTs scale poorly across threads, so N one-thread jobs side by side finish a study sooner than the same
jobs one after another on every core (docs/bench_sweep.md).
"""
import os

import psutil
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

# Resident memory of one job beyond its data, model and activations: Python, torch, scikit-learn and W&B with
# its service process, rounded up from what a one-block ViT on digits holds (the parallel tests check that the
# estimate bounds what a job really used).
JOB_BASELINE_BYTES = 1000 * 2**20
# Images in train + test; image_folder is counted on disk.
# Folders that can stay on disk and be decoded batch by batch (dataset.loader=stream).
STREAMED_DATASETS = ("image_folder", "video_folder")
DATASET_IMAGES = {"digits": 1797, "mnist": 70_000, "fashion_mnist": 70_000, "cifar10": 60_000, "cifar100": 60_000}
# float32 values a training step keeps per token, channel and block for the backward pass (q, k, v, attention
# output, two norms, the MLP's hidden and activated tensors, residuals), rounded up.
SAVED_VALUES_PER_TOKEN_CHANNEL = 24
# Weights, gradients and AdamW's two moments, float32 each.
BYTES_PER_PARAMETER = 16


def usable_cores() -> int:
    """The cores this process may run on: CPU affinity (taskset, a container's cpuset) can make them fewer than
    the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> int:
    """The CUDA GPUs torch sees in this process (CUDA_VISIBLE_DEVICES applied), 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trains_on_gpu(device: str) -> bool:
    """Whether trainer.device puts a job on a GPU here."""
    return str(getattr(device, "value", device)) != "cpu" and visible_gpus() > 0


def parallel_jobs(device: str = "auto", jobs_per_gpu: int = 1) -> int:
    """The parallel launcher's n_jobs by default: one job per GPU slot when the jobs train on GPUs, else one per
    usable core."""
    return visible_gpus() * int(jobs_per_gpu) if trains_on_gpu(device) else usable_cores()


def gpu_slots(jobs_per_gpu: int) -> list[int]:
    """The GPU index of each slot: jobs_per_gpu slots per visible GPU, the GPUs interleaved so that the first
    jobs spread over all of them."""
    return [gpu for _ in range(jobs_per_gpu) for gpu in range(visible_gpus())]


def jobs_use_gpus(job_configs) -> bool:
    return any(trains_on_gpu(cfg.trainer.device) for cfg in job_configs)


def threads_per_job() -> int | None:
    """trainer.threads when not set: the usable cores shared among the jobs a parallel launcher runs at once;
    None (torch's default, every core) for a single run or under a launcher that runs one job at a time."""
    try:
        hydra_config = HydraConfig.get()
    except ValueError:  # composed outside a Hydra run (tests, notebooks): no launcher to share cores with
        return None
    # A single run never goes through the launcher, even when its config names one.
    parallel_jobs = hydra_config.launcher.get("n_jobs") if hydra_config.mode == RunMode.MULTIRUN else None
    return max(1, usable_cores() // parallel_jobs) if parallel_jobs else None


def dataset_images(dataset) -> int:
    """How many images, or clips, both splits hold."""
    if dataset.name == "moving_mnist":
        return dataset.moving.train_clips + dataset.moving.test_clips
    if dataset.name == "video_folder":  # split/<class>/<clip>/
        root = os.path.expanduser(dataset.root)
        return sum(len(os.listdir(os.path.join(root, split, label))) for split in ("train", "test")
                   if os.path.isdir(os.path.join(root, split)) for label in os.listdir(os.path.join(root, split))
                   if os.path.isdir(os.path.join(root, split, label)))
    if dataset.name != "image_folder":
        return DATASET_IMAGES[dataset.name]
    return sum(len(files) for split in ("train", "test")
               for _, _, files in os.walk(os.path.join(os.path.expanduser(dataset.root), split)))


def clip_frames(dataset) -> int:
    """Frames per sample: 1 for images."""
    return dataset.get("frames") or 1


def decoded_bytes(dataset) -> int:
    return dataset_images(dataset) * clip_frames(dataset) * dataset.channels * dataset.image_size ** 2


def available_memory_bytes() -> int:
    """The memory this job may use: SLURM's grant inside a job (SLURM_MEM_PER_NODE, MB), else what the machine
    has available now."""
    granted = os.environ.get("SLURM_MEM_PER_NODE")
    return int(granted) * 2**20 if granted else psutil.virtual_memory().available


def loader_choice(dataset) -> tuple[str, str]:
    """(memory or stream, why) for dataset.loader: `auto` streams an image folder whose decoded images would take
    more than a quarter of the job's memory."""
    requested = str(getattr(dataset.loader, "value", dataset.loader))
    if requested != "auto":
        return requested, f"dataset.loader={requested}"
    if dataset.name not in STREAMED_DATASETS:
        return "memory", f"dataset={dataset.name} is small enough to hold in memory"
    size, budget = decoded_bytes(dataset), available_memory_bytes()
    kind, relation = ("memory", "at most") if size <= budget / 4 else ("stream", "more than")
    return kind, (f"dataset.loader=auto: the decoded images take {gigabytes(size)}, {relation} a quarter of the "
                  f"{gigabytes(budget)} this job may use")


def model_bytes(cfg) -> int:
    """Weights, gradients, AdamW's moments and the activations a training step keeps, float32."""
    dataset, model, trainer = cfg.dataset, cfg.model, cfg.trainer
    parameters = model.depth * (4 + 2 * model.mlp_ratio) * model.emb_dim ** 2
    tubelets = clip_frames(dataset) // max(1, dataset.get("tubelet_frames") or 1)
    tokens = 1 + tubelets * (dataset.image_size // max(1, model.patch_size)) ** 2
    activations = 4 * trainer.batch_size * model.depth * (
        SAVED_VALUES_PER_TOKEN_CHANNEL * tokens * model.emb_dim + 2 * model.num_heads * tokens ** 2)
    return int(BYTES_PER_PARAMETER * parameters + activations)


def job_memory_bytes(cfg) -> int:
    """A rough upper estimate of one training job's resident memory, from its dataset and model sizes."""
    # Decoding holds a second copy of the uint8 images for a moment; streaming holds a few batches at a time.
    data = 2 * decoded_bytes(cfg.dataset) if loader_choice(cfg.dataset)[0] == "memory" else 0
    return int(JOB_BASELINE_BYTES + data + model_bytes(cfg))


# A CUDA context and the kernels it loads take this much of a GPU's memory before a job allocates anything.
CUDA_CONTEXT_BYTES = 1000 * 2**20


def job_gpu_memory_bytes(cfg) -> int:
    """A rough upper estimate of one training job's memory on its GPU: the in-memory loader keeps the uint8
    images there."""
    data = decoded_bytes(cfg.dataset) if loader_choice(cfg.dataset)[0] == "memory" else 0
    return int(CUDA_CONTEXT_BYTES + data + model_bytes(cfg))


def free_gpu_bytes() -> list[int]:
    return [torch.cuda.mem_get_info(index)[0] for index in range(visible_gpus())]


def gigabytes(size: float) -> str:
    return f"{size / 2**30:.1f} GB"


def gpu_jobs_refusal(jobs_per_gpu: int, job_configs) -> str | None:
    """One line refusing `jobs_per_gpu` when that many of the sweep's largest jobs would not fit in the free
    memory of the fullest GPU; None when they fit."""
    if jobs_per_gpu < 1:
        return f"hydra.launcher.jobs_per_gpu={jobs_per_gpu} must be >= 1"
    estimates = sorted((job_gpu_memory_bytes(cfg) for cfg in job_configs), reverse=True)
    needed = sum(estimates[:jobs_per_gpu])
    free = free_gpu_bytes()
    fullest = min(range(len(free)), key=free.__getitem__)
    if needed <= free[fullest]:
        return None
    return (f"hydra.launcher.jobs_per_gpu={jobs_per_gpu} needs about {gigabytes(needed)} on each GPU (up to "
            f"{gigabytes(estimates[0])} per job, estimated from dataset and model) but GPU {fullest} has "
            f"{gigabytes(free[fullest])} free: allowed here jobs_per_gpu <= {max(1, free[fullest] // estimates[0])}")


def parallel_jobs_refusal(parallel_jobs: int, job_configs, jobs_per_gpu: int = 1) -> str | None:
    """One line refusing `parallel_jobs` when the largest jobs of the sweep, that many at once, would not fit in
    the available memory, or `jobs_per_gpu` when that many would not fit on a GPU; None when they fit."""
    if parallel_jobs < 1:
        return f"hydra.launcher.n_jobs={parallel_jobs} must be >= 1"
    if jobs_use_gpus(job_configs):
        slots = len(gpu_slots(jobs_per_gpu))
        if parallel_jobs > slots:
            return (f"hydra.launcher.n_jobs={parallel_jobs} is more than the {slots} GPU slots ({visible_gpus()} "
                    f"GPU(s) x jobs_per_gpu={jobs_per_gpu}): allowed n_jobs <= {slots}, or raise jobs_per_gpu")
        refusal = gpu_jobs_refusal(jobs_per_gpu, job_configs)
        if refusal:
            return refusal
    estimates = sorted((job_memory_bytes(cfg) for cfg in job_configs), reverse=True)
    at_once = estimates[:parallel_jobs]
    needed, available = sum(at_once), psutil.virtual_memory().available
    # One job at a time is what the default launcher does anyway: only parallelism is refused.
    if len(at_once) < 2 or needed <= available:
        return None
    return (f"hydra.launcher.n_jobs={parallel_jobs} needs about {gigabytes(needed)} for the jobs running at once "
            f"(up to {gigabytes(estimates[0])} each, estimated from dataset and model) but {gigabytes(available)} "
            f"is available: allowed here n_jobs <= {max(1, available // estimates[0])}")
