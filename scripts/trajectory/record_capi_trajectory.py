#!/usr/bin/env python
"""Record the ORIGINAL CAPI training trajectory (facebookresearch/capi) of a seeded tiny model, as a test fixture.

    python scripts/trajectory/record_capi_trajectory.py --original_src ORIGINAL_CAPI_TREE \
        [--output_dir tests/fixtures/trajectory_capi] [--steps 32 --batch 8 --img 32 --patch 4 --seed 0] \
        [--original_commit SHA]

ORIGINAL_CAPI_TREE is an exported work tree of github.com/facebookresearch/capi (the fixture used commit 98b4fa1).
Its modules (`model`, `data`, `utils`, `train_capi`) are imported from there at run time; nothing of it is copied.
Needs `pip install jaxtyping omegaconf einops` (imported at module level by the original; not hf_mim dependencies).
Without xformers (a CPU machine), `xformers`, `xformers.profiler`, `xformers.checkpoint` and the original `fsdp.py`
(which registers ops in xformers' library at import) are replaced by placeholder modules: train_capi.py only
references the profiler, `selective_checkpoint_wrapper` and `SimpleFSDP`, none of which runs here. Any other module
the original imports and this machine lacks gets the same placeholder (reported on stdout).

What runs is `train_capi.train()`'s loop body, single process, on CPU, no FSDP / compile / activation checkpointing:
the configuration is the tree's `default_pretrain_config.yaml` merged with the tiny sizes below (as train_capi.py
merges a config file); the model is built as train() builds it (student + student_ema `EncoderDecoder` on meta ->
`to_empty`, `student.init_weights()`, teacher.backbone IS student_ema.backbone, `L2NormLinear` student / student_ema
heads, `OnlineClustering` teacher head, student_ema = copy of student); AdamW(`utils.get_params_groups(...)`,
betas (0.9, 0.95)), the three `WarmupThenCosine` schedules (lr, momentum, clustering lr), the clustering AdamW, the
disabled grad scaler; per step: lr / wd per group from the schedules, zero grads, `train_capi.do_teacher` +
`clustering_loss.backward()`, `train_capi.do_student`, `grad_scaler.scale(capi_loss.bfloat16()).backward()`,
optimizer step, EMA (`_foreach_mul_` / `_foreach_add_` of student into student_ema), `clustering_optimizer.step()`.

The schedules are compressed into the short run so that every one moves: total_iters = --steps, warmup_iters =
--warmup for the lr, the momentum and the clustering lr (the original's config uses one warmup for all three), the
momentum ramps 1.0 -> --momentum (0.9: far from 1, so the EMA shows) then a truncated cosine towards 1.0. The
weight decay is constant in CAPI (0.1 x the group's multiplier) and recorded as such.

Stochastic depth is off (--drop_path 0): the original draws which samples to drop with torch.randperm inside
`EfficientResidual`, hf_mim draws them differently, so with drop path the two code bases cannot follow the same
trajectory; everything else in the step is deterministic.

Recorded (`trajectory.safetensors` + `trajectory.json`): the initial weights (`initial.student.backbone.*`,
`initial.student.head.*`, `initial.teacher.head.*` = the clustering head, the original's key names), every batch
(`batch.{step}`, float16-exact values: the images are rounded to float16 before the original sees them), its masks
(`visible.{step}` / `predict.{step}`: the flat batch indices `collate_data_and_cast` returns, from the original
`InverseBlockMasking(roll=True)`), per step the two loss parts (`capi_loss`, `clustering_loss`) and the target
entropy, the lr and weight decay of every optimizer group (and which parameters each holds), the EMA momentum, the
clustering lr and weight decay, and the final weights of the student (`final.student.*`), the EMA model
(`final.student_ema.backbone.*` = the teacher backbone, `final.student_ema.head.*`), the clustering head
(`final.teacher.head.*`) and the clustering optimizer state (`clustering_optimizer.*`). The same trajectory is
replayed in float64 from the same initial weights; the float32-vs-float64 gap (`float_drift`) is the noise scale a
port cannot beat and sets the test tolerance.

Also recorded: the original transform (RandomResizedCrop bicubic, horizontal flip, ToTensor, IMAGENET_NORM, as
train() composes it) of a few bundled photos for fixed seeds (`transform.{image}.{seed}`), and the original mask
collator alone from fixed global seeds (python `random`, numpy, torch) (`sampler.{i}.visible` / `.predict`).
"""

