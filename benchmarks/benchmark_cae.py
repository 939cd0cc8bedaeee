#!/usr/bin/env python
"""CAE pretraining-step speed on CPU: hf_mim against the original Atten4Vis/CAE code, in ONE interleaved run, on the
same weights, images, masks and targets.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_cae.py --original_src /tmp/orig/cae
    python benchmarks/benchmark_cae.py --original_src /tmp/orig/cae --workloads v1_small --rounds 10 --verbose
    python benchmarks/benchmark_cae.py --original_src /tmp/orig/cae --profile 25     # + torch.profiler tables
    python benchmarks/benchmark_cae.py --original_src /tmp/orig/cae --compiled       # + hf_mim under torch.compile

One timed step:
  * hf_mim: `CaeForPreTraining(pixel_values, bool_masked_pos, labels=token ids)` (v1) or `target_features=` (v2) ->
    backward -> fused AdamW step -> zero_grad.
  * original: the body of `furnace/engine_for_pretraining.py`'s `train_one_epoch` loop (float32, no autocast, no
    grad scaler): the no-grad target preparation from given targets (v1: `input_ids[bool_masked_pos]`; v2: the
    [cls, visible, masked] reordering), `ContextAutoencoderViT.forward(samples, bool_masked_pos)`, the loss (v1:
    cross-entropy + align_loss_weight x MSE; v2: latent_alignment_loss_weight x `cosine_embedding_loss` against the
    L2-normalised targets), `optimizer.zero_grad()`, backward, fused AdamW step.
  * hf_mim compiled (with --compiled): the hf_mim step on a copy of the same weights, with its own fused AdamW, the
    model wrapped by `torch.compile(model)` (inductor, fullgraph=False); it compiles in untimed warm-up steps over
    every mask draw, before the timed rounds.
The tokenizer (DALL-E) / teacher (CLIP) are not run on either side: both get the same given targets. The original
tree's `models` package is imported from --original_src (with stand-ins for the pieces that do not import with
current torch / without timm); none of its code is copied here. See benchmarks/README.md.
"""

import argparse
import contextlib
import copy
import importlib
import importlib.util
import io
import random
import sys
import types
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import _common as common
import _harness as harness
import torch
import torch.nn.functional as F
from torch import nn

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.models.cae.convert_cae import convert_checkpoint
from hf_mim.trainers.pretraining_trainer import bias_and_vector_groups

# The original tree's top-level packages: generic names, so same-named modules already imported are set aside while
# the original's are in sys.modules.
ORIGINAL_PACKAGES = ("models", "furnace", "timm")
LR, WEIGHT_DECAY = 1.5e-3, 0.05  # the CAE recipe's peak lr and weight decay (fixed: schedules do not change time)
ALIGN_LOSS_WEIGHT, LATENT_ALIGNMENT_LOSS_WEIGHT = 2.0, 1.0  # v1 / v2 script values (--align_loss_weight, ...)
MASK_DRAWS = 4  # mask draws, cycled over the steps (both sides get the same draw at the same step)


@dataclass(frozen=True)
class Workload:
    version: int
    regressor_depth: int
    decoder_depth: int
    decoder_width: int
    image_size: int = 96
    patch_size: int = 16
    width: int = 192
    depth: int = 6
    heads: int = 12  # CAE tiny / small use 12 heads
    decoder_heads: int = 12
    num_masked: int = 18
    min_block: int = 4  # the BEiT generator's smallest block (16 of 196 in the recipe; 4 of 36 here)
    vocab_size: int = 1024  # v1 token vocabulary (8192 for DALL-E)
    target_dim: int = 512  # v2 target width (CLIP ViT-B/16 projection)


WORKLOADS = {
    "v1_small": Workload(version=1, regressor_depth=2, decoder_depth=2, decoder_width=192),
    "v2_small": Workload(version=2, regressor_depth=1, decoder_depth=0, decoder_width=96),
}


