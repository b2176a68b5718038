"""pos.options.init: where the learnable rotary encodings start. `rope` starts exactly at axial RoPE of the
encoding's own rope_base, so a run can tell what an encoding learns from where it starts; `spectral` (the
default, and every published run's) is RoPE-Mixed's spectrum in random directions."""
import pytest
import torch

from rpe_bench import pos
from rpe_bench.config import ConfigError, validate
from rpe_bench.coordinates import grid_coordinates
from rpe_bench.model import VisionTransformer, VitShape
from tests.helpers import TINY_RUN, compose_config, read_results, run_training

STARTS_AS_ROPE_ON_REQUEST = ["rope_mixed", "liere", "comrope_ap", "comrope_ld"]


def model(encoding: str, axes: int, options: dict) -> VisionTransformer:
    """At seed 1, with the global RNG at 0: the shared weights are the same for every encoding."""
    torch.manual_seed(0)
    frames = {1: None, 2: None, 3: 4}[axes]
    shape = VitShape(image_size=8, patch_size=2, channels=1, num_classes=5, emb_dim=64, depth=2, num_heads=2,
                     frames=frames)
    return VisionTransformer(shape, encoding, options, seed=1,
                             coordinates="flat" if axes == 1 else "grid").eval()


@pytest.mark.parametrize("axes", [1, 2, 3])
@pytest.mark.parametrize("encoding", STARTS_AS_ROPE_ON_REQUEST)
def test_init_rope_gives_ropes_logits_before_the_first_step(encoding, axes):
    options = {**pos.configured_defaults(encoding), "init": "rope", "rope_base": 100.0}
    if encoding in ("comrope_ap", "comrope_ld") and axes == 3:
        options["block_size"] = 2  # 16 pairs over (t, x, y) split 6, 5, 5: only pairs fill such blocks
    images = torch.randn(3, 1, *((4,) if axes == 3 else ()), 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rope = model("rope", axes, {"rope_base": 100.0})(images)
        started = model(encoding, axes, options)(images)
    assert rope.abs().max() > 0.1
    torch.testing.assert_close(started, rope, rtol=0, atol=1e-5)


@pytest.mark.parametrize("encoding", STARTS_AS_ROPE_ON_REQUEST)
def test_init_rope_rotates_q_exactly_as_rope_does_and_the_default_does_not(encoding):
    """Per token, not only through the logits: the block layout's permutation is folded away."""
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 17, 32, generator=generator), torch.randn(2, 2, 17, 32, generator=generator)
    coords = grid_coordinates((4, 4))
    rope = pos.build("rope", head_dim=32, num_heads=2, rope_base=100.0)
    options = {**pos.configured_defaults(encoding), "rope_base": 100.0}
    started = pos.build(encoding, head_dim=32, num_heads=2, generator=torch.Generator().manual_seed(0),
                        **{**options, "init": "rope"})
    spectral = pos.build(encoding, head_dim=32, num_heads=2, generator=torch.Generator().manual_seed(0), **options)
    expected = rope.rotate(q, k, coords)
    for ours, theirs in zip(started.rotate(q, k, coords), expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=32 * torch.finfo(torch.float32).eps * 10)
    assert (spectral.rotate(q, k, coords)[0] - expected[0]).abs().max() > 0.1


@pytest.mark.parametrize("encoding, options, message", [
    ("circulant", {"init": "rope"}, "init='rope' is not allowed for circulant (its generators are circulant: their "
                                    "rotating planes are fixed Fourier modes, never RoPE's channel pairs; and it "
                                    "has no public reference code to start as): allowed spectral"),
    ("liere", {"init": "paper"}, "init='paper' is not allowed for liere: allowed spectral, rope, reference"),
    ("comrope_ap", {"init": "rope", "axes": 3}, "init='rope' is not allowed for comrope_ap with block_size=8 over "
                                                "3 axes: its blocks give the axes [8, 4, 4] pairs and axial RoPE "
                                                "[6, 5, 5]"),
    ("comrope_ld", {"init": "rope", "axes": 3}, "init='rope' is not allowed for comrope_ld with block_size=8 over "
                                                "3 axes: a block would hold pairs of two axes"),
])
def test_a_start_an_encoding_cannot_take_is_refused_with_one_line(encoding, options, message):
    with pytest.raises(ValueError) as refused:
        pos.build(encoding, head_dim=32, num_heads=2, **{**pos.configured_defaults(encoding), **options})
    (line,) = str(refused.value).splitlines()
    assert line.startswith(message)