import argparse
import importlib
import importlib.machinery
import json
import logging
import random
import sys
import types
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
TRANSFORM_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image photos, shipped in its wheel
TRANSFORM_SEEDS = (0, 1, 2)
SAMPLER_SEED, SAMPLER_BATCHES = 123, 6
PLACEHOLDERS: list[str] = []


def photos() -> list:
    import PIL.Image
    import skimage.data

    return [PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in TRANSFORM_IMAGES]


def _placeholder(name: str) -> None:
    """An importable empty module whose attributes are classes that refuse to be instantiated."""

    def attribute(attr, _name=name):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def refuse(self, *args, **kwargs):
            raise RuntimeError(f"{_name}.{attr} is a placeholder of record_capi_trajectory.py")

        return type(attr, (), {"__init__": refuse})

    module = types.ModuleType(name)
    module.__getattr__ = attribute
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    sys.modules[name] = module
    if "." in name and name.rsplit(".", 1)[0] in sys.modules:
        setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], module)
    PLACEHOLDERS.append(name)


def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
        return False
    except Exception:
        return True


def import_original(src: Path) -> dict:
    src = src.resolve()
    if _missing("xformers"):
        for name in ("xformers", "xformers.profiler", "xformers.checkpoint", "fsdp"):
            _placeholder(name)
    for name in ("sklearn", "sklearn.decomposition", "sklearn.preprocessing", "datasets", "datasets.formatting",
                 "scipy", "scipy.io", "submitit"):  # fmt: skip
        if _missing(name):  # module-level imports of eval / dataset helpers, unused by the training step
            _placeholder(name)
    sys.path.insert(0, str(src))
    modules = {key: importlib.import_module(key) for key in ("model", "data", "utils", "train_capi")}
    logging.getLogger().setLevel(logging.WARNING)
    return modules


def make_config(src: Path, a):
    from omegaconf import OmegaConf

    warmup = a.warmup
    override = {
        "model": {
            "patch_size": a.patch,
            "n_registers": a.registers,
            "transformers_kwargs": {
                "embed_dim": a.embed_dim, "drop_path_rate": a.drop_path,
                "block_kwargs": {"attn_kwargs": {"num_heads": a.heads}},
            },
            "encoder_kwargs": {"depth": a.depth},
            "decoder_kwargs": {"depth": a.decoder_depth},
        },
        "capi": {
            "num_clusters": a.num_clusters,
            "clustering_optimizer": {"lr_schedule": {"base_value": a.clustering_lr, "warmup_iters": warmup}},
        },
        "optim": {
            "total_iters": a.steps,
            "batch_size_per_gpu": a.batch,
            "weight_decay": a.wd,
            "lr_schedule": {"base_value": a.lr, "warmup_iters": warmup},
            "momentum_schedule": {"base_value": a.momentum, "warmup_iters": warmup},
        },
        "data": {
            "images_size": a.img, "mask_ratio": a.mask_ratio, "prediction_subsampling": a.prediction_subsampling,
            "crop_scale": list(a.crop_scale),
        },
        "efficiency": {"param_dtype": "float32"},
    }  # fmt: skip
    return OmegaConf.unsafe_merge(OmegaConf.load(src.resolve() / "default_pretrain_config.yaml"), override)


def build_model(orig, cfg, seed: int, dtype):
    """train_capi.train()'s model section (cuda -> cpu, no FSDP wrapper, no activation checkpointing)."""
    M = orig["model"]
    from torch import nn

    torch.manual_seed(seed)
    model = nn.ModuleDict(
        {"student": nn.ModuleDict({}), "student_ema": nn.ModuleDict({}), "teacher": nn.ModuleDict({})}
    )
    with torch.device("meta"):
        model.student["backbone"] = M.EncoderDecoder(**cfg.model)
        model.student_ema["backbone"] = M.EncoderDecoder(**cfg.model)
    model.student["backbone"] = model.student.backbone.to_empty(device="cpu").init_weights()
    model.student_ema["backbone"] = model.student_ema.backbone.to_empty(device="cpu")
    model.teacher["backbone"] = model.student_ema.backbone
    model.student["head"] = M.L2NormLinear(model.student.backbone.pred_dim, cfg.capi.num_clusters)
    model.student_ema["head"] = M.L2NormLinear(model.student.backbone.pred_dim, cfg.capi.num_clusters)
    model.teacher["head"] = M.OnlineClustering(
        model.student.backbone.embed_dim, cfg.capi.num_clusters, **cfg.capi.clustering_kwargs
    )
    model.student_ema.requires_grad_(False)
    model.teacher.backbone.requires_grad_(False)
    model.teacher.head.requires_grad_(True)
    model.to(dtype)
    student_param_list = list(chain(*(mod.parameters() for mod in model.student.values())))
    ema_param_list = list(chain(*(mod.parameters() for mod in model.student_ema.values())))
    with torch.no_grad():
        torch._foreach_copy_(ema_param_list, student_param_list)
    model.student.train()
    model.teacher.eval()
    return model, student_param_list, ema_param_list


