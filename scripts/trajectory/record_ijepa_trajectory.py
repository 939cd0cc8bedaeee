#!/usr/bin/env python
"""Record the ORIGINAL I-JEPA training trajectory (facebookresearch/ijepa) of a seeded tiny model, as a test fixture.

    python scripts/trajectory/record_ijepa_trajectory.py --original_src ORIGINAL_IJEPA_TREE \
        [--output_dir tests/fixtures/trajectory_ijepa] [--steps 32 --batch 8 --img 32 --patch 4 --seed 0]

ORIGINAL_IJEPA_TREE is an exported work tree of github.com/facebookresearch/ijepa (the fixtures used commit
52c1ae95d05f743e000e8f10a1f3a79b10cff048). Its modules are imported from there at run time; nothing of it is copied.

What runs is the original's `src/train.py` step, single process, float32, on CPU: `helper.init_model` (its init),
`helper.init_opt` (AdamW with its four parameter groups, `WarmupCosineSchedule`, `CosineWDSchedule`), the linear
EMA momentum generator, the original `MaskCollator`, and per step: scheduler.step(), wd_scheduler.step(), target
forward (layer_norm, apply_masks, repeat_interleave_batch), context encoder + predictor, smooth-L1, backward,
optimizer.step(), EMA `param_k.mul_(m).add_((1 - m) * param_q)`. The step is written out here (train.py keeps it
in a closure) following the original line by line.

Recorded (`trajectory.safetensors` + `trajectory.json`): the initial weights (`initial.encoder.*`,
`initial.predictor.*`, the original's key names), every batch (`batch.{step}`, float16-exact values: the images are
rounded to float16 before the original sees them, so the fixture reproduces them bit for bit), every mask
(`masks_enc.{step}`, `masks_pred.{step}`, mask-major (n, B, K) as the original's collator returns them), the
per-step loss, the lr and weight decay of each of the four parameter groups (and which parameters each holds), the
EMA momentum, and the final weights of the context encoder, predictor and target encoder. The same trajectory is
replayed in float64 from the same initial weights; the float32-vs-float64 gap (`float_drift`) is the noise scale a
port cannot beat and sets the test tolerance.

Also recorded, for the transform comparison: the original `make_transforms` output of a few bundled photos for
fixed seeds (`transform.{image}.{seed}`), and the original `MaskCollator` alone from a fixed global seed
(`sampler.{i}.enc` / `.pred`), for the block-sampler comparison.
"""

import argparse
import copy
import importlib
import json
import logging
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
TRANSFORM_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image photos, shipped in its wheel
TRANSFORM_SEEDS = (0, 1, 2)
SAMPLER_SEED, SAMPLER_BATCHES = 123, 6


def photos() -> list:
    import PIL.Image
    import skimage.data

    return [PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in TRANSFORM_IMAGES]


def import_original(src: Path) -> dict:
    sys.path.insert(0, str(src.resolve()))
    names = {
        "vit": "src.models.vision_transformer",
        "helper": "src.helper",
        "multiblock": "src.masks.multiblock",
        "mask_utils": "src.masks.utils",
        "tensors": "src.utils.tensors",
        "transforms": "src.transforms",
    }
    modules = {key: importlib.import_module(name) for key, name in names.items()}
    logging.getLogger().setLevel(logging.WARNING)
    return modules


def build_models(orig, a):
    """The original init_model with an encoder factory of the tiny size (the original vit_* factory arguments)."""
    vit = orig["vit"]

    def tiny_vit(patch_size=16, **kwargs):
        return vit.VisionTransformer(
            patch_size=patch_size, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.heads, mlp_ratio=4,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kwargs,
        )  # fmt: skip

    vit.__dict__["_trajectory_tiny_vit"] = tiny_vit
    torch.manual_seed(a.seed)
    encoder, predictor = orig["helper"].init_model(
        device=torch.device("cpu"), patch_size=a.patch, crop_size=a.img, pred_depth=a.pred_depth,
        pred_emb_dim=a.pred_emb, model_name="_trajectory_tiny_vit",
    )  # fmt: skip
    return encoder, predictor


