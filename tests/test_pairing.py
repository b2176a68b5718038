"""Common random numbers: at one seed every encoding starts from the same shared weights and sees the same
batches, so per-seed differences between encodings come from the encodings alone and pair across seeds."""
import inspect

import pytest
import torch
import torch.nn.functional as F

from rpe_bench import pos
from rpe_bench.data import Augment, BatchIterator, load_splits
from rpe_bench.model import build_model, parameter_groups
from tests.helpers import compose_config

# Two blocks, so the per-layer streams can be told apart; f = 0.3 so cayley_sparse's mask is a real draw.
SMALL_MODEL = ["dataset=digits", "model.emb_dim=32", "model.depth=2", "model.num_heads=2", "sparsity=f0.3"]
# The encodings that draw random numbers at init: those whose constructor takes the model's generator.
RANDOM_INIT = [name for name in pos.available()
               if "generator" in inspect.signature(pos.encoding_type(name)).parameters]


def seeded_model(name: str, seed: int, *overrides: str):
    """The model as training builds it: the global RNG seeded with the run seed, then build_model(cfg)."""
    cfg = compose_config(*SMALL_MODEL, f"pos={name}", f"seed={seed}", *overrides)
    torch.manual_seed(cfg.seed)
    return build_model(cfg), cfg


def shared_parameters(model) -> dict:
    """Every parameter but the encodings' own and the APE table."""
    return {name: parameter for name, parameter in model.named_parameters()
            if ".attention.position." not in name and name != "absolute_table"}


def encoding_state(model, layer: int) -> dict:
    return model.blocks[layer].attention.position.state_dict()


@pytest.mark.parametrize("seed", [0, 5])
def test_every_encoding_starts_from_the_same_shared_weights_and_rng_state(seed):
    reference, _ = seeded_model("rope", seed)
    reference_rng = torch.get_rng_state()
    expected = shared_parameters(reference)
    assert {"patch_embedding.weight", "cls_token", "blocks.1.attention.qkv.weight", "blocks.1.mlp.3.bias",
            "norm.weight", "head.weight"} <= expected.keys()
    for name in pos.available():
        model, _ = seeded_model(name, seed)
        # Dropout and anything else drawn from the global RNG during training continue from the same state.
        assert torch.equal(torch.get_rng_state(), reference_rng), name
        shared = shared_parameters(model)
        assert shared.keys() == expected.keys(), name
        for key, parameter in expected.items():
            assert torch.equal(shared[key], parameter), f"{name}: {key}"


def test_shared_weights_follow_the_seed():
    first, _ = seeded_model("rope", 0)
    second, _ = seeded_model("rope", 1)
    assert not torch.equal(first.head.weight, second.head.weight)


@pytest.mark.parametrize("name", RANDOM_INIT)
def test_encoding_draws_come_from_the_seed_and_the_layer_alone(name):
    model, cfg = seeded_model(name, 3)
    torch.manual_seed(12345)  # another global RNG state: the encoding draws must not see it
    rebuilt = build_model(cfg)
    other_seed, _ = seeded_model(name, 4)
    first_layer, second_layer = encoding_state(model, 0), encoding_state(model, 1)
    for key, value in first_layer.items():
        assert torch.equal(encoding_state(rebuilt, 0)[key], value), key
    # What the draws filled (a mask, vectors, angles, rotations) differs between seeds and between layers.
    drawn = [key for key, value in first_layer.items() if not torch.equal(encoding_state(other_seed, 0)[key], value)]
    assert drawn, f"{name} takes a generator but nothing it holds depends on the seed"
    for key in drawn:
        assert not torch.equal(second_layer[key], first_layer[key]), f"layers 0 and 1 share {key}"


def test_ape_table_comes_from_the_seed_alone():
    model, cfg = seeded_model("ape", 3)
    torch.manual_seed(12345)
    assert torch.equal(build_model(cfg).absolute_table, model.absolute_table)
    assert not torch.equal(seeded_model("ape", 4)[0].absolute_table, model.absolute_table)


def test_the_sparse_mask_is_saved_with_the_model():
    model, _ = seeded_model("cayley_sparse", 3)
    state = model.state_dict()
    for layer, block in enumerate(model.blocks):
        assert torch.equal(state[f"blocks.{layer}.attention.position.free_entries"],
                           block.attention.position.free_entries)


def training_losses(name: str, *overrides: str, steps: int = 30) -> list[float]:
    """Per-step training losses on digits, with batches, crops and flips drawn from a generator seeded by the
    run seed, as the training loop draws them."""
    model, cfg = seeded_model(name, 3, *overrides)
    train, _ = load_splits(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download, cfg.dataset.image_size,
                           cfg.dataset.channels)
    batches = BatchIterator(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed),
                            device="cpu", mean=list(cfg.dataset.mean), std=list(cfg.dataset.std),
                            augment=Augment(random_crop_padding=1, horizontal_flip=True), limit_batches=steps)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.trainer.weight_decay), lr=3e-3)
    losses = []
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_sparse_cayley_with_every_entry_trains_exactly_like_dense_cayley():
    dense = training_losses("cayley_dense")
    sparse = training_losses("cayley_sparse", "sparsity=dense")
    rope = training_losses("rope")
    assert len(dense) == 30
    assert sparse == dense
    # Not equal by construction: Cayley starts as exact RoPE (P = I), then its generator learns.
    assert rope[0] == dense[0]
    assert rope[-1] != dense[-1]
    assert dense[-1] < dense[0]