def original_transform(orig, cfg):
    """The transform train_capi.train() composes (written out: it is inline there)."""
    import torchvision.transforms as T
    from torch import nn

    return T.Compose(
        [
            T.RandomResizedCrop(
                cfg.data.images_size, scale=cfg.data.crop_scale, interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(p=0.5) if cfg.data.do_hflip else nn.Identity(),
            T.ToTensor(),
            orig["utils"].IMAGENET_NORM,
        ]
    )


def original_collate(orig, cfg, dtype=torch.float32):
    D = orig["data"]
    img_size, patch_size = cfg.data.images_size, cfg.model.patch_size
    n_tokens = (img_size // patch_size) ** 2
    mask_generator = D.mask_generators_dict[cfg.data.masking_generator](
        input_size=(img_size // patch_size, img_size // patch_size), **cfg.data.masking_generator_kwargs
    )
    return partial(
        D.collate_data_and_cast, dtype=dtype, n_tokens=n_tokens, mask_generator=mask_generator,
        prediction_subsampling=cfg.data.prediction_subsampling, mask_ratio=cfg.data.mask_ratio,
    )  # fmt: skip


def record_batches(orig, cfg, a):
    """Every batch (original transform on the bundled photos, rounded to float16) and the original's masks."""
    transform = original_transform(orig, cfg)
    collate = original_collate(orig, cfg)
    images = photos()
    chooser = torch.Generator().manual_seed(a.seed)
    steps = []
    for _ in range(a.steps):
        chosen = torch.randint(len(images), (a.batch,), generator=chooser).tolist()
        data = collate([(transform(images[i]).half().float(), ()) for i in chosen])
        steps.append({k: data[k].clone() for k in ("images", "visible_indices", "predict_indices")})
    return steps


def run(orig, cfg, a, batches, dtype):
    """train_capi.train()'s loop body over the recorded batches; returns the log and the model."""
    from omegaconf import OmegaConf

    U, TR = orig["utils"], orig["train_capi"]
    cfg_dict = OmegaConf.to_object(cfg)
    model, student_param_list, ema_param_list = build_model(orig, cfg, a.seed, dtype)
    max_iter = cfg.optim.total_iters
    optimizer = getattr(torch.optim, cfg.optim.optimizer)(
        U.get_params_groups(
            model.student, patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult, rope_lr_mult=cfg.optim.rope_lr_mult,
            layernorm_wd_mult=cfg.optim.layernorm_wd_mult,
        ),
        **cfg.optim.optimizer_kwargs,
    )  # fmt: skip
    lr_schedule = U.WarmupThenCosine(total_iters=max_iter, **cfg.optim.lr_schedule)
    momentum_schedule = U.WarmupThenCosine(total_iters=max_iter, **cfg.optim.momentum_schedule)
    clustering_lr_schedule = U.WarmupThenCosine(total_iters=max_iter, **cfg.capi.clustering_optimizer.lr_schedule)
    clustering_optimizer = getattr(torch.optim, cfg.capi.clustering_optimizer.name)(
        model.teacher.head.parameters(), **OmegaConf.to_object(cfg.capi.clustering_optimizer.kwargs)
    )
    grad_scaler = U.VerboseShardedGradScaler(
        growth_interval=cfg.efficiency.grad_scaler_growth_interval, enabled=cfg.efficiency.grad_scaler
    )
    log = []
    for iteration, data in enumerate(batches):
        images = data["images"].to(dtype)
        it = iteration
        for param_group in optimizer.param_groups:
            param_group["weight_decay"] = cfg_dict["optim"]["weight_decay"] * param_group["wd_multiplier"]
            param_group["lr"] = lr_schedule[it] * param_group["lr_multiplier"]
        for param_group in clustering_optimizer.param_groups:
            param_group["lr"] = clustering_lr_schedule[it]
        optimizer.zero_grad(set_to_none=True)
        clustering_optimizer.zero_grad(set_to_none=True)
        targets, clustering_loss = TR.do_teacher(model, images, data["predict_indices"])
        clustering_loss.backward()
        capi_loss = TR.do_student(
            model, images, data["predict_indices"], data["visible_indices"], targets, cfg_dict["capi"]["student_temp"]
        )
        grad_scaler.scale(capi_loss.bfloat16()).backward()
        target_entropy = -torch.xlogy(targets, targets).sum(dim=-1).mean()
        groups = [{"lr": float(g["lr"]), "weight_decay": float(g["weight_decay"])} for g in optimizer.param_groups]
        clustering = [{"lr": float(g["lr"]), "weight_decay": float(g["weight_decay"])} for g in clustering_optimizer.param_groups]  # fmt: skip
        scaler_out = grad_scaler.step(optimizer)
        grad_scaler.update()
        if scaler_out == float("inf"):
            raise RuntimeError(f"step {it}: the (disabled) grad scaler skipped a step")
        with torch.no_grad():
            torch._foreach_mul_(ema_param_list, momentum_schedule[it])
            torch._foreach_add_(ema_param_list, student_param_list, alpha=1 - momentum_schedule[it])
        clustering_optimizer.step()
        log.append(
            {
                "capi_loss": float(capi_loss.detach()), "clustering_loss": float(clustering_loss.detach()),
                "target_entropy": float(target_entropy), "groups": groups, "clustering": clustering[0],
                "momentum": float(momentum_schedule[it]),
            }
        )  # fmt: skip
    return log, model, optimizer, clustering_optimizer


def group_members(optimizer, model) -> list[list[str]]:
    """Original parameter names (`student.backbone.*`, `student.head.*`) in each optimizer group."""
    names = {id(p): f"student.{n}" for n, p in model.student.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def weights(model, parts) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.detach().contiguous().clone() for k, v in state.items() if k.startswith(parts)}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_src", required=True, type=Path, help="exported work tree of facebookresearch/capi")
    ap.add_argument("--original_commit", default=None, help="commit of that tree (default: its .source_commit)")
    ap.add_argument("--output_dir", type=Path, default=REPO / "tests" / "fixtures" / "trajectory_capi")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--embed_dim", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--decoder_depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--registers", type=int, default=4)
    ap.add_argument("--num_clusters", type=int, default=64)
    ap.add_argument("--drop_path", type=float, default=0.0, help="0: stochastic depth draws differ between code bases")
    ap.add_argument("--mask_ratio", type=float, default=0.65)
    ap.add_argument("--prediction_subsampling", type=float, default=0.2, help="0.2 of 41 masked: 8 per image")
    ap.add_argument("--crop_scale", type=float, nargs=2, default=(0.6, 1.0))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clustering_lr", type=float, default=5e-4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=4, help="warmup iterations of the lr, momentum and clustering lr")
    ap.add_argument("--momentum", type=float, default=0.9, help="EMA momentum base value (far from 1: the EMA shows)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    orig = import_original(a.original_src)
    if PLACEHOLDERS:
        print(f"placeholder modules (missing here, unused by the training step): {', '.join(PLACEHOLDERS)}")
    cfg = make_config(a.original_src, a)
    batches = record_batches(orig, cfg, a)
    log, final, optimizer, clustering_optimizer = run(orig, cfg, a, batches, torch.float32)
    log64, final64, _, _ = run(orig, cfg, a, batches, torch.float64)
    initial, _, _ = build_model(orig, cfg, a.seed, torch.float32)

    tensors = {f"initial.{k}": v for k, v in weights(initial, ("student.", "teacher.head.")).items()}
    tensors.update({f"final.{k}": v for k, v in weights(final, ("student.", "student_ema.", "teacher.head.")).items()})
    names = {id(p): n for n, p in final.teacher.head.named_parameters()}
    for param, state in clustering_optimizer.state.items():
        for key, value in state.items():
            tensors[f"clustering_optimizer.{names[id(param)]}.{key}"] = torch.as_tensor(value).clone()
    for step, data in enumerate(batches):
        tensors[f"batch.{step}"] = data["images"].half()
        tensors[f"visible.{step}"] = data["visible_indices"].to(torch.int16)
        tensors[f"predict.{step}"] = data["predict_indices"].to(torch.int16)
    transform = original_transform(orig, cfg)
    for name, image in zip(TRANSFORM_IMAGES, photos()):
        for seed in TRANSFORM_SEEDS:
            torch.manual_seed(seed)
            tensors[f"transform.{name}.{seed}"] = transform(image)

    # The original's mask collator on its own, from fixed global seeds (python random for the blocks, torch for the
    # prediction subsampling): hf_mim's InverseBlockMasking(sampler="original") must repeat it.
    collate = original_collate(orig, cfg)
    random.seed(SAMPLER_SEED)
    np.random.seed(SAMPLER_SEED)
    torch.manual_seed(SAMPLER_SEED)
    for index in range(SAMPLER_BATCHES):
        data = collate([(torch.zeros(1), ())] * a.batch)
        tensors[f"sampler.{index}.visible"] = data["visible_indices"].to(torch.int16)
        tensors[f"sampler.{index}.predict"] = data["predict_indices"].to(torch.int16)

    parts = {"student": "student.", "student_ema": "student_ema.backbone.", "student_ema_head": "student_ema.head.",
             "clustering_head": "teacher.head."}  # fmt: skip
    state32, state64 = final.state_dict(), final64.state_dict()
    drift = {
        loss: max(abs(x[loss] - y[loss]) / abs(y[loss]) for x, y in zip(log, log64))
        for loss in ("capi_loss", "clustering_loss")
    }
    drift["weights"] = {
        part: max(relative_gap(v, state64[k]) for k, v in state32.items() if k.startswith(prefix) and v.is_floating_point())
        for part, prefix in parts.items()
    }  # fmt: skip
    # per tensor, so a test can see which parameters are the most sensitive to rounding
    drift["per_tensor"] = {
        k: relative_gap(v, state64[k])
        for k, v in state32.items()
        if k.startswith(("student.", "student_ema.", "teacher.head.")) and v.is_floating_point()
    }
    a.output_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, a.output_dir / "trajectory.safetensors")
    commit = a.original_commit
    if commit is None and (a.original_src / ".source_commit").exists():
        commit = (a.original_src / ".source_commit").read_text().strip()
    record = {
        "original": "facebookresearch/capi",
        "original_commit": commit,
        "torch": torch.__version__,
        "placeholders": PLACEHOLDERS,
        "arguments": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items() if k not in ("original_src", "output_dir", "original_commit")},
        "config": {
            "optim": {k: v for k, v in cfg_dict_of(cfg)["optim"].items() if k != "batch_size_per_gpu"},
            "capi": cfg_dict_of(cfg)["capi"],
            "data": cfg_dict_of(cfg)["data"],
            "model": cfg_dict_of(cfg)["model"],
        },
        "transform": {"images": list(TRANSFORM_IMAGES), "seeds": list(TRANSFORM_SEEDS), "interpolation": "bicubic",
                      "hflip": bool(cfg.data.do_hflip)},
        "sampler": {"seed": SAMPLER_SEED, "batches": SAMPLER_BATCHES},
        "group_members": group_members(optimizer, final),
        "group_multipliers": [{"lr_multiplier": g["lr_multiplier"], "wd_multiplier": g["wd_multiplier"]} for g in optimizer.param_groups],
        "steps": log,
        "float_drift": drift,
    }  # fmt: skip
    (a.output_dir / "trajectory.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(p.stat().st_size for p in a.output_dir.iterdir()) / 2**20
    print(
        f"recorded {a.steps} steps to {a.output_dir} ({size:.2f} MiB); capi loss {log[0]['capi_loss']:.5f} -> "
        f"{log[-1]['capi_loss']:.5f}, clustering loss {log[0]['clustering_loss']:.5f} -> {log[-1]['clustering_loss']:.5f}"
    )
    print(
        f"float32 vs float64 drift of the original itself: {json.dumps({k: v for k, v in drift.items() if k != 'per_tensor'})}"
    )
    return 0


def cfg_dict_of(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)


if __name__ == "__main__":
    sys.exit(main())
