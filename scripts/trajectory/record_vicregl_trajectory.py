#!/usr/bin/env python
"""Record ORIGINAL VICRegL training trajectories (facebookresearch/VICRegL) of seeded tiny models, as test fixtures.

    python scripts/trajectory/record_vicregl_trajectory.py --original_src ORIGINAL_VICREGL_TREE \
        [--output_dir tests/fixtures/trajectory_vicregl] [--steps 32 --batch 3 --seed 0]

ORIGINAL_VICREGL_TREE is an exported work tree of github.com/facebookresearch/VICRegL. Its modules are imported from
there at run time (through benchmarks/benchmark_vicregl.py's importer, which also builds the original `VICRegL(args)`
at a tiny size); nothing of it is copied.

Two runs, float32 on CPU, in a one-process gloo group (the original's `gather_center` calls torch.distributed):
  * `resnet`: a narrow bottleneck ResNet [1, 1, 1, 1] with the original's `build_optimizer` LARS (weight decay 1e-6,
    momentum 0.9, eta 1e-3, `exclude_bias_and_norm` as its weight-decay and adaptation filters);
  * `convnext`: a narrow ConvNeXt [1, 1, 1, 1] with layer scale, and the original's AdamW groups (no decay on 1-D
    parameters).
Each step is `main_vicregl.py`'s loop body, fp32 branch: `utils.learning_schedule` (lr = base_lr x batch / 256, total
and warmup steps as main() computes them from epochs, warmup epochs and the data set length) set on every group,
`optimizer.zero_grad()`, `VICRegL.forward`, backward, `optimizer.step()`. Norm weights are randomised first (as the
benchmark does) so that the ResNet's zero-initialised last BN of each block does not hide the residual branches.

The batches are shared by both runs: per step `batch` images (scikit-image photos), each cut into 2 global and 1
local view by the original `RandomResizedCropWithLocation` (bicubic) and `RandomHorizontalFlipReturnsIfFlip`, with
location grids from the original `_location_to_NxN_grid` (one cell per 32 px of the view: the backbones' stride).
The colour distortion is left out; the views are stored as the uint8 crops (`view.{step}.{v}`), normalised by
`views_from_uint8` (ImageNet mean/std of the original) before either code base sees them, and the grids as float32
(`grid.{step}.{v}`), with the crop boxes and flips behind them (`box.{step}.{v}`: top, left, height, width, flip).
Labels of the online classifier: `labels.{step}`.

Recorded per run (`{run}.safetensors` + `trajectory.json`): initial, early (`early.*`, after `--early_steps`: the
ResNet run turns chaotic after that, see below) and final weights (the original's key names,
BN running statistics included), the final optimizer state (`{run}.optim.{name}.{mu|exp_avg|exp_avg_sq}`), per
step the loss without the online classifier and its parts, and the lr / weight decay of every optimizer group (and
which parameters each holds). The same run is replayed in float64 from the same initial weights; the float32 vs
float64 gap (`float_drift`, and per step `loss_float64`) is the noise scale a port cannot beat and sets the test
tolerance. The ResNet run is chaotic in the original itself: its float32 and float64 runs part from the first steps
on, x ~50 per step. The tiny ResNet is the cause, not LARS: with AdamW it is as chaotic (0.6 final weight drift), and
so it is with alpha 0 or 1, batch 6 or 64 px local crops; the ConvNeXt with LARS is not (3e-6).
"""

import argparse
import copy
import json
import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_vicregl as bench  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MEAN, STD = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)  # the original's Normalize
STRIDE = 32
LOSS_PARTS = ("inv_l", "var_l", "cov_l", "minv_l", "mvar_l", "mcov_l")


