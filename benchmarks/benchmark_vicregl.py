#!/usr/bin/env python
"""VICRegL training-step speed on CPU: hf_mim against the original facebookresearch/VICRegL code, in ONE interleaved
run, on the same weights and the same views and location grids.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_vicregl.py --original_src /tmp/orig/vicregl
    python benchmarks/benchmark_vicregl.py --original_src /tmp/orig/vicregl --workloads resnet --rounds 10 --verbose
    python benchmarks/benchmark_vicregl.py --original_src /tmp/orig/vicregl --profile 25   # + torch.profiler tables
    python benchmarks/benchmark_vicregl.py --original_src /tmp/orig/vicregl --compiled     # + hf_mim, torch.compile

One timed step:
  * hf_mim: `VicreglForPreTraining(pixel_values, locations, local_pixel_values, local_locations)` -> backward ->
    fused AdamW step -> zero_grad.
  * original: the body of `main_vicregl.py`'s training loop (fp32 branch): `optimizer.zero_grad()`,
    `VICRegL.forward(inputs)` (backbone per view, projectors, metrics, global + local loss, online classifier),
    backward, fused AdamW step, and the `torch.distributed.reduce` of every log value. It runs in a one-process gloo
    group, as `torchrun --nproc_per_node 1` would, because its `gather_center` / `batch_all_gather` call
    `torch.distributed`.
  * hf_mim compiled (with --compiled): the hf_mim step on a copy of the same weights, with its own fused AdamW, the
    model wrapped by `torch.compile(model)` (inductor, fullgraph=False); it compiles in untimed warm-up steps before
    the timed rounds.
The original tree is put on sys.path and its modules are imported (`main_vicregl`, `convnext`, `resnet`, `utils`,
`optimizers`); none of its code is copied here. See benchmarks/README.md.
"""

import argparse
import copy
import importlib
import importlib.util
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import _common as common
import _harness as harness
import torch
import torch.distributed as dist

from hf_mim import VicreglConfig, VicreglForPreTraining
from hf_mim.data import crop_location_grid
from hf_mim.models.vicregl.convert_vicregl import convert_checkpoint

# The original tree's top-level modules: generic names (utils, datasets, ...), so any same-named module already
# imported (e.g. Hugging Face `datasets`) is set aside while the original's are in sys.modules.
ORIGINAL_MODULES = tuple("main_vicregl convnext resnet utils optimizers datasets transforms distributed".split())
LR, WEIGHT_DECAY = 1e-4, 0.05  # the original's AdamW weight decay; a fixed lr (no schedule: it does not change time)
IMAGE_SIDE = 224  # the crops' boxes are drawn in a 224 x 224 source image (grids are in its pixels)
NUM_CLASSES = 1000  # the original's online linear classifier (ImageNet-1k)


@dataclass(frozen=True)
class Workload:
    backbone: str  # "convnext" or "resnet"
    depths: tuple[int, ...]
    widths: tuple[int, ...]  # stage output widths (the last one is the representation width)
    embedding: int  # ResNet stem width
    mlp: str
    maps_mlp: str
    alpha: float
    crops: tuple[tuple[int, int], ...]  # (number of views, side in px): global views first, then local views
    num_matches: tuple[int, int]


WORKLOADS = {
    "convnext_small_views": Workload(
        "convnext", (1, 1, 3, 1), (32, 64, 128, 256), 0, "512-512-512", "128-128-128", 0.75, ((2, 96), (4, 64)), (4, 2)
    ),
    "resnet": Workload(
        "resnet", (1, 1, 1, 1), (128, 256, 512, 1024), 32, "512-512-512", "128-128-128", 0.75, ((2, 96),), (4, 2)
    ),
}
TOTAL_STRIDE = 32  # both backbones: one location-grid cell per 32 input pixels


