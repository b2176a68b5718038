"""The GPU path, proved on a machine without one: resume onto a device, which device and GPU a job gets, no host
syncs or graph breaks in a training step, measurements that mean the same on a GPU, what a record says about
how it computed, and the details of DDP. Devices are stood in for by `meta` tensors (shapes, no values) and by
monkeypatched torch.cuda functions."""
import math
import os
import queue
import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_multiprocessing
from hydra.core.hydra_config import HydraConfig

from hydra_plugins.rpe_bench_launcher import parallel_launcher
from rpe_bench import distributed, launching, loop, measure, numerics, pos, provenance
from rpe_bench import train as train_module
from rpe_bench.checkpoint import CHECKPOINT_NAME
from rpe_bench.config import ConfigError
from rpe_bench.coordinates import CoordinateAugmentation
from rpe_bench.distributed import GPU_SLOT_VARIABLE, Processes
from rpe_bench.loop import DataTimer, Training, TrainingDiverged, evaluate, train_step
from rpe_bench.model import VisionTransformer, VitShape, parameter_groups
from rpe_bench.pos.lie import MAX_SQUARINGS, matrix_exponential
from tests.helpers import TINY_RUN, compose_config, read_results, run_training
from tests.host_syncs import HostSyncs

META = torch.device("meta")
SHAPE = VitShape(image_size=16, patch_size=4, channels=1, num_classes=10, emb_dim=32, depth=2, num_heads=2)
OPTIONS = {"cayley_sparse": {"f": 0.5}}


def augmented_model(name: str) -> VisionTransformer:
    torch.manual_seed(0)
    augmentation = CoordinateAugmentation(0.2, 1.2, 1.5, generator=torch.Generator().manual_seed(0))
    return VisionTransformer(SHAPE, name, OPTIONS.get(name), absolute_table=name == "ape", seed=0,
                             coordinate_augmentation=augmentation)


def meta_training(name: str) -> Training:
    model = augmented_model(name).to(META)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-3)
    return Training(model=model, forward_model=model, optimizer=optimizer,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), train_batches=None,
                    test_batches=None, autocast=nullcontext(), device=META, processes=Processes())


def fake_gpus(monkeypatch, count: int, free_bytes: int = 80 * 2**30) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (free_bytes, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")


# 1. Resume.

@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resuming_loads_the_checkpoint_to_the_host_and_moves_only_what_belongs_on_the_device(monkeypatch, tmp_path):
    """A checkpoint loaded onto the training device put the generator states there (`.numpy()` and
    set_rng_state refuse them) and left AdamW's step counters on the device. `meta` stands in for a GPU."""
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}")
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    cfg = compose_config(*TINY_RUN, "trainer.epochs=2")
    training, _ = train_module.set_up(cfg, Processes(), META)
    torch.manual_seed(123)  # a state the checkpoint's must replace
    resumed = train_module.resume(cfg, training, tmp_path)
    assert resumed.next_epoch == 2
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["rng"]["numpy"][1].numpy())
    states = list(training.optimizer.state.values())
    assert states and all(state["step"].device.type == "cpu" for state in states)
    assert all(state["exp_avg"].device == META for state in states)
    assert all(parameter.device == META for parameter in training.model.parameters())


# 2. Launchers and devices.