def views_from_uint8(crop: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 crops -> normalised (..., 3, H, W) float32 views (ToTensor + the original's Normalize)."""
    x = crop.movedim(-1, -3).float() / 255
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def workload(a, backbone: str) -> bench.Workload:
    crops = ((2, a.global_size), (1, a.local_size))
    if backbone == "resnet":
        stem = a.resnet_stem
        widths = tuple(4 * stem * 2**i for i in range(4))
        return bench.Workload("resnet", (1, 1, 1, 1), widths, stem, a.mlp, a.maps_mlp, a.alpha, crops, a.num_matches)
    return bench.Workload(
        "convnext", (1, 1, 1, 1), tuple(a.convnext_dims), 0, a.mlp, a.maps_mlp, a.alpha, crops, a.num_matches
    )


def build(original, a, backbone: str):
    load = workload(a, backbone)
    torch.manual_seed(a.seed)
    model = bench.build_original(original, load, a.batch)
    model.args.num_classes = a.num_classes
    model.classifier = torch.nn.Linear(model.representation_dim, a.num_classes)
    if backbone == "convnext" and a.layer_scale:
        model.args.layer_scale_init_value = a.layer_scale
        with bench.common.installed({"convnext": original.convnext, "resnet": original.resnet}):
            torch.manual_seed(a.seed)
            model = original.main_vicregl.VICRegL(model.args)
    bench.randomize_norms(model, torch.Generator().manual_seed(a.seed + 1))
    args = model.args
    args.optimizer = "lars" if backbone == "resnet" else "adamw"
    args.base_lr = a.lars_base_lr if backbone == "resnet" else a.adamw_base_lr
    args.weight_decay = a.adamw_weight_decay
    args.epochs, args.warmup_epochs = a.epochs, a.warmup_epochs
    args.l2_all_matches, args.fast_vc_reg = True, False
    return model


def record_batches(original, a):
    import PIL.Image
    import skimage.data

    T = original.transforms
    images = [PIL.Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS]
    images = [im.resize((a.source_size, a.source_size), PIL.Image.BICUBIC) for im in images]
    bicubic = T.InterpolationMode.BICUBIC  # as MultiCropTrainDataTransform builds them
    crops = [T.RandomResizedCropWithLocation(a.global_size, scale=(0.3, 1.0), interpolation=bicubic) for _ in range(2)]
    crops.append(T.RandomResizedCropWithLocation(a.local_size, scale=(0.05, 0.3), interpolation=bicubic))
    flip = T.RandomHorizontalFlipReturnsIfFlip(p=0.5)
    torch.manual_seed(a.seed)
    generator = torch.Generator().manual_seed(a.seed)
    batches = []
    for _ in range(a.steps):
        chosen = torch.randint(len(images), (a.batch,), generator=generator).tolist()
        views, grids, boxes = [[] for _ in crops], [[] for _ in crops], [[] for _ in crops]
        for i in chosen:
            for v, crop in enumerate(crops):
                image, location = crop(images[i])
                image, is_flip = flip(image)
                views[v].append(torch.from_numpy(np.asarray(image).copy()))
                grids[v].append(T._location_to_NxN_grid(location, crop.size[0] // STRIDE, flip=is_flip))
                boxes[v].append(torch.tensor([*location[:4], float(is_flip)], dtype=torch.float64))
        labels = torch.randint(a.num_classes, (a.batch,), generator=generator)
        batches.append(
            ([torch.stack(x) for x in views], [torch.stack(g) for g in grids], labels, [torch.stack(b) for b in boxes])
        )
    return batches


def learning_rate(original, args, step: int, num_images: int) -> float:
    """The lr main_vicregl.py's loop sets at `step` (its total and warmup steps from epochs and the data set size)."""
    return original.utils.learning_schedule(
        global_step=step, batch_size=args.batch_size, base_lr=args.base_lr, end_lr_ratio=args.end_lr_ratio,
        total_steps=args.epochs * num_images // args.batch_size,
        warmup_steps=args.warmup_epochs * num_images // args.batch_size,
    )  # fmt: skip


def run(original, a, model, batches, dtype):
    model = copy.deepcopy(model).to(dtype).train()
    args = model.args
    optimizer = original.optimizers.build_optimizer(args, model)
    num_images = a.steps * a.batch // args.epochs  # one epoch's data set: total steps = epochs x this / batch
    log = []
    for step, (crops, grids, labels, _) in enumerate(batches):
        lr = learning_rate(original, args, step, num_images)
        for g in optimizer.param_groups:
            g["lr"] = lr * args.maps_lr_ratio if "__MAPS_TOKEN__" in g else lr
        inputs = {
            "views": [views_from_uint8(c).to(dtype) for c in crops],
            "locations": [g.to(dtype) for g in grids],
            "labels": labels,
        }
        optimizer.zero_grad()
        loss, logs = model.forward(inputs)
        loss.backward()
        groups = [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer.step()
        if step + 1 == a.early_steps:
            early = {k: v.detach().clone() for k, v in model.state_dict().items()}
        entry = {"loss": float((loss - logs["cls_l"]).detach()), "groups": groups}
        entry.update({k: float(logs[k]) for k in LOSS_PARTS if k in logs})
        log.append(entry)
    return log, model, optimizer, early


def group_members(optimizer, model) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def init_process_group() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_src", required=True, type=Path, help="exported work tree of facebookresearch/VICRegL")
    ap.add_argument("--output_dir", type=Path, default=REPO / "tests" / "fixtures" / "trajectory_vicregl")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="the run is `epochs` epochs of steps / epochs steps")
    ap.add_argument("--warmup_epochs", type=int, default=1)
    ap.add_argument("--source_size", type=int, default=96, help="the photos are resized to this square first")
    ap.add_argument("--global_size", type=int, default=64)
    ap.add_argument("--local_size", type=int, default=32)
    ap.add_argument("--resnet_stem", type=int, default=4)
    ap.add_argument("--convnext_dims", type=int, nargs=4, default=(8, 16, 24, 32))
    ap.add_argument("--layer_scale", type=float, default=0.1)
    ap.add_argument("--mlp", default="64-64")
    ap.add_argument("--maps_mlp", default="32-32")
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--num_matches", type=int, nargs=2, default=(2, 1))
    ap.add_argument("--num_classes", type=int, default=10)
    ap.add_argument("--lars_base_lr", type=float, default=10.0, help="lr = this x batch / 256")
    ap.add_argument("--adamw_base_lr", type=float, default=0.2)
    ap.add_argument("--adamw_weight_decay", type=float, default=0.05)
    ap.add_argument("--early_steps", type=int, default=2, help="weights also stored after this many steps")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.num_matches = tuple(a.num_matches)
    torch.set_num_threads(1)
    np.random.seed(a.seed)

    original, notes = bench.import_original(a.original_src)
    original.transforms = _import_transforms(a.original_src)
    init_process_group()
    batches = record_batches(original, a)

    tensors, runs = {}, {}
    for step, (crops, grids, labels, boxes) in enumerate(batches):
        for v, (crop, grid, box) in enumerate(zip(crops, grids, boxes)):
            tensors[f"box.{step}.{v}"] = box.contiguous()
            tensors[f"view.{step}.{v}"] = crop.contiguous()
            tensors[f"grid.{step}.{v}"] = grid.float().contiguous()
        tensors[f"labels.{step}"] = labels.to(torch.int16)
    for backbone in ("resnet", "convnext"):
        model = build(original, a, backbone)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log, final, optimizer, early = run(original, a, model, batches, torch.float32)
        log64, final64, _, early64 = run(original, a, model, batches, torch.float64)
        out = {}
        out.update({f"initial.{k}": v.contiguous() for k, v in initial.items()})
        out.update({f"final.{k}": v.contiguous() for k, v in final.state_dict().items()})
        out.update({f"early.{k}": v.contiguous() for k, v in early.items()})
        names = {id(p): n for n, p in final.named_parameters()}
        for p, state in optimizer.state.items():
            if names[id(p)].startswith("classifier."):
                continue
            for key, value in state.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    out[f"optim.{names[id(p)]}.{key}"] = value.contiguous()
        for entry, entry64 in zip(log, log64):
            entry["loss_float64"] = entry64["loss"]  # per-step drift: the ResNet run's grows chaotic (see the test)
        f64 = final64.state_dict()
        drift = {
            "loss": max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(log, log64)),
            "weights": max(
                relative_gap(v, f64[k])
                for k, v in final.state_dict().items()
                if v.is_floating_point() and not k.startswith("classifier.")
            ),
            "early_weights": max(
                relative_gap(v, early64[k])
                for k, v in early.items()
                if v.is_floating_point() and not k.startswith("classifier.")
            ),
        }
        a.output_dir.mkdir(parents=True, exist_ok=True)
        save_file(out, a.output_dir / f"{backbone}.safetensors")
        runs[backbone] = {
            "arguments": {
                "base_lr": model.args.base_lr, "optimizer": model.args.optimizer, "end_lr_ratio": model.args.end_lr_ratio,
                "weight_decay": max(g["weight_decay"] for g in optimizer.param_groups),
                "total_steps": a.steps, "warmup_steps": a.warmup_epochs * (a.steps // a.epochs),
            },
            "group_members": group_members(optimizer, final),
            "steps": log,
            "float_drift": drift,
        }  # fmt: skip
        print(f"{backbone}: loss {log[0]['loss']:.5f} -> {log[-1]['loss']:.5f}; fp32 vs fp64 drift {drift}")
    save_file(tensors, a.output_dir / "batches.safetensors")
    record = {
        "original": "facebookresearch/VICRegL",
        "original_commit": (
            (a.original_src / ".source_commit").read_text().strip()
            if (a.original_src / ".source_commit").exists()
            else None
        ),
        "torch": torch.__version__,
        "notes": notes,
        "arguments": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(a).items()
            if k not in ("original_src", "output_dir")
        },
        "views": {"global": 2, "local": 1, "mean": MEAN, "std": STD, "stride": STRIDE},
        "runs": runs,
    }
    (a.output_dir / "trajectory.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(p.stat().st_size for p in a.output_dir.iterdir()) / 2**20
    print(f"recorded {a.steps} steps x 2 runs to {a.output_dir} ({size:.2f} MiB)")
    dist.destroy_process_group()
    return 0


def _import_transforms(src: Path):
    """The original's transforms.py, loaded by path (its generic module name would clash with torchvision's users)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_vicregl_original_transforms", Path(src).resolve() / "transforms.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module.FT, "_get_image_size"):  # renamed get_image_size in torchvision 0.11 (same [w, h])
        module.FT._get_image_size = module.FT.get_image_size
    return module


if __name__ == "__main__":
    sys.exit(main())