# ------------------------------------------------------------------------------------------------ the original code
def _timm_stand_in() -> dict[str, types.ModuleType]:
    """convnext.py imports `trunc_normal_, DropPath` from timm.models.layers; timm is not an hf_mim dependency. The
    stand-in gives torch's `trunc_normal_` (same signature and distribution) and a DropPath that refuses to be built
    (the benchmark runs drop path 0, where the original uses nn.Identity)."""

    class DropPath(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("drop path > 0 needs the real timm (pip install timm)")

    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_, layers.DropPath = torch.nn.init.trunc_normal_, DropPath
    models, timm = types.ModuleType("timm.models"), types.ModuleType("timm")
    models.layers, timm.models = layers, models
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers}


def import_original(src: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """Import the original's modules from an exported facebookresearch/VICRegL tree. Returns (modules, notes)."""
    src = src.expanduser().resolve()
    if not (src / "main_vicregl.py").is_file():
        raise SystemExit(f"--original_src {src}: no main_vicregl.py there (not a VICRegL tree?)")
    notes = []
    extra = {}
    if importlib.util.find_spec("timm") is None:
        extra = _timm_stand_in()
        notes.append("timm is not installed: convnext.py got a stand-in timm.models.layers (torch's trunc_normal_)")
    stashed = {name: sys.modules.pop(name) for name in ORIGINAL_MODULES if name in sys.modules}
    sys.path.insert(0, str(src))
    try:
        with common.installed(extra):
            modules = {name: importlib.import_module(name) for name in ("main_vicregl", "convnext", "resnet")}
        modules["utils"] = sys.modules["utils"]
        modules["optimizers"] = sys.modules["optimizers"]
        for name, module in modules.items():
            if not Path(module.__file__).resolve().is_relative_to(src):
                raise SystemExit(f"--original_src: `{name}` resolved to {module.__file__}, not inside {src}")
    finally:
        sys.path.remove(str(src))
        for name in ORIGINAL_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(stashed)
    return types.SimpleNamespace(**modules), notes


def original_args(original, workload: Workload, arch: str, batch_size: int) -> argparse.Namespace:
    """`get_arguments()` defaults (its one required flag, --exp-dir, given) with this workload's values."""
    args = original.main_vicregl.get_arguments().parse_args(["--exp-dir", "/nonexistent"])
    args.arch = arch
    args.mlp, args.maps_mlp, args.alpha = workload.mlp, workload.maps_mlp, workload.alpha
    args.num_matches = list(workload.num_matches)
    args.drop_path_rate, args.layer_scale_init_value = 0.0, 0.0
    args.size_crops = [side for _, side in workload.crops]
    args.num_crops = [count for count, _ in workload.crops]
    args.batch_size, args.base_lr, args.weight_decay = batch_size, LR, WEIGHT_DECAY
    args.num_classes, args.world_size, args.rank = NUM_CLASSES, 1, 0  # set by build_loader / init_distributed_mode
    return args


def build_original(original, workload: Workload, batch_size: int):
    """The original `VICRegL(args)` at this workload's size. Its backbone factories build only the released sizes, so
    a factory for this size is registered in the original module's namespace (the way the shared
    train_original_ijepa.py registers an encoder) and named in `args.arch`."""
    if workload.backbone == "convnext":

        def factory(**kwargs):
            model = original.convnext.ConvNeXt(depths=list(workload.depths), dims=list(workload.widths), **kwargs)
            return model, workload.widths[-1]

        arch, module = "convnext_bench", original.convnext
    else:
        bottleneck = original.resnet.Bottleneck

        class NarrowBottleneck(bottleneck):
            """The original Bottleneck with `base_width` 64, so that its inner width stays planes (= out / 4) while
            the ResNet's `width_per_group` narrows the stem and the stages."""

            def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, *args, **kwargs):
                super().__init__(inplanes, planes, stride, downsample, groups, 64, *args, **kwargs)

        def factory(**kwargs):
            layers, stem = list(workload.depths), workload.embedding
            model = original.resnet.ResNet(NarrowBottleneck, layers, width_per_group=stem, **kwargs)
            return model, workload.widths[-1]

        arch, module = "resnet_bench", original.resnet
    args = original_args(original, workload, arch, batch_size)
    setattr(module, arch, factory)
    # VICRegL.__init__ runs `import convnext` / `import resnet`: give it the original modules.
    with common.installed({"convnext": original.convnext, "resnet": original.resnet}):
        model = original.main_vicregl.VICRegL(args)
    if model.representation_dim != workload.widths[-1]:
        raise SystemExit(f"original backbone is {model.representation_dim} wide, expected {workload.widths[-1]}")
    return model


def randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Norm weights 1 + 0.2 N(0, 1) and biases 0.1 N(0, 1) (BatchNorm / LayerNorm, the original's channels-first
    LayerNorm too): the ResNet's zero-initialised last BN of each block would otherwise keep every residual branch out
    of the first-step loss check. Applied to the original before its weights are copied (timing is unaffected)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm | torch.nn.LayerNorm) or (
                type(module).__name__ == "LayerNorm" and hasattr(module, "data_format")
            ):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def hf_config(workload: Workload) -> VicreglConfig:
    common = dict(
        backbone_type=workload.backbone,
        depths=list(workload.depths),
        hidden_sizes=list(workload.widths),
        drop_path_rate=0.0,
        image_size=workload.crops[0][1],
        projector=workload.mlp,
        maps_projector=workload.maps_mlp,
        alpha=workload.alpha,
        num_matches=workload.num_matches,
        l2_all_matches=True,
        num_global_views=2,
    )
    if workload.backbone == "resnet":
        return VicreglConfig(**common, embedding_size=workload.embedding, zero_init_residual=True)
    return VicreglConfig(**common, patch_size=4, layer_scale_init_value=0.0)


def copy_weights(original_model, hf_model: VicreglForPreTraining, config: VicreglConfig) -> str:
    """Original VICRegL module state -> hf_mim through hf_mim.models.vicregl.convert_vicregl.convert_checkpoint()
    (backbone renamed, projectors by index, the online classifier dropped), loaded strictly."""
    checkpoint = {k: v.detach().clone() for k, v in original_model.state_dict().items()}
    inferred, state, is_full, _ = convert_checkpoint(checkpoint, "<original>", names=(f"alpha{config.alpha}",))
    for key in ("backbone_type", "depths", "hidden_sizes", "projector", "maps_projector", "alpha"):
        if getattr(inferred, key) != getattr(config, key):
            raise SystemExit(f"converter inferred {key}={getattr(inferred, key)}, config has {getattr(config, key)}")
    if not is_full:
        raise SystemExit("converter did not see the projectors")
    hf_model.load_state_dict(state, strict=True)
    return "weights: original -> hf_mim via hf_mim.models.vicregl.convert_vicregl.convert_checkpoint()"


