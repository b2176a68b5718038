"""Attention logits of the reference implementations, in float64, for fixed parameters, positions, q and k: the
numbers tests/test_reference_fidelity.py matches our encodings to after the documented mapping (docs/design.md,
"Against the reference code"). The reference code is not part of this project: check each repository out
(the `fetch` tool, or git clone) and pass its folder; the output holds numbers only.

    python scripts/reference_logits.py --rope-vit ROPE_VIT --liere LIERE --comrope COMROPE \\
        --output tests/golden/reference_logits.json

It needs what the reference code imports (timm, einops, ipdb, transformers), none of which this project uses.
Each reference computes in float32 somewhere: rope-vit's apply_rotary_emb casts q and k (the script calls
compute_mixed_cis in float64 and does the complex product itself, in float64), LieRE's forward casts before
matrix_exp (the script runs it with torch.float32 read as float64).
"""
import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch

HEAD_DIM, HEADS, GRID = 8, 2, 3  # 3 x 3 patches plus CLS


def commit_of(folder: Path) -> str:
    found = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def import_from(folder: Path, module: str):
    """`module` from the checkout `folder`, first on the path; a module of the same top-level name imported from
    another checkout (rope-vit's deit/models.py, LieRE's models/ package) is forgotten first."""
    top = module.split(".")[0]
    for name in [name for name in sys.modules if name == top or name.startswith(f"{top}.")]:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:  # a plain models.py left on the path would shadow the next checkout's models/ namespace package
        sys.path.remove(str(folder))


class Float64Torch:
    """torch, except that torch.float32 is float64: for reference code that casts to float32 before a step."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def listed(tensor: torch.Tensor) -> list:
    return tensor.tolist()


def logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(heads, tokens, tokens) q_i . k_j, unscaled."""
    return q @ k.transpose(-1, -2)


def rope_mixed(folder: Path, generator: torch.Generator) -> dict:
    """rope-vit's RoPE-Mixed: init_random_2d_freqs and compute_mixed_cis, pairs (2n, 2n + 1) as complex numbers;
    patches only (rope-vit leaves CLS unrotated)."""
    reference = import_from(folder / "deit", "models_v2_rope")
    torch.manual_seed(0)
    freqs = reference.init_random_2d_freqs(HEAD_DIM, HEADS, theta=10.0).double()  # (2, heads, d/2)
    t_x, t_y = (axis.double() for axis in reference.init_t_xy(GRID, GRID))
    cis = reference.compute_mixed_cis(freqs.view(2, 1, -1), t_x, t_y, HEADS)[0]  # (heads, N, d/2) complex128
    q, k = (torch.randn(HEADS, GRID * GRID, HEAD_DIM, generator=generator, dtype=torch.float64) for _ in range(2))

    def rotate(x):  # apply_rotary_emb's product, without its cast to float32
        return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * cis).flatten(-2)

    return {"freqs": listed(freqs), "t_x": listed(t_x), "t_y": listed(t_y), "q": listed(q), "k": listed(k),
            "logits": listed(logits(rotate(q), rotate(k)))}


def liere(folder: Path, generator: torch.Generator, block_size: int = 4) -> dict:
    """LieRE's LierePositionEncoder (positions linspace(0, 1) per axis, axis 0 the row, CLS identity) and
    FlexibleAttention.apply_transforms; the exponent from RETURN_POSITIONS, exponentiated in float64."""
    reference = import_from(folder, "models.rope_vit")
    encoder = reference.LierePositionEncoder(
        image_size=GRID * 4, patch_size=4, dim=HEADS * HEAD_DIM, phase_type="learned",
        position_sequencing_type="sequential", heads=HEADS, input_dimensionality=2, generator_dim=block_size,
        depth=1, rotary_embedding_per_layer=False, rotary_embedding_per_head=True).double()
    with torch.no_grad():
        encoder.generator_raw_params.copy_(torch.rand(encoder.generator_raw_params.shape, generator=generator,
                                                      dtype=torch.float64) * 2 * torch.pi)
    positions = reference.PositionEncoderBase.forward(encoder, torch.tensor([[GRID * 4, GRID * 4]]))
    reference.torch = Float64Torch()  # its forward exponentiates in torch.float32: here that name is float64
    try:
        transforms = encoder(torch.tensor([[GRID * 4, GRID * 4]]), torch.float64)  # (1, tokens, 1, G, b, b)
    finally:
        reference.torch = torch
    attention = reference.FlexibleAttention.__new__(reference.FlexibleAttention)
    attention.dim_head, attention.learnable_heads_rotations = HEAD_DIM, HEADS
    q, k = (torch.randn(1, HEADS, 1 + GRID * GRID, HEAD_DIM, generator=generator, dtype=torch.float64)
            for _ in range(2))
    rotated = [reference.FlexibleAttention.apply_transforms(attention, x, transforms)[0] for x in (q, k)]
    return {"block_size": block_size, "generator_raw_params": listed(encoder.generator_raw_params.detach()),
            "positions": listed(positions[0]), "q": listed(q[0]), "k": listed(k[0]),
            "logits": listed(logits(*rotated))}


def comrope(folder: Path, generator: torch.Generator, variant: str, block_size: int = 4) -> dict:
    """ComRoPE's attention modules (AP, LD): get_positions (axis_scale: (i + 1/2) / P, axis 0 the row; CLS at
    0.5 on each axis) and get_rotation_matrix, run in float64."""
    reference = import_from(folder, "model")
    config = reference.CustomVITConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                                       block_size=block_size, num_axes=2, image_size=GRID * 4, patch_size=4)
    module = {"ap": reference.ComRoPEAPAttention, "ld": reference.ComRoPELDAttention}[variant](config).double()
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim == 5:  # freqs (and LD's multiplier): the encoding's parameters
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    positions = config.get_positions().double()
    module.set_positions(positions[None])
    rotations = module.get_rotation_matrix()[0]  # (tokens, heads, d, d)
    q, k = (torch.randn(HEADS, positions.shape[0], HEAD_DIM, generator=generator, dtype=torch.float64)
            for _ in range(2))
    rotated = [torch.einsum("thij,htj->hti", rotations, x) for x in (q, k)]
    case = {"block_size": block_size, "freqs": listed(module.freqs.detach()), "positions": listed(positions),
            "q": listed(q), "k": listed(k), "logits": listed(logits(*rotated))}
    if variant == "ld":
        case["multiplier"] = listed(module.multiplier.detach())
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("rope-vit", "liere", "comrope"):
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"a checkout of the {name} repository")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)  # ComRoPE builds its block-diagonal matrix in the default dtype
    generator = torch.Generator().manual_seed(0)
    cases = {"rope_mixed": rope_mixed(args.rope_vit, generator), "liere": liere(args.liere, generator),
             "comrope_ap": comrope(args.comrope, generator, "ap"), "comrope_ld": comrope(args.comrope, generator, "ld")}
    sources = {"rope_mixed": ("naver-ai/rope-vit", args.rope_vit), "liere": ("StanfordMIMI/LieRE", args.liere),
               "comrope_ap": ("Longin-Yu/ComRoPE", args.comrope), "comrope_ld": ("Longin-Yu/ComRoPE", args.comrope)}
    for name, (repository, folder) in sources.items():
        cases[name]["reference"] = {"repository": repository, "commit": commit_of(folder)}
    args.output.write_text(json.dumps({"head_dim": HEAD_DIM, "heads": HEADS, "grid": GRID, "cases": cases}) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