# ------------------------------------------------------------------------------------------------ the original code
def _stand_ins(src: Path) -> tuple[dict[str, types.ModuleType], list[str]]:
    """Modules the original's model files import but that do not import here:
    * `timm.models.registry.register_model` and `timm.models.layers.{drop_path, to_2tuple, trunc_normal_}` (timm is
      not an hf_mim dependency; the real timm is used when installed): an identity decorator, torch's
      `trunc_normal_` (same signature and distribution), a `to_2tuple`, and a `drop_path` that refuses to run with a
      rate > 0 in training (drop path is 0 here, where the original builds nn.Identity);
    * `furnace.utils` (imported by models/modeling_finetune.py for its probe's BatchNorm only; it needs `torch._six`,
      tensorboardX, DALL-E and CLIP): an empty placeholder. `furnace` itself is a namespace over the tree's folder,
      so that `furnace.masking_generator` (the original mask generator) is the real file."""
    furnace = types.ModuleType("furnace")
    furnace.__path__ = [str(src / "furnace")]
    modules = {"furnace": furnace, "furnace.utils": types.ModuleType("furnace.utils")}
    notes = ["furnace.utils (torch._six, tensorboardX, DALL-E, CLIP) replaced by an empty placeholder"]
    if importlib.util.find_spec("timm") is None:

        def drop_path(x, drop_prob=0.0, training=False):
            if drop_prob and training:
                raise RuntimeError("drop path > 0 needs the real timm (pip install timm)")
            return x

        layers = types.ModuleType("timm.models.layers")
        layers.trunc_normal_, layers.drop_path = torch.nn.init.trunc_normal_, drop_path
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, list | tuple) else (x, x)
        registry = types.ModuleType("timm.models.registry")
        registry.register_model = lambda fn: fn
        models, timm = types.ModuleType("timm.models"), types.ModuleType("timm")
        models.layers, models.registry, timm.models = layers, registry, models
        modules |= {
            "timm": timm,
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
        }
        notes.append("timm is not installed: stand-in timm.models.{layers,registry} (torch's trunc_normal_)")
    return modules, notes