# ------------------------------------------------------------------------------------------------------- the inputs
def make_batch(workload: Workload, batch_size: int, generator: torch.Generator) -> dict:
    """Random-normal views and the location grids of random crop boxes (global boxes cover 40-100 % of the
    224 x 224 source image's area, local ones 8-40 %, as the original's default scales), in both layouts."""
    views, grids = [], []
    for index, (count, side) in enumerate(workload.crops):
        low, high = (0.4, 1.0) if index == 0 else (0.08, 0.4)
        for _ in range(count):
            views.append(torch.randn(batch_size, 3, side, side, generator=generator))
            area = low + (high - low) * torch.rand(batch_size, generator=generator)
            sizes = (area.sqrt() * IMAGE_SIDE).tolist()
            corners = torch.rand(batch_size, 2, generator=generator).tolist()
            boxes = [(c[0] * (IMAGE_SIDE - s), c[1] * (IMAGE_SIDE - s), s, s) for s, c in zip(sizes, corners)]
            grids.append(torch.stack([crop_location_grid(box, side // TOTAL_STRIDE) for box in boxes]))
    global_count = workload.crops[0][0]
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    original_inputs = {"views": views, "locations": grids, "labels": labels}
    hf_inputs = {
        "pixel_values": torch.stack(views[:global_count], dim=1),
        "locations": torch.stack(grids[:global_count], dim=1),
    }
    if len(views) > global_count:
        hf_inputs["local_pixel_values"] = torch.stack(views[global_count:], dim=1)
        hf_inputs["local_locations"] = torch.stack(grids[global_count:], dim=1)
    return {"original": original_inputs, "hf": hf_inputs}


# --------------------------------------------------------------------------------------------------------- stepping
class HfStep:
    """hf_mim: forward, backward, fused AdamW over VicreglTrainer's groups (weight decay on matrices only)."""

    def __init__(self, model: VicreglForPreTraining):
        self.model = model.train()
        matrices = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        vectors = [p for p in model.parameters() if p.requires_grad and p.ndim == 1]
        groups = [{"params": matrices, "weight_decay": WEIGHT_DECAY}, {"params": vectors, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, fused=True)

    def loss(self, inputs: dict) -> float:
        with torch.no_grad():
            return self.model(**inputs).loss.item()

    def step(self, inputs: dict) -> torch.Tensor:
        loss = self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()


class OriginalStep:
    """The original: main_vicregl.py's loop body, fp32 branch, with `optimizers.build_optimizer`'s groups rebuilt as
    fused AdamW at a fixed lr."""

    def __init__(self, original, model):
        self.model = model.train()
        optimizer = original.optimizers.build_optimizer(model.args, model)
        drop = ("fused", "foreach", "lr")
        groups = [{k: v for k, v in g.items() if k not in drop} | {"lr": LR} for g in optimizer.param_groups]
        self.optimizer = torch.optim.AdamW(groups, fused=True)

    def loss(self, inputs: dict) -> tuple[float, float]:
        """(total loss, its online-classifier cross-entropy)."""
        with torch.no_grad():
            loss, logs = self.model.forward(inputs)
        return loss.item(), logs["cls_l"].item()

    def step(self, inputs: dict) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss, logs = self.model.forward(inputs)
        loss.backward()
        self.optimizer.step()
        for value in logs.values():  # the loop's logging reduce
            dist.reduce(value.div_(dist.get_world_size()), 0)
        return loss.detach()


def init_process_group() -> None:
    if dist.is_initialized():
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def build_workload(name: str, original, args, notes: list[str], checks: list[str]) -> list:
    workload = WORKLOADS[name]
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    original_model = build_original(original, workload, args.batch_size)
    randomize_norms(original_model, generator)
    config = hf_config(workload)
    hf_model = VicreglForPreTraining(config)
    notes.append(f"{name}: " + copy_weights(original_model, hf_model, config))
    compiled_model = copy.deepcopy(hf_model) if args.compiled else None
    batch = make_batch(workload, args.batch_size, generator)
    hf_step, original_step = HfStep(hf_model), OriginalStep(original, original_model)
    hf_loss = hf_step.loss(batch["hf"])
    original_total, classifier = original_step.loss(batch["original"])
    original_loss = original_total - classifier
    checks.append(
        f"{name} first-step loss (train mode, no grad): hf_mim {hf_loss:.8f} vs original {original_loss:.8f} "
        f"(= {original_total:.8f} - online classifier CE {classifier:.8f}): abs diff "
        f"{abs(hf_loss - original_loss):.3g}"
    )
    trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    classifier_params = sum(p.numel() for p in original_model.classifier.parameters())
    views = " + ".join(f"{count} x {side} px" for count, side in workload.crops)
    size = (
        f"ConvNeXt depths {list(workload.depths)} dims {list(workload.widths)}"
        if workload.backbone == "convnext"
        else f"bottleneck ResNet depths {list(workload.depths)} stem {workload.embedding} widths "
        f"{list(workload.widths)}"
    )
    notes.append(
        f"{name}: {size}, projector {workload.mlp}, maps projector {workload.maps_mlp}, alpha {workload.alpha}, "
        f"num_matches {workload.num_matches}, views {views}, batch {args.batch_size}; trainable {trainable / 1e6:.2f}M "
        f"(the original also has its {classifier_params / 1e3:.0f}k-parameter online classifier)"
    )
    impls = [
        harness.Impl(name, "hf_mim", args.batch_size, True, lambda i: hf_step.step(batch["hf"])),
        harness.Impl(name, "original", args.batch_size, True, lambda i: original_step.step(batch["original"])),
    ]
    if compiled_model is not None:  # the same weights and batch, its own fused AdamW, the model under torch.compile
        compiled_step = HfStep(compiled_model)
        compiled_step.model = torch.compile(compiled_step.model)
        impls.append(
            harness.Impl(name, harness.COMPILED, args.batch_size, True, lambda i: compiled_step.step(batch["hf"]))
        )
    return impls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original_src", type=Path, required=True, help="exported facebookresearch/VICRegL tree")
    common.add_workloads_argument(parser, WORKLOADS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time hf_mim's step with torch.compile(model), compiled in untimed warm-up steps",
    )
    common.add_timing_arguments(parser, rounds=6, steps=3)
    args = parser.parse_args(argv)
    common.require_positive(args, "rounds", "steps")
    names = common.parse_workloads(args.workloads, WORKLOADS)
    common.use_threads(args.num_threads)

    original, notes = import_original(args.original_src)
    init_process_group()
    checks: list[str] = []
    groups = {name: build_workload(name, original, args, notes, checks) for name in names}
    harness.warm_up_compiled(groups, 1, checks, notes)  # with --compiled: untimed, on the one batch
    print(
        f"VICRegL training step, hf_mim vs original ({args.original_src}) | batch {args.batch_size} | threads "
        f"{torch.get_num_threads()} | torch {torch.__version__}"
    )
    for line in checks:
        print("check: " + line)

    # ---- FLOPs (doubles as warm-up), interleaved rounds (A B, B A, ...; with --compiled A B C, B C A, C A B, ...; a
    # matmul yardstick between rounds), RSS; the steps run the one batch (they ignore the step index)
    graphs = harness.dynamo_graphs()
    matmul_rounds, elapsed = harness.measure(groups, args, 1)
    if args.compiled:
        notes.append(harness.compiled_after_warm_up(graphs))
    peak_wall, peak = max(w for w, _ in matmul_rounds), max(c for _, c in matmul_rounds)

    print()
    harness.print_table(groups, peak)
    print()
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s by CPU time ({peak_wall:.1f} by wall clock), {args.matmul_size}^2 "
        f"torch.mm, best call of the run. {args.rounds} rounds x {args.steps} timed steps per implementation "
        f"({elapsed:.0f} s); median ms over all timed steps; CPU ms = process CPU time; img/s = source images "
        "(batch) per second, each with all its views; speed-up = median over rounds of (original's round median / "
        f"hf_mim's), wall / CPU, > 1 means hf_mim is faster{harness.COMPILED_SPEEDUP if args.compiled else ''}; "
        "GFLOP/step from FlopCounterMode (conv + matmul, forward + backward); peak RSS +MiB = growth of the process "
        "peak RSS over one step after malloc_trim."
    )
    notes.append(
        "the original's step also runs its online linear classifier (CE on the detached representation, in its loss), "
        "its no-grad metrics (compute_metrics) and a dist.reduce of every log value; hf_mim's step has none of these"
    )
    for note in notes:
        print("note: " + note)
    if args.verbose:
        harness.print_round_medians(groups, 22, 9)
    if args.profile:
        for group in groups.values():
            harness.profile(group, args.profile_steps, args.profile)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