def test_init_rope_is_refused_on_the_command_line_for_circulant():
    with pytest.raises(ConfigError, match="pos=circulant with emb_dim 32 and 2 heads: init='rope' is not allowed"):
        validate(compose_config(*TINY_RUN, "pos=circulant", "+pos.options.init=rope"))


def test_the_start_is_recorded_and_labels_the_variant(monkeypatch, tmp_path):
    from rpe_bench.compare import collect_results, summarize
    for init in ("rope", "spectral"):
        run_training(monkeypatch, f"hydra.run.dir={tmp_path / init}", "pos=liere", f"pos.options.init={init}")
        assert read_results(tmp_path / init)["resolved_config"]["pos"]["options"]["init"] == init
    labels = {row.label for row in summarize(collect_results([tmp_path]))}
    assert labels == {"liere (block_size=8, init=rope, rope_base=10)", "liere (block_size=8, init=spectral, "
                                                                        "rope_base=10)"}


@pytest.mark.parametrize("name, buffer", [("rope", "theta"), ("circulant", "fourier_basis")])
def test_constant_buffers_are_built_in_the_modules_dtype_not_widened_from_float32(name, buffer):
    encoding = pos.build(name, head_dim=32, num_heads=2, **pos.configured_defaults(name))
    single = getattr(encoding, buffer).clone()
    double = getattr(encoding.double(), buffer)
    assert double.dtype == torch.float64
    if name == "rope":  # base 100: theta_t = 100^(-t / 8) over each axis's 8 pairs
        expected = 100.0 ** (-torch.arange(8, dtype=torch.float64) / 8)
        assert torch.equal(double[0, 0, :8], expected) and torch.equal(double[1, 0, 8:], expected)
    else:  # orthogonal to float64's rounding, which float32 values widened are not
        identity = torch.eye(32, dtype=torch.float64)
        assert (double @ double.T - identity).abs().max() < 64 * torch.finfo(torch.float64).eps
        assert (single.double() @ single.double().T - identity).abs().max() > 1e3 * torch.finfo(torch.float64).eps
    assert not torch.equal(double, single.double())
    assert torch.equal(getattr(encoding.float(), buffer), single)  # and back, bit for bit


def test_init_reference_starts_each_encoding_as_its_reference_code_does():
    generator = torch.Generator().manual_seed(0)
    options = {"head_dim": 64, "num_heads": 4, "generator": generator}
    liere = pos.build("liere", **options, **{**pos.configured_defaults("liere"), "init": "reference"})
    entries = liere.skew_entries.detach()
    assert entries.min() >= 0 and entries.max() < 2 * torch.pi  # LieRE: uniform in [0, 2 pi)
    assert abs(entries.mean().item() - torch.pi) < 0.1
    ap = pos.build("comrope_ap", **options, **{**pos.configured_defaults("comrope_ap"), "init": "reference"})
    # ComRoPE: B = F - F^T with F ~ N(0, 1), so each free entry ~ N(0, 2).
    assert abs(ap.skew_entries.detach().std().item() - 2 ** 0.5) < 0.1
    ld = pos.build("comrope_ld", **options, **{**pos.configured_defaults("comrope_ld"), "init": "reference"})
    scales = ld.scales.detach()
    assert torch.equal(scales, scales[:, :1].expand_as(scales))  # one multiplier per (axis, block), every head
    mixed = pos.build("rope_mixed", head_dim=64, num_heads=4, generator=torch.Generator().manual_seed(1),
                      **{**pos.configured_defaults("rope_mixed"), "init": "reference"})
    spectral = pos.build("rope_mixed", head_dim=64, num_heads=4, generator=torch.Generator().manual_seed(1),
                         **pos.configured_defaults("rope_mixed"))
    assert torch.equal(mixed.frequencies(), spectral.frequencies())  # rope-vit's own init is the default


def test_a_sweep_of_variants_takes_a_start_for_every_job_as_the_starts_study_sets_it(tmp_path):
    """scripts/reproduce_study.sh starts: a multirun composes its config once without the swept variant (pos=rope,
    no init option) before any job, so the start is set with `++`; every job must still get it."""
    from tests.test_parallel import sweep
    completed = sweep("variant=liere,comrope_ld", "++pos.options.init=rope", "++pos.options.rope_base=100",
                      "hydra/launcher=basic", "hydra.sweep.subdir=${hydra:runtime.choices.variant}",
                      sweep_dir=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:]
    for encoding in ("liere", "comrope_ld"):
        options = read_results(tmp_path / encoding)["resolved_config"]["pos"]["options"]
        assert (options["init"], options["rope_base"]) == ("rope", 100.0)