def test_the_local_launcher_shows_the_jobs_every_visible_gpu(monkeypatch):
    fake_gpus(monkeypatch, 2)
    cfg = compose_config("hydra/launcher=local", return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 2


@pytest.mark.parametrize("device, jobs_per_gpu, expected", [("auto", 1, 2), ("cuda", 3, 6), ("cpu", 1, None)])
def test_parallel_jobs_default_to_the_gpu_slots_when_jobs_train_on_gpus(monkeypatch, device, jobs_per_gpu,
                                                                           expected):
    fake_gpus(monkeypatch, 2)
    cfg = compose_config("hydra/launcher=parallel", f"trainer.device={device}",
                         f"hydra.launcher.jobs_per_gpu={jobs_per_gpu}", return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == (expected or launching.usable_cores())


def test_each_job_takes_a_free_gpu_slot_for_its_duration_and_gives_it_back(monkeypatch):
    fake_gpus(monkeypatch, 2)
    seen = []

    def job(index, *arguments):
        seen.append((index, os.environ[GPU_SLOT_VARIABLE]))
        return f"job {index}"

    monkeypatch.setattr(parallel_launcher, "execute_job", job)
    free = queue.Queue()
    for gpu in launching.gpu_slots(2):
        free.put(gpu)
    assert launching.gpu_slots(2) == [0, 1, 0, 1]  # the first jobs spread over every GPU
    assert [parallel_launcher.indexed_job(index, free)[1] for index in range(3)] == ["job 0", "job 1", "job 2"]
    assert seen == [(0, "0"), (1, "1"), (2, "0")] and free.qsize() == 4
    assert GPU_SLOT_VARIABLE not in os.environ
    monkeypatch.setenv(GPU_SLOT_VARIABLE, "1")
    assert distributed.pick_device("auto")[0] == torch.device("cuda", 1)


def test_jobs_per_gpu_that_would_not_fit_in_a_gpus_free_memory_is_refused(monkeypatch):
    fake_gpus(monkeypatch, 2, free_bytes=3 * 2**30)
    job_configs = [compose_config("dataset=digits", "trainer.device=cuda")] * 4
    each = launching.job_gpu_memory_bytes(job_configs[0])
    assert launching.parallel_jobs_refusal(2, job_configs, jobs_per_gpu=1) is None
    refusal = launching.parallel_jobs_refusal(4, job_configs, jobs_per_gpu=4)
    allowed = 3 * 2**30 // each
    assert refusal.startswith("hydra.launcher.jobs_per_gpu=4 needs about") and f"jobs_per_gpu <= {allowed}" in refusal
    assert "n_jobs=5 is more than the 4 GPU slots" in launching.parallel_jobs_refusal(5, job_configs, 2)


def test_device_auto_says_which_device_it_chose_and_why(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}")
    (job_log,) = tmp_path.glob("*.log")
    assert "device cpu: trainer.device=auto and torch sees no CUDA device" in job_log.read_text()
    fake_gpus(monkeypatch, 2)
    device, why = distributed.pick_device("auto", local_rank=1)
    assert device == torch.device("cuda", 1) and "2 GPU(s) visible, GPU 1 from local rank 1: NVIDIA H200" in why


# 3. Host syncs and graph breaks.

def test_the_sync_counter_sees_each_kind_of_wait():
    """The counter below is only evidence if it catches what the GPU would wait for."""
    values = torch.ones(3, 3, device=META)
    with HostSyncs() as syncs:
        int(values.max())
        torch.linalg.solve(values, values)
        torch.ones(2).to(META)
        torch.ones(2).to(META, non_blocking=True)  # not a wait
        values.nonzero()
    assert len(syncs.found) == 4, syncs.found


@pytest.mark.parametrize("name", pos.available())
def test_no_training_step_of_any_encoding_waits_for_the_device(name):
    """Forward, backward, clipping and AdamW with the coordinate augmentation on, on `meta`."""
    training = meta_training(name)
    images, labels = torch.randn(4, 1, 16, 16, device=META), torch.zeros(4, dtype=torch.long, device=META)
    with HostSyncs() as syncs:
        for _ in range(2):
            train_step(training, images, labels, grad_clip=1.0)
    assert syncs.found == []


def test_evaluation_waits_for_the_device_once_not_per_batch():
    model = augmented_model("liere").to(META)
    batches = [(torch.randn(4, 1, 16, 16, device=META), torch.zeros(4, dtype=torch.long, device=META))] * 5
    with HostSyncs() as syncs:
        evaluate(model, batches, nullcontext())
    assert len(syncs.found) == 1, syncs.found  # the loss and correct sums, read once at the end


def test_the_coordinate_draws_come_from_their_own_host_generator_and_move_without_blocking():
    """Every device sees the same draws at a seed (common random numbers): they are made on the host."""
    on_device = CoordinateAugmentation(0.2, 1.2, 1.5, generator=torch.Generator().manual_seed(3))
    on_host = CoordinateAugmentation(0.2, 1.2, 1.5, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    with HostSyncs() as syncs:
        drawn = on_device.draw(META)
    assert syncs.found == [] and drawn.device == META and drawn.shape == (4,)
    on_host.draw(torch.device("cpu"))
    assert torch.equal(on_device.generator.get_state(), on_host.generator.get_state())
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG, which draws the shared weights, is untouched


@pytest.mark.parametrize("name", pos.available())
def test_every_encoding_with_the_augmentation_compiles_to_one_graph(name):
    model = augmented_model(name).train()
    images = torch.randn(2, 1, 16, 16)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(images, model.draw_coordinate_augmentation(images.device))
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_an_exponent_beyond_the_fixed_squarings_comes_out_nan_not_wrong():
    generator = torch.randn(2, 4, 4, dtype=torch.float64)
    skew = generator - generator.transpose(-1, -2)
    skew = skew / skew.abs().sum(-2).amax(-1)[:, None, None]  # 1-norm 1
    reachable = skew[0] * (2.0 * 2**MAX_SQUARINGS * 0.99)
    beyond = skew[1] * (2.0 * 2**MAX_SQUARINGS * 1.01)
    result = matrix_exponential(torch.stack([reachable, beyond]))
    assert torch.isnan(result[1]).all()
    identity = torch.eye(4, dtype=torch.float64)
    # Each squaring doubles the rounding error: 2^MAX_SQUARINGS of them bound it.
    bound = 2**MAX_SQUARINGS * 64 * torch.finfo(torch.float64).eps
    assert (result[0].T @ result[0] - identity).abs().max() < bound


# 4. Measurements.

@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_is_this_jobs_not_every_earlier_job_of_the_process():
    host = torch.device("cpu")
    resident_mb = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    earlier_job = np.ones(400 * 2**20 // 8)  # every page written
    del earlier_job
    assert measure.peak_memory_mb(host) > resident_mb + 350
    measure.reset_peak_memory(host)
    assert measure.peak_memory_mb(host) < resident_mb + 100


def test_data_time_on_a_gpu_is_read_from_events_on_its_stream(monkeypatch):
    """On a GPU a batch's kernels run after the host launches them: a host clock times only the launches."""
    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            FakeEvent.clock += 5.0
            self.at = FakeEvent.clock

        def elapsed_time(self, end):
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = DataTimer(torch.device("cuda", 0))
    for _ in range(3):
        timer.start()
        timer.stop()
    assert timer.seconds() == pytest.approx(3 * 5.0 / 1000)


def test_the_first_steps_of_a_process_are_timed_apart_as_warm_up(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "trainer.epochs=2")
    first, second = read_results(tmp_path)["history"]
    assert first["warmup_steps"] == loop.WARMUP_STEPS and first["warmup_seconds"] > 0
    assert second["warmup_steps"] == 0 and second["warmup_seconds"] == 0
    steady_steps = 4 - loop.WARMUP_STEPS  # TINY_RUN trains 4 batches an epoch
    assert first["step_ms"] == pytest.approx(1000 * first["epoch_seconds"] / steady_steps)
    assert second["step_ms"] == pytest.approx(1000 * second["epoch_seconds"] / 4)


def test_inference_is_timed_on_the_compiled_model_when_the_run_trained_compiled(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    model = augmented_model("cayley_dense")
    measure.inference_ms_per_batch(model, torch.randn(2, 1, 16, 16), 1, nullcontext(), torch.device("cpu"),
                                   compiled=True)
    assert len(compiled) == 1 and compiled[0] is not model and not compiled[0].training
    assert all(block.attention.position.basis_folded for block in compiled[0].blocks)


# 5. Precision and scale in the record.

@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_is_set_both_ways_and_recorded(monkeypatch, tmp_path, enabled):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", f"trainer.tf32={enabled}")
    results = read_results(tmp_path)
    assert results["resolved_config"]["trainer"]["tf32"] is enabled
    assert results["provenance"]["numerics"] == {"precision": "fp32", "compile": False,
                                                 "tf32": {"matmul": enabled, "convolution": enabled}}
    numerics.set_tf32(False)


def test_a_gpu_runs_record_names_cuda_cudnn_the_driver_and_the_gpus_used(monkeypatch):
    fake_gpus(monkeypatch, 4)
    monkeypatch.setattr(numerics, "nvidia_driver_version", lambda: "550.54.15")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    record = numerics.cuda_record(torch.device("cuda", 1), world_size=2)
    assert record == {"cuda": torch.version.cuda, "cudnn": 91002, "driver": "550.54.15",
                      "gpu": "NVIDIA H200", "gpu_index": 1, "gpus_used": 2, "gpus_visible": 4}


def test_the_driver_version_is_read_from_the_kernel_module(monkeypatch, tmp_path):
    version_file = tmp_path / "version"
    version_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    monkeypatch.setattr(numerics, "Path", lambda path: version_file)
    assert numerics.nvidia_driver_version() == "550.54.15"


@pytest.mark.parametrize("aspect, change", [
    ("precision", {"precision": "bf16"}), ("torch.compile", {"compile": True}),
    ("TF32", {"tf32": {"matmul": True, "convolution": True}}), ("processes (world size)", {"world_size": 8})])
def test_the_report_warns_when_runs_computed_differently(aspect, change):
    def record(**changed):
        numerics_part = {"precision": "fp32", "compile": False, "tf32": {"matmul": False, "convolution": False}}
        world_size = changed.pop("world_size", 1)
        numerics_part.update(changed)
        return {"code": {"commit": "abc", "dirty": False, "package_version": "0"}, "versions": {},
                "device": {"type": "cuda", "name": "H200", "count": 8}, "world_size": world_size,
                "numerics": numerics_part}

    assert provenance.differences([record(), record()]) == []
    (found,) = provenance.differences([record(), record(**change)])
    assert found.startswith(aspect)


# 6. DDP.

def test_a_batch_smaller_than_the_number_of_processes_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = compose_config(*TINY_RUN, "trainer.batch_size=2")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=2 is smaller than the 4 processes.*batch_size >= 4"):
        train_module.start_processes(cfg)


def test_ddp_does_not_broadcast_constant_buffers(monkeypatch):
    wrapped = {}
    monkeypatch.setattr(distributed, "barrier", lambda processes: None)
    monkeypatch.setattr(train_module, "DistributedDataParallel",
                        lambda module, **options: wrapped.update(options) or module)
    train_module.set_up(compose_config(*TINY_RUN), Processes(rank=0, world_size=2), torch.device("cpu"))
    assert wrapped["broadcast_buffers"] is False


@pytest.mark.parametrize("rank", [0, 1])
def test_the_main_process_downloads_first_and_the_others_wait_for_it(monkeypatch, rank):
    events = []
    monkeypatch.setattr(distributed, "barrier", lambda processes: events.append("barrier"))
    with distributed.main_process_first(Processes(rank=rank, world_size=2)):
        events.append("load")
    assert events == (["load", "barrier"] if rank == 0 else ["barrier", "load"])


class FakeRun:
    id = "fake"

    def log(self, *arguments, **options):
        pass


def test_only_the_main_process_measures_the_trained_model(monkeypatch, tmp_path):
    """Rank 1 of two: it trains, then waits at a barrier while rank 0 evaluates, extrapolates and times."""
    calls = []
    monkeypatch.setattr(distributed, "from_environment", lambda: Processes(rank=1, world_size=2))
    monkeypatch.setattr(distributed, "start", lambda processes, device: None)
    monkeypatch.setattr(distributed, "stop", lambda processes: None)
    monkeypatch.setattr(distributed, "barrier", lambda processes: calls.append("barrier"))
    monkeypatch.setattr(distributed, "main_output_dir", lambda processes, output_dir: str(output_dir))
    monkeypatch.setattr(distributed, "sum_over_processes", lambda processes, *values: list(values))
    monkeypatch.setattr(distributed, "mean_over_processes", lambda processes, value: value)
    monkeypatch.setattr(train_module, "DistributedDataParallel", lambda module, **options: module)
    monkeypatch.setattr(train_module, "measure_trained", lambda *arguments: calls.append("measure"))
    monkeypatch.setattr(train_module, "parallel_jobs", lambda: 1)
    monkeypatch.setattr(train_module, "wandb_run", lambda *arguments, **options: nullcontext(FakeRun()))
    cfg = compose_config(*TINY_RUN, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    cfg = compose_config(*TINY_RUN)
    assert train_module.train(cfg, tmp_path) is None
    assert "measure" not in calls and "barrier" in calls
    assert not (tmp_path / "results.json").exists()


def _diverge_on_one_rank(rank: int, init_file: str, outcomes) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loss = torch.tensor(math.nan if rank == 1 else 0.5)
        loop.finite_mean_loss(Processes(rank=rank, world_size=2), loss, "epoch 1, step 10", Path("/runs/a"))
        outcomes.put((rank, "went on"))
    except TrainingDiverged as error:
        outcomes.put((rank, str(error)))
    finally:
        dist.destroy_process_group()


def test_a_non_finite_loss_on_one_process_stops_every_process_with_the_same_error(tmp_path):
    context = torch_multiprocessing.get_context("spawn")
    outcomes = context.Queue()
    workers = [context.Process(target=_diverge_on_one_rank, args=(rank, str(tmp_path / "init"), outcomes))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    results = dict(outcomes.get(timeout=5) for _ in range(2))
    assert results[0] == results[1] and results[0].startswith("training loss is nan at epoch 1, step 10")
