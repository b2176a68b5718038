"""Benchmark every position encoding: median train-step and inference time, as ratios to RoPE.

Every variant is timed in the same process, interleaved round by round with RoPE, on the reference notebook's
two model shapes at batch 128, so machine noise hits all variants alike. Also compares our RoPE ViT with
timm's EVA ViT with rotary embeddings at the same widths, and times RoPE, Cayley- and Reflection-STRING and LieRE
under bf16 autocast too (ratios to fp32 RoPE and to RoPE in bf16).

    python scripts/bench_pos.py --output docs/bench_pos            # writes .json and .md
    python scripts/bench_pos.py --device cuda --output /tmp/bench_gpu
    python scripts/bench_pos.py --rounds 1 --steps 1 --no-timm --output /tmp/bench_smoke   # runs, times nothing
    python scripts/bench_pos.py --shapes video --output docs/bench_pos_video   # the clip shape alone
"""
import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rpe_bench import pos, provenance
from rpe_bench.cost import Contender, interleaved_medians, perturb_position_parameters, warm_up
from rpe_bench.model import VisionTransformer, VitShape

# --shapes name -> (the results' label, the shape).
SHAPES = {
    "mnist": ("mnist (28x28, patch 7, emb 128)", VitShape(image_size=28, patch_size=7, channels=1, num_classes=10,
                                                          emb_dim=128, depth=4, num_heads=4)),
    "cifar": ("cifar (32x32, patch 4, emb 192)", VitShape(image_size=32, patch_size=4, channels=3, num_classes=10,
                                                          emb_dim=192, depth=4, num_heads=4)),
    # conf/dataset/moving_mnist.yaml's clips: positions (t, x, y), one-frame tubelets.
    "video": ("video (4 frames of 20x20, tubelet 1x4x4, emb 128)",
              VitShape(image_size=20, patch_size=4, channels=1, num_classes=20, emb_dim=128, depth=4, num_heads=4,
                       frames=4, tubelet_frames=1)),
}
CONF_POS = Path(__file__).resolve().parents[1] / "conf" / "pos"
SPARSE_FRACTIONS = (0.5, 0.1)


def benchmark_variants() -> list[tuple[str, str, dict, bool]]:
    """(label, registered name, options, APE table) for every encoding in conf/pos at its configured options,
    RoPE first; an encoding that reads sparsity.f at each of SPARSE_FRACTIONS; one with a start
    (pos.options.init) under init=rope too, at RoPE's base."""
    variants = []
    for path in sorted(CONF_POS.glob("*.yaml"), key=lambda path: (path.stem != "rope", path.stem)):
        config = OmegaConf.load(path)
        options = OmegaConf.to_container(config.get("options") or OmegaConf.create({}), resolve=False)
        table = bool(config.get("absolute_table", False))
        if "f" in options:
            variants += [(f"{config.name} f={f}", config.name, {**options, "f": f}, table) for f in SPARSE_FRACTIONS]
        else:
            variants.append((config.name, config.name, options, table))
        if "init" in options:  # also started as RoPE: its blocks laid over RoPE's pairs
            variants.append((f"{config.name} init=rope", config.name,
                             {**options, "init": "rope", "rope_base": pos.configured_defaults("rope")["rope_base"]},
                             table))
    return variants


# Variants also timed under bf16 autocast, the precision of the long CIFAR-10 runs; compared with RoPE in bf16.
BF16_VARIANTS = ["rope", "cayley_dense", "reflection", "liere"]


def timm_eva_rope(shape: VitShape) -> torch.nn.Module:
    from timm.models.eva import Eva
    return Eva(img_size=shape.image_size, patch_size=shape.patch_size, in_chans=shape.channels,
               num_classes=shape.num_classes, embed_dim=shape.emb_dim, depth=shape.depth,
               num_heads=shape.num_heads, mlp_ratio=shape.mlp_ratio, global_pool="token",
               use_abs_pos_emb=False, use_rot_pos_emb=True, rope_temperature=100.0)


