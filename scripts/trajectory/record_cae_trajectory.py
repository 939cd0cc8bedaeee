#!/usr/bin/env python
"""Record ORIGINAL CAE v1 / v2 training trajectories (Atten4Vis/CAE) of seeded tiny models, as test fixtures.

    python scripts/trajectory/record_cae_trajectory.py --original_src ORIGINAL_CAE_TREE \
        [--output_dir tests/fixtures/trajectory_cae] [--steps 32 --batch 2 --seed 0]

ORIGINAL_CAE_TREE is an exported work tree of github.com/Atten4Vis/CAE. Its model and mask generator are imported from
there at run time through benchmarks/benchmark_cae.py's importer (stand-ins for timm and furnace.utils, which do not
import here), and the model is built by that benchmark's `build_original`. `furnace/utils.py` does not import (it
needs torch._six, tensorboardX, DALL-E, CLIP), so its `cosine_scheduler` and `furnace/optim_factory.py`'s
`get_parameter_groups` are compiled from the tree's source text, function by function (nothing of it is copied).

Two runs (`v1`: given DALL-E-like token ids as targets; `v2`: given CLIP-like teacher features), each in float32 and,
from the same initial weights, float64. Each step is `furnace/engine_for_pretraining.py`'s loop body: lr / wd of every
group from `cosine_scheduler` (lr: warmup epochs then cosine to min_lr, times the group's lr_scale; wd: the
cosine_scheduler of weight_decay -> weight_decay_end, set on the decaying groups only), the target preparation from
the given targets, `ContextAutoencoderViT.forward(samples, bool_masked_pos)`, the loss (v1: CE + align_loss_weight x
MSE; v2: latent_alignment_loss_weight x cosine embedding loss on L2-normalised targets), `optimizer.zero_grad()`,
backward, `clip_grad_norm_(model.parameters(), clip_grad)`, `optimizer.step()` (what NativeScaler does without CUDA:
its GradScaler is disabled on CPU, no autocast). The optimizer is torch AdamW over `get_parameter_groups(model,
weight_decay)` (create_optimizer's rule: no decay on 1-D / `.bias`; the pretraining model declares no skip list).
Drop path is 0 (the stand-in timm drop_path refuses > 0). `--clip_grad` defaults to 0.5, below the tiny models' grad
norms (the recipe's 3.0 would never bite here), so that clipping acts on every step.

Per step: random-normal images (rounded to float16, stored so), a block mask per image from the original `MaskingGenerator` (Python `random`,
seeded), and random targets (v1 ids of every patch; v2 features of [cls, patches row-major]). Recorded per run
(`{run}.safetensors` + `trajectory.json`): initial and final weights (the original's key names), final AdamW state
(`optim.{name}.{exp_avg|exp_avg_sq}`), the batches (`images.{s}`, `mask.{s}`, `targets.{s}`), per step the loss and
its parts, grad norm before clipping, and every group's lr / weight decay (and its members). `float_drift` is the
float32 vs float64 gap (losses per step, final weights), the noise scale a port cannot beat.
"""

import argparse
import ast
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_cae as bench  # noqa: E402