def record_batches(orig, a):
    """Every batch (original transforms on the bundled photos, rounded to float16) and the original's masks."""
    transform = orig["transforms"].make_transforms(
        crop_size=a.img, crop_scale=tuple(a.crop_scale), horizontal_flip=False, color_distortion=False,
        gaussian_blur=False,
    )  # fmt: skip
    collator = orig["multiblock"].MaskCollator(
        input_size=a.img, patch_size=a.patch, pred_mask_scale=tuple(a.pred_mask_scale),
        enc_mask_scale=tuple(a.enc_mask_scale), aspect_ratio=tuple(a.aspect_ratio), nenc=a.nenc, npred=a.npred,
        allow_overlap=False, min_keep=a.min_keep,
    )  # fmt: skip
    images = photos()
    generator = torch.Generator().manual_seed(a.seed)
    steps = []
    for _ in range(a.steps):
        chosen = torch.randint(len(images), (a.batch,), generator=generator).tolist()
        samples = [(transform(images[i]).half().float(), 0) for i in chosen]
        (pixels, _), masks_enc, masks_pred = collator(samples)
        steps.append((pixels, [m.clone() for m in masks_enc], [m.clone() for m in masks_pred]))
    return steps


def run(orig, a, encoder, predictor, batches, dtype):
    """The original train.py step, replayed over the recorded batches; returns the log and the final modules."""
    encoder, predictor = copy.deepcopy(encoder).to(dtype), copy.deepcopy(predictor).to(dtype)
    target_encoder = copy.deepcopy(encoder)
    for p in target_encoder.parameters():
        p.requires_grad = False
    optimizer, _, scheduler, wd_scheduler = orig["helper"].init_opt(
        encoder=encoder, predictor=predictor, wd=a.wd, final_wd=a.final_wd, start_lr=a.start_lr, ref_lr=a.lr,
        final_lr=a.final_lr, iterations_per_epoch=a.steps, warmup=a.warmup_frac, num_epochs=1, ipe_scale=1.0,
        use_bfloat16=False,
    )  # fmt: skip
    ema = a.ema
    momentum_scheduler = (ema[0] + i * (ema[1] - ema[0]) / a.steps for i in range(a.steps + 1))
    apply_masks, repeat_interleave_batch = orig["mask_utils"].apply_masks, orig["tensors"].repeat_interleave_batch
    log = []
    for pixels, masks_enc, masks_pred in batches:
        imgs = pixels.to(dtype)
        scheduler.step()
        wd_scheduler.step()
        with torch.no_grad():
            h = target_encoder(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h, masks_pred)
            h = repeat_interleave_batch(h, len(imgs), repeat=len(masks_enc))
        z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        loss.backward()
        groups = [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            m = next(momentum_scheduler)
            for param_q, param_k in zip(encoder.parameters(), target_encoder.parameters()):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        log.append({"loss": loss.item(), "groups": groups, "momentum": m})
    return log, {"encoder": encoder, "predictor": predictor, "target_encoder": target_encoder}, optimizer


def group_members(optimizer, modules) -> list[list[str]]:
    """Original parameter names (`encoder.*` / `predictor.*`) in each optimizer group."""
    names = {id(p): f"{part}.{n}" for part, m in modules.items() for n, p in m.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_src", required=True, type=Path, help="exported work tree of facebookresearch/ijepa")
    ap.add_argument("--output_dir", type=Path, default=REPO / "tests" / "fixtures" / "trajectory_ijepa")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--embed_dim", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--pred_emb", type=int, default=16)
    ap.add_argument("--pred_depth", type=int, default=2)
    ap.add_argument("--nenc", type=int, default=1)
    ap.add_argument("--npred", type=int, default=4)
    ap.add_argument("--pred_mask_scale", type=float, nargs=2, default=(0.15, 0.2))
    ap.add_argument("--enc_mask_scale", type=float, nargs=2, default=(0.85, 1.0))
    ap.add_argument("--aspect_ratio", type=float, nargs=2, default=(0.75, 1.5))
    ap.add_argument("--min_keep", type=int, default=4)
    ap.add_argument("--crop_scale", type=float, nargs=2, default=(0.3, 1.0))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--start_lr", type=float, default=2e-4)
    ap.add_argument("--final_lr", type=float, default=1e-6)
    ap.add_argument("--warmup_frac", type=float, default=0.125, help="warmup = int(frac * steps) steps")
    ap.add_argument("--wd", type=float, default=0.04)
    ap.add_argument("--final_wd", type=float, default=0.4)
    ap.add_argument("--ema", type=float, nargs=2, default=(0.9, 1.0), help="momentum ramp (far from 1: the EMA shows)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(a.seed)

    orig = import_original(a.original_src)
    encoder, predictor = build_models(orig, a)
    batches = record_batches(orig, a)
    log, final, optimizer = run(orig, a, encoder, predictor, batches, torch.float32)
    log64, final64, _ = run(orig, a, encoder, predictor, batches, torch.float64)

    tensors = {}
    for part, module in (("encoder", encoder), ("predictor", predictor)):
        tensors.update({f"initial.{part}.{k}": v.contiguous() for k, v in module.state_dict().items()})
    for part, module in final.items():
        tensors.update({f"final.{part}.{k}": v.contiguous() for k, v in module.state_dict().items()})
    for step, (pixels, masks_enc, masks_pred) in enumerate(batches):
        tensors[f"batch.{step}"] = pixels.half()
        tensors[f"masks_enc.{step}"] = torch.stack(masks_enc).to(torch.int16)
        tensors[f"masks_pred.{step}"] = torch.stack(masks_pred).to(torch.int16)
    transform = orig["transforms"].make_transforms(
        crop_size=a.img, crop_scale=tuple(a.crop_scale), horizontal_flip=False, color_distortion=False,
        gaussian_blur=False,
    )  # fmt: skip
    for name, image in zip(TRANSFORM_IMAGES, photos()):
        for seed in TRANSFORM_SEEDS:
            torch.manual_seed(seed)
            tensors[f"transform.{name}.{seed}"] = transform(image)

    # The original's mask sampler on its own, from a fixed global seed (hf_mim's sampler="original" must repeat it).
    collator = orig["multiblock"].MaskCollator(
        input_size=a.img, patch_size=a.patch, pred_mask_scale=tuple(a.pred_mask_scale),
        enc_mask_scale=tuple(a.enc_mask_scale), aspect_ratio=tuple(a.aspect_ratio), nenc=a.nenc, npred=a.npred,
        allow_overlap=False, min_keep=a.min_keep,
    )  # fmt: skip
    torch.manual_seed(SAMPLER_SEED)
    for index in range(SAMPLER_BATCHES):
        _, masks_enc, masks_pred = collator([(torch.zeros(1), 0)] * a.batch)
        tensors[f"sampler.{index}.enc"] = torch.stack(masks_enc).to(torch.int16)
        tensors[f"sampler.{index}.pred"] = torch.stack(masks_pred).to(torch.int16)

    drift = {
        "loss": max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(log, log64)),
        "weights": {
            part: max(relative_gap(v, final64[part].state_dict()[k]) for k, v in final[part].state_dict().items())
            for part in final
        },
    }
    a.output_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, a.output_dir / "trajectory.safetensors")
    commit = (
        (a.original_src / ".source_commit").read_text().strip()
        if (a.original_src / ".source_commit").exists()
        else None
    )
    record = {
        "original": "facebookresearch/ijepa",
        "original_commit": commit,
        "torch": torch.__version__,
        "arguments": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items() if k not in ("original_src", "output_dir")},
        "transform": {"images": list(TRANSFORM_IMAGES), "seeds": list(TRANSFORM_SEEDS), "interpolation": "bilinear"},
        "sampler": {"seed": SAMPLER_SEED, "batches": SAMPLER_BATCHES},
        "group_members": group_members(optimizer, {"encoder": final["encoder"], "predictor": final["predictor"]}),
        "steps": log,
        "float_drift": drift,
    }  # fmt: skip
    (a.output_dir / "trajectory.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(p.stat().st_size for p in a.output_dir.iterdir()) / 2**20
    print(
        f"recorded {a.steps} steps to {a.output_dir} ({size:.2f} MiB); loss {log[0]['loss']:.5f} -> {log[-1]['loss']:.5f}"
    )
    print(f"float32 vs float64 drift of the original itself: {json.dumps(drift)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