def benchmark_shape(shape: VitShape, batch_size: int, rounds: int, steps: int, with_timm: bool,
                    device: torch.device) -> dict:
    torch.manual_seed(0)
    clip = () if shape.frames is None else (shape.frames,)
    images = torch.randn(batch_size, shape.channels, *clip, shape.image_size, shape.image_size, device=device)
    labels = torch.randint(0, shape.num_classes, (batch_size,), device=device)
    contenders = {}
    for label, name, options, absolute_table in benchmark_variants():
        try:
            model = VisionTransformer(shape, name, options, absolute_table=absolute_table)
        except ValueError as refused:  # init=rope where the blocks cannot hold RoPE's sections (3 axes)
            if options.get("init") != "rope":
                raise
            print(f"{label}: not timed at this shape, {refused}")
            continue
        perturb_position_parameters(model)
        contenders[label] = Contender(model, images, labels)
    for name in BF16_VARIANTS:
        model = VisionTransformer(shape, name)
        perturb_position_parameters(model)
        contenders[f"{name} bf16"] = Contender(model, images, labels, precision="bf16")
    if with_timm and shape.frames is None:  # timm's EVA takes images only
        contenders["timm EVA rope"] = Contender(timm_eva_rope(shape), images, labels)
    warm_up(contenders)
    medians = interleaved_medians(contenders, rounds, steps)
    rope, rope_bf16 = medians["rope"], medians["rope bf16"]
    results = {label: {"train_ms": m["train"], "inference_ms": m["inference"],
                       "train_ratio": m["train"] / rope["train"],
                       "inference_ratio": m["inference"] / rope["inference"]}
               for label, m in medians.items()}
    for name in BF16_VARIANTS:
        row = results[f"{name} bf16"]
        row["train_ratio_bf16"] = row["train_ms"] / rope_bf16["train"]
        row["inference_ratio_bf16"] = row["inference_ms"] / rope_bf16["inference"]
    return results


def markdown(results: dict, meta: dict) -> str:
    lines = ["# Position-encoding benchmark", "",
             f"{meta['machine']}; torch {meta['torch']}; {meta['threads']} threads; batch {meta['batch_size']}; "
             f"median over {meta['rounds']} interleaved rounds x {meta['steps']} steps; fp32 unless named. "
             "Train = forward + backward + AdamW step; inference = eval, `torch.inference_mode()`, STRING bases "
             "folded into W_q/W_k; LieRE and ComRoPE exponentiate their per-token rotations on every forward. "
             "Ratios are to our fp32 RoPE model in the same process; bf16 rows also give their ratio to RoPE "
             "under bf16.", "",
             f"Code: commit {meta['code']['commit']}{' (uncommitted changes)' if meta['code']['dirty'] else ''}; "
             + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()) + ".", ""]
    for shape, rows in results.items():
        lines += [f"## {shape}", "",
                  "| variant | train ms | train / RoPE | train / RoPE bf16 | inference ms | inference / RoPE "
                  "| inference / RoPE bf16 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, row in rows.items():
            bf16_train, bf16_inference = (f"{row[key]:.3f}" if key in row else "-"
                                          for key in ("train_ratio_bf16", "inference_ratio_bf16"))
            lines.append(f"| {label} | {row['train_ms']:.2f} | {row['train_ratio']:.3f} | {bf16_train} | "
                         f"{row['inference_ms']:.2f} | {row['inference_ratio']:.3f} | {bf16_inference} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/bench_pos"),
                        help="path stem: writes <stem>.json and <stem>.md")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-timm", action="store_true", help="skip the timm EVA comparison")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings wait for the GPU to finish)")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: all)")
    args = parser.parse_args()
    unknown = [name for name in args.shapes.split(",") if name not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}: allowed {', '.join(SHAPES)}")
    shapes = dict(SHAPES[name] for name in args.shapes.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {label: benchmark_shape(shape, args.batch_size, args.rounds, args.steps, not args.no_timm, device)
               for label, shape in shapes.items()}
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{provenance.cpu_model()} ({torch.get_num_threads()} threads)")
    meta = {"machine": machine, "device": str(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "rounds": args.rounds, "steps": args.steps, "encodings": pos.available(),
            "code": provenance.code_version(), "versions": provenance.library_versions()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(results, meta)
    args.output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