def original_function(path: Path, name: str, namespace: dict):
    """Compile one top-level function of an original source file (that does not import here) from its text."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    module = ast.Module(body=[node], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102
    return namespace[name]


def workload(a, version: int) -> bench.Workload:
    return bench.Workload(
        version=version,
        regressor_depth=1,
        decoder_depth=1 if version == 1 else 0,
        decoder_width=a.width,
        image_size=a.image_size,
        patch_size=a.patch_size,
        width=a.width,
        depth=a.depth,
        heads=a.heads,
        decoder_heads=a.heads,
        num_masked=a.num_masked,
        min_block=a.min_block,
        vocab_size=a.vocab_size,
        target_dim=a.target_dim,
    )


def make_batches(original, load: bench.Workload, a) -> list[dict]:
    generator = torch.Generator().manual_seed(a.seed + 1)
    grid = load.image_size // load.patch_size
    masker = original.MaskingGenerator(grid, num_masking_patches=load.num_masked, min_num_patches=load.min_block)
    random.seed(a.seed)
    batches = []
    for _ in range(a.steps):
        images = torch.randn(a.batch, 3, load.image_size, load.image_size, generator=generator).half().float()
        mask = torch.stack([torch.from_numpy(masker()).flatten().bool() for _ in range(a.batch)])
        if load.version == 1:
            targets = torch.randint(0, load.vocab_size, (a.batch, grid * grid), generator=generator)
        else:
            targets = torch.randn(a.batch, 1 + grid * grid, load.target_dim, generator=generator)
        batches.append({"images": images, "mask": mask, "targets": targets})
    return batches


def run(model, batches, a, version, schedules, get_parameter_groups, dtype):
    model = __import__("copy").deepcopy(model).to(dtype).train()
    groups = get_parameter_groups(model, a.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0, eps=1e-8)
    lr_values, wd_values = schedules
    log = []
    for it, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_values[it] * group["lr_scale"]
            if group["weight_decay"] > 0:
                group["weight_decay"] = wd_values[it]
        images, bool_masked_pos, targets = batch["images"].to(dtype), batch["mask"], batch["targets"]
        with torch.no_grad():
            if version == 2:
                input_ids = targets.to(dtype)
                channels = input_ids.shape[-1]
                cls_token_labels, input_ids = input_ids[:, :1, :], input_ids[:, 1:, :]
                masked_labels = input_ids[bool_masked_pos].reshape(images.shape[0], -1, channels)
                unmasked_labels = input_ids[~bool_masked_pos].reshape(images.shape[0], -1, channels)
                labels = torch.cat([cls_token_labels, unmasked_labels, masked_labels], dim=1)
            else:
                labels = targets[bool_masked_pos]
        with bench.cpu_cuda_calls():
            outputs, latent_predict, latent_target = model(images, bool_masked_pos=bool_masked_pos)
        if version == 2:
            labels = labels / labels.norm(dim=-1, keepdim=True)
            channels = outputs.shape[-1]
            flat = labels.reshape(-1, channels)
            loss_main = a.latent_alignment_loss_weight * F.cosine_embedding_loss(
                outputs.reshape(-1, channels), flat, torch.ones_like(flat[:, 0]), reduction="mean"
            )
            loss_align = torch.zeros((), dtype=dtype)
        else:
            loss_main = nn.CrossEntropyLoss()(input=outputs, target=labels)
            loss_align = a.align_loss_weight * F.mse_loss(latent_predict, latent_target.detach(), reduction="mean")
        loss = loss_main + loss_align
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad)
        entry = {
            "loss": float(loss),
            "loss_main": float(loss_main),
            "loss_align": float(loss_align),
            "grad_norm": float(grad_norm),
            "groups": [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups],
        }
        optimizer.step()
        log.append(entry)
    return log, model, optimizer


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_src", required=True, type=Path, help="exported work tree of Atten4Vis/CAE")
    ap.add_argument("--output_dir", type=Path, default=REPO / "tests" / "fixtures" / "trajectory_cae")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="the run is `epochs` epochs of steps / epochs steps")
    ap.add_argument("--warmup_epochs", type=int, default=1)
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--patch_size", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--num_masked", type=int, default=6)
    ap.add_argument("--min_block", type=int, default=2)
    ap.add_argument("--vocab_size", type=int, default=64)
    ap.add_argument("--target_dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min_lr", type=float, default=1e-5)
    ap.add_argument("--weight_decay", type=float, default=0.05)
    ap.add_argument("--weight_decay_end", type=float, default=0.1, help="None in the recipe (constant); here cosine")
    ap.add_argument("--clip_grad", type=float, default=0.5)
    ap.add_argument("--align_loss_weight", type=float, default=2.0)
    ap.add_argument("--latent_alignment_loss_weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    original, notes = bench.import_original(a.original_src)
    src = a.original_src.expanduser().resolve()
    cosine_scheduler = original_function(src / "furnace" / "utils.py", "cosine_scheduler", {"np": np, "math": math})
    get_parameter_groups = original_function(
        src / "furnace" / "optim_factory.py", "get_parameter_groups", {"json": json, "print": lambda *x, **k: None}
    )
    niter = a.steps // a.epochs
    quiet = {"print": lambda *x, **k: None}
    cosine_scheduler.__globals__.update(quiet)
    lr_values = cosine_scheduler(a.lr, a.min_lr, a.epochs, niter, warmup_epochs=a.warmup_epochs)
    wd_values = cosine_scheduler(a.weight_decay, a.weight_decay_end, a.epochs, niter)

    runs = {}
    a.output_dir.mkdir(parents=True, exist_ok=True)
    for version in (1, 2):
        name = f"v{version}"
        load = workload(a, version)
        generator = torch.Generator().manual_seed(a.seed)
        torch.manual_seed(a.seed)
        model = bench.build_original(original, load)
        bench.randomize_vectors(model, generator)
        batches = make_batches(original, load, a)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        args = (batches, a, version, (lr_values, wd_values), get_parameter_groups)
        log, final, optimizer = run(model, *args, torch.float32)
        log64, final64, _ = run(model, *args, torch.float64)
        kept = lambda k: not k.startswith("alignment_encoder.")  # noqa: E731  (the encoder's twin: dropped on load)
        out = {f"initial.{k}": v.clone() for k, v in initial.items() if kept(k)}
        out.update({f"final.{k}": v.detach().clone() for k, v in final.state_dict().items() if kept(k)})
        names = {id(p): n for n, p in final.named_parameters()}
        for p, state in optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    out[f"optim.{names[id(p)]}.{key}"] = value.contiguous()
        for s, batch in enumerate(batches):
            out[f"images.{s}"] = batch["images"].half()  # exact: the images are float16 values
            out[f"mask.{s}"] = batch["mask"]
            out[f"targets.{s}"] = batch["targets"].to(torch.int16) if version == 1 else batch["targets"]
        for entry, entry64 in zip(log, log64):
            entry["loss_float64"] = entry64["loss"]
        f64 = final64.state_dict()
        drift = {
            "loss": max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(log, log64)),
            "weights": max(
                relative_gap(v, f64[k])
                for k, v in final.state_dict().items()
                if v.is_floating_point() and kept(k) and not k.endswith("norm1_k.bias")
            ),
            # the regressor's key LayerNorm bias: zero gradient in exact arithmetic (a shift common to all keys
            # cancels in the softmax), so Adam steps it by normalised rounding noise; its drift is kept apart
            "key_norm_bias": max(
                (relative_gap(v, f64[k]) for k, v in final.state_dict().items() if k.endswith("norm1_k.bias")),
                default=0.0,
            ),
        }
        save_file(out, a.output_dir / f"{name}.safetensors")
        runs[name] = {
            "workload": {k: getattr(load, k) for k in load.__dataclass_fields__},
            "group_members": [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups],
            "steps": log,
            "float_drift": drift,
        }
        norms = [x["grad_norm"] for x in log]
        print(f"{name}: loss {log[0]['loss']:.5f} -> {log[-1]['loss']:.5f}; grad norm {min(norms):.3g}..{max(norms):.3g}"
              f"; fp32 vs fp64 drift {drift}")  # fmt: skip
    record = {
        "original": "Atten4Vis/CAE",
        "original_commit": (src / ".source_commit").read_text().strip() if (src / ".source_commit").exists() else None,
        "torch": torch.__version__,
        "notes": notes,
        "arguments": {k: v for k, v in vars(a).items() if k not in ("original_src", "output_dir")},
        "runs": runs,
    }
    (a.output_dir / "trajectory.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(p.stat().st_size for p in a.output_dir.iterdir()) / 2**20
    print(f"recorded {a.steps} steps x 2 runs to {a.output_dir} ({size:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