def import_original(src: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """Import `models.modeling_cae` and `furnace.masking_generator` from an exported Atten4Vis/CAE tree."""
    src = src.expanduser().resolve()
    if not (src / "models" / "modeling_cae.py").is_file():
        raise SystemExit(f"--original_src {src}: no models/modeling_cae.py there (not an Atten4Vis/CAE tree?)")
    generic = [n for n in sys.modules if n.split(".")[0] in ORIGINAL_PACKAGES]
    stashed = {name: sys.modules.pop(name) for name in generic}
    extra, notes = _stand_ins(src)
    sys.path.insert(0, str(src))
    try:
        with common.installed(extra):
            modeling = importlib.import_module("models.modeling_cae")
            masking = importlib.import_module("furnace.masking_generator")
        for module in (modeling, masking):
            if not Path(module.__file__).resolve().is_relative_to(src):
                raise SystemExit(f"--original_src: {module.__name__} resolved to {module.__file__}, not inside {src}")
    finally:
        sys.path.remove(str(src))
        for name in [n for n in sys.modules if n.split(".")[0] in ORIGINAL_PACKAGES]:
            sys.modules.pop(name)
        sys.modules.update(stashed)
    return types.SimpleNamespace(modeling=modeling, MaskingGenerator=masking.MaskingGenerator), notes


@contextlib.contextmanager
def cpu_cuda_calls():
    """`ContextAutoencoderViT.forward` moves its regressor position table with `.cuda(x.device)`, which raises for a
    CPU device: while the original runs, `Tensor.cuda(cpu device)` returns `.to(device)` (a no-op here)."""
    cuda = torch.Tensor.cuda

    def patched(self, device=None, *args, **kwargs):
        if device is not None and torch.device(device).type == "cpu":
            return self.to(device)
        return cuda(self, device, *args, **kwargs)

    torch.Tensor.cuda = patched
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def build_original(original, workload: Workload) -> nn.Module:
    """The original `ContextAutoencoderViT` at this workload's size, as the fixtures' generator builds it (`args`
    carries model_type / regressor_depth / decoder_embed_dim / decoder_depth / num_out_dim, as run_pretraining.py's
    args do)."""
    args = argparse.Namespace(
        model_type="cae" if workload.version == 1 else "caev2",
        regressor_depth=workload.regressor_depth,
        decoder_embed_dim=workload.decoder_width,
        decoder_depth=workload.decoder_depth,
        num_out_dim=workload.target_dim,
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints its depths and
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # calls meshgrid without `indexing`
        return original.modeling.ContextAutoencoderViT(
            img_size=workload.image_size,
            patch_size=workload.patch_size,
            embed_dim=workload.width,
            depth=workload.depth,
            num_heads=workload.heads,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            drop_path_rate=0.0,
            init_values=0.1,
            decoder_embed_dim=workload.decoder_width,
            regressor_depth=workload.regressor_depth,
            decoder_num_classes=workload.vocab_size,
            decoder_num_heads=workload.decoder_heads,
            decoder_layer_scale_init_value=0.1,
            decoder_depth=workload.decoder_depth,
            args=args,
        )


def randomize_vectors(model: nn.Module, generator: torch.Generator) -> None:
    """Add 0.1 N(0, 1) to every trainable 1-D tensor (LayerNorm weights and biases, layer scales, q / v biases, all
    other biases), which the original's init leaves at constants; then re-copy the encoder into the v1 alignment
    encoder (the original's `_init_alignment_encoder`). Makes the first-step loss check see every one of them."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    if model.alignment_encoder is not None:
        model._init_alignment_encoder()


def hf_config(workload: Workload, attn_implementation: str) -> CaeConfig:
    return CaeConfig(
        cae_version=workload.version,
        image_size=workload.image_size,
        patch_size=workload.patch_size,
        hidden_size=workload.width,
        num_hidden_layers=workload.depth,
        num_attention_heads=workload.heads,
        intermediate_size=4 * workload.width,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
        decoder_hidden_size=workload.decoder_width,
        decoder_num_attention_heads=workload.decoder_heads,
        decoder_intermediate_size=4 * workload.decoder_width,
        decoder_layer_scale_init_value=0.1,
        regressor_num_layers=workload.regressor_depth,
        decoder_num_layers=workload.decoder_depth,
        vocab_size=workload.vocab_size,
        target_hidden_size=workload.target_dim,
        num_masking_patches=workload.num_masked,
        min_masking_patches_per_block=workload.min_block,
        alignment_loss_weight=ALIGN_LOSS_WEIGHT,
        attn_implementation=attn_implementation,
    )


# ----------------------------------------------------------------------------------------------------- the weights
ARCHITECTURE = (
    "cae_version", "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size",
    "regressor_num_layers", "decoder_num_layers",
)  # fmt: skip


def copy_weights(original_model: nn.Module, hf_model: CaeForPreTraining, workload: Workload) -> str:
    """Original `ContextAutoencoderViT` state -> hf_mim through hf_mim.models.cae.convert_cae
    `convert_checkpoint()` (keys renamed, fused qkv split, the v1 alignment twin and v2's unused regressor norm
    dropped), in the container of a training save; the config it infers from the shapes must match, and the state is
    loaded strictly."""
    checkpoint = {"model": {k: v.detach().clone() for k, v in original_model.state_dict().items()}}
    config = hf_model.config
    inferred, state, is_full, _ = convert_checkpoint(
        checkpoint,
        "<original>",
        num_heads=config.num_attention_heads,
        decoder_num_heads=config.decoder_num_attention_heads,
    )
    keys = ARCHITECTURE + (("vocab_size",) if config.cae_version == 1 else ("target_hidden_size",))
    wrong = {k: (getattr(inferred, k), getattr(config, k)) for k in keys if getattr(inferred, k) != getattr(config, k)}
    if wrong or not is_full:
        raise SystemExit(f"converter inferred (value, expected) {wrong}; pretraining heads seen: {is_full}")
    hf_model.load_state_dict(state, strict=True)
    return "weights: original -> hf_mim via hf_mim.models.cae.convert_cae.convert_checkpoint(), loaded strictly"


# ------------------------------------------------------------------------------------------------------- the inputs
def make_inputs(original, workload: Workload, batch_size: int, seed: int) -> dict:
    """Random-normal images, MASK_DRAWS block masks from the original `furnace.masking_generator.MaskingGenerator`
    (Python `random`, seeded), and random targets: v1 token ids (B, N) of every patch, v2 features (B, 1 + N, D) of
    [cls, patches row-major] (natural order; each side reorders as it does)."""
    generator = torch.Generator().manual_seed(seed + 1)
    grid = workload.image_size // workload.patch_size
    images = torch.randn(batch_size, 3, workload.image_size, workload.image_size, generator=generator)
    masker = original.MaskingGenerator(
        grid, num_masking_patches=workload.num_masked, min_num_patches=workload.min_block
    )
    state = random.getstate()
    random.seed(seed)
    try:
        masks = [
            torch.stack([torch.from_numpy(masker()).flatten().bool() for _ in range(batch_size)])
            for _ in range(MASK_DRAWS)
        ]
    finally:
        random.setstate(state)
    if workload.version == 1:
        targets = torch.randint(0, workload.vocab_size, (batch_size, grid * grid), generator=generator)
    else:
        targets = torch.randn(batch_size, 1 + grid * grid, workload.target_dim, generator=generator)
    return {"images": images, "masks": masks, "targets": targets}


# --------------------------------------------------------------------------------------------------------- stepping
class HfStep:
    """hf_mim: forward with the targets, backward, fused AdamW over CaeTrainer's groups, zero_grad."""

    def __init__(self, model: CaeForPreTraining, inputs: dict):
        self.model, self.inputs = model.train(), inputs
        self.target_key = "labels" if model.config.cae_version == 1 else "target_features"
        groups = bias_and_vector_groups(model)
        groups = [{"params": g["params"], "weight_decay": WEIGHT_DECAY * g["weight_decay_multiplier"]} for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, fused=True)

    def forward(self, index: int):
        inputs = self.inputs
        mask = inputs["masks"][index % len(inputs["masks"])]
        return self.model(pixel_values=inputs["images"], bool_masked_pos=mask, **{self.target_key: inputs["targets"]})

    def loss(self, index: int) -> tuple[dict[str, float], tuple]:
        """The losses, and (logits, latent predictions, latent targets) as the original returns them."""
        with torch.no_grad():
            out = self.forward(index)
        parts = {"loss": out.loss.item()}
        if out.alignment_loss is not None:
            parts |= {"CE": out.prediction_loss.item(), "align": out.alignment_loss.item()}
        return parts, (out.logits, out.latent_predictions, out.latent_targets)

    def step(self, index: int) -> torch.Tensor:
        loss = self.forward(index).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()


class OriginalStep:
    """The original: engine_for_pretraining.py's loop body (float32) with the `get_parameter_groups` rule of
    furnace/optim_factory.py (no decay on 1-D tensors and `.bias`; the pretraining model declares no skip list; the
    frozen alignment encoder and sin-cos tables are left out) as fused AdamW at a fixed lr."""

    def __init__(self, model: nn.Module, inputs: dict, version: int):
        self.model, self.inputs, self.version = model.train(), inputs, version
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
        groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, fused=True)

    def losses(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        images, targets = self.inputs["images"], self.inputs["targets"]
        bool_masked_pos = self.inputs["masks"][index % len(self.inputs["masks"])]
        with torch.no_grad():  # the engine's target preparation, from given token ids / teacher features
            if self.version == 2:
                channels = targets.shape[-1]
                cls_token_labels, input_ids = targets[:, :1, :], targets[:, 1:, :]
                masked_labels = input_ids[bool_masked_pos].reshape(images.shape[0], -1, channels)
                unmasked_labels = input_ids[~bool_masked_pos].reshape(images.shape[0], -1, channels)
                labels = torch.cat([cls_token_labels, unmasked_labels, masked_labels], dim=1)
            else:
                labels = targets[bool_masked_pos]
        with cpu_cuda_calls():
            outputs, latent_predict, latent_target = self.model(images, bool_masked_pos=bool_masked_pos)
        if self.version == 2:
            labels = labels / labels.norm(dim=-1, keepdim=True)
            channels = outputs.shape[-1]
            flat = labels.reshape(-1, channels)
            loss_main = LATENT_ALIGNMENT_LOSS_WEIGHT * F.cosine_embedding_loss(
                outputs.reshape(-1, channels).float(), flat, torch.ones_like(flat[:, 0]), reduction="mean"
            )
            loss_align = torch.zeros(1)[0]
        else:
            loss_main = nn.CrossEntropyLoss()(input=outputs.float(), target=labels)
            loss_align = ALIGN_LOSS_WEIGHT * F.mse_loss(
                latent_predict.float(), latent_target.detach().float(), reduction="mean"
            )
        return loss_main + loss_align, loss_main, loss_align, (outputs, latent_predict, latent_target)

    def loss(self, index: int) -> tuple[dict[str, float], tuple]:
        with torch.no_grad():
            loss, main, align, outputs = self.losses(index)
        parts = {"loss": loss.item()}
        if self.version == 1:
            parts |= {"CE": main.item(), "align": align.item()}
        return parts, outputs

    def step(self, index: int) -> torch.Tensor:
        loss, *_ = self.losses(index)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def build_workload(name: str, original, args, notes: list[str], checks: list[str]) -> list:
    workload = WORKLOADS[name]
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    original_model = build_original(original, workload)
    randomize_vectors(original_model, generator)
    hf_model = CaeForPreTraining(hf_config(workload, args.attn_implementation))
    notes.append(f"{name}: " + copy_weights(original_model, hf_model, workload))
    compiled_model = copy.deepcopy(hf_model) if args.compiled else None
    inputs = make_inputs(original, workload, args.batch_size, args.seed)
    hf_step, original_step = HfStep(hf_model, inputs), OriginalStep(original_model, inputs, workload.version)
    (hf_parts, hf_outputs), (original_parts, original_outputs) = hf_step.loss(0), original_step.loss(0)
    values = ", ".join(f"{k} {hf_parts[k]:.8f} vs {original_parts[k]:.8f}" for k in hf_parts)
    diff = max(abs(hf_parts[k] - original_parts[k]) for k in hf_parts)
    output_diffs = ", ".join(
        f"{label} {(ours - theirs).abs().max().item():.2g}"
        for label, ours, theirs in zip(("logits", "latent_predict", "latent_target"), hf_outputs, original_outputs)
        if theirs is not None
    )
    checks.append(
        f"{name} first-step loss (train mode, no grad), hf_mim vs original: {values}: max abs diff {diff:.3g} "
        f"(outputs max abs diff: {output_diffs})"
    )
    trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    original_trainable = sum(p.numel() for g in original_step.optimizer.param_groups for p in g["params"])
    grid = workload.image_size // workload.patch_size
    head = f"vocab {workload.vocab_size}" if workload.version == 1 else f"targets {workload.target_dim}-d"
    notes.append(
        f"{name}: CAE v{workload.version}, ViT {workload.width} wide x {workload.depth} blocks ({workload.heads} heads),"
        f" patch {workload.patch_size}, {workload.image_size} px ({grid}x{grid} grid), {workload.num_masked} masked; "
        f"regressor {workload.regressor_depth}, decoder {workload.decoder_depth} blocks, width "
        f"{workload.decoder_width} ({workload.decoder_heads} heads), {head}; batch {args.batch_size}; trainable "
        f"{trainable / 1e6:.3f}M (original optimizer: {original_trainable / 1e6:.3f}M)"
    )
    impls = [
        harness.Impl(name, "hf_mim", args.batch_size, True, hf_step.step),
        harness.Impl(name, "original", args.batch_size, True, original_step.step),
    ]
    if compiled_model is not None:  # the same weights and inputs, its own fused AdamW, the model under torch.compile
        compiled_step = HfStep(compiled_model, inputs)
        compiled_step.model = torch.compile(compiled_step.model)
        impls.append(harness.Impl(name, harness.COMPILED, args.batch_size, True, compiled_step.step))
    return impls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original_src", type=Path, required=True, help="exported Atten4Vis/CAE tree")
    common.add_workloads_argument(parser, WORKLOADS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--attn_implementation",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="hf_mim's attention (the original always runs q @ k^T, softmax, @ v)",
    )
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
    checks: list[str] = []
    groups = {name: build_workload(name, original, args, notes, checks) for name in names}
    harness.warm_up_compiled(groups, MASK_DRAWS, checks, notes)  # with --compiled: untimed, over every mask draw
    print(
        f"CAE pretraining step, hf_mim vs original ({args.original_src}) | batch {args.batch_size} | hf_mim attention "
        f"{args.attn_implementation} | threads {torch.get_num_threads()} | torch {torch.__version__}"
    )
    for line in checks:
        print("check: " + line)

    # ---- FLOPs (doubles as warm-up), interleaved rounds (A B, B A, ...; with --compiled A B C, B C A, C A B, ...; a
    # matmul yardstick between rounds), RSS
    graphs = harness.dynamo_graphs()
    matmul_rounds, elapsed = harness.measure(groups, args, MASK_DRAWS)
    if args.compiled:
        notes.append(harness.compiled_after_warm_up(graphs))
    peak_wall, peak = max(w for w, _ in matmul_rounds), max(c for _, c in matmul_rounds)

    print()
    harness.print_table(groups, peak)
    print()
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s by CPU time ({peak_wall:.1f} by wall clock), {args.matmul_size}^2 "
        f"torch.mm, best call of the run. {args.rounds} rounds x {args.steps} timed steps per implementation "
        f"({elapsed:.0f} s); median ms over all timed steps; CPU ms = process CPU time; speed-up = median over rounds "
        f"of (original's round median / hf_mim's), wall / CPU, > 1 means hf_mim is faster"
        f"{harness.COMPILED_SPEEDUP if args.compiled else ''}; GFLOP/step from "
        f"FlopCounterMode (matmul, conv, attention; forward + backward; mean over the {MASK_DRAWS} mask draws); peak "
        "RSS +MiB = growth of the process peak RSS over one step after malloc_trim."
    )
    for note in notes:
        print("note: " + note)
    if args.verbose:
        harness.print_round_medians(groups, 10, 9)
    if args.profile:
        for group in groups.values():
            harness.profile(group, args.profile_steps, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
