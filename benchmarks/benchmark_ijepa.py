#!/usr/bin/env python
"""I-JEPA speed on CPU: hf_mim against the original code and against transformers, in ONE interleaved run.

    python benchmarks/benchmark_ijepa.py --num_threads 1 --rounds 8 --steps 4
    python benchmarks/benchmark_ijepa.py --original_ijepa /path/to/ijepa --original_capi /path/to/capi --verbose
    python benchmarks/benchmark_ijepa.py --original_ijepa /path/to/ijepa --original_capi /path/to/capi --compiled

Workloads (each timed in every round, the implementations of one workload rotating which goes first):
  * ijepa_step: one I-JEPA pretraining step. hf_mim `IJepaForPreTraining` (forward, backward, fused AdamW,
    `update_teacher`) against the original facebookresearch/ijepa step, transcribed here from its src/train.py
    (target encoder without grad + layer_norm + apply_masks + repeat_interleave_batch, context encoder on masks_enc,
    predictor, smooth_l1, backward, fused AdamW, EMA with mul_/add_), on identical weights and masks.
  * ijepa_infer_sdpa / ijepa_infer_eager: hf_mim `IJepaModel` against `transformers.IJepaModel` (same weights,
    loaded from one save_pretrained folder), `torch.no_grad()`, under each attention implementation.
  * capi_step (with --original_capi): the CAPI step of benchmarks/benchmark_pretraining.py, hf_mim against the
    original, both with fused AdamW.
  * --compiled adds a third implementation to ijepa_step and capi_step, "hf_mim compiled": the same hf_mim step on a
    copy of the same weights, with its own fused AdamW, the model wrapped by `torch.compile(model)` (inductor,
    fullgraph=False). It compiles in untimed warm-up steps over every mask draw before the timed rounds.
  * matmul peak: fp32 `torch.mm` calls (the best one of the run), the yardstick for the achieved-GFLOP/s column.
The original code is imported from the given checkouts at run time; none of it is copied here. See
benchmarks/README.md.
"""

import argparse
import contextlib
import copy
import importlib
import sys
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import _common as common
import _harness as harness
import benchmark_pretraining as capi_benchmark  # the capi_step row: its HfRunner, OriginalRunner, weight copy
import torch
import torch.nn.functional as F
import transformers

from hf_mim import CapiConfig, IJepaConfig, IJepaForPreTraining, IJepaModel
from hf_mim.masking import InverseBlockMasking, to_absolute
from hf_mim.models.ijepa.convert_ijepa import convert_checkpoint
from hf_mim.models.ijepa.modeling_ijepa import multiblock_masking

# A small ViT (ViT-Ti/16 width, half depth, a 4-block predictor): ~0.5 s per training step on one thread at batch 8.
BENCH_DEFAULTS = dict(
    image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
    intermediate_size=768, predictor_hidden_size=96, predictor_num_hidden_layers=4,
    predictor_num_attention_heads=3, predictor_intermediate_size=384,
)  # fmt: skip
PRESETS = {
    "bench": lambda **kwargs: IJepaConfig(**{**BENCH_DEFAULTS, **kwargs}),
    "tiny": IJepaConfig.tiny,
    "small": IJepaConfig.small,
    "vith14": IJepaConfig.vith14,
}
# Optimisation settings (they do not change the time a step takes): the original's starting weight decay and its
# EMA start; no schedules.
LR, WEIGHT_DECAY, MOMENTUM = 1e-4, 0.04, 0.996


# --------------------------------------------------------------------------------------------- arguments / config
def build_ijepa_config(args) -> IJepaConfig:
    overrides = common.parse_overrides(args.config_overrides, "--config_overrides", reference=PRESETS[args.config]())
    if args.image_size is not None:
        overrides["image_size"] = args.image_size  # the original's position table is built for this grid
    overrides.setdefault("mask_sampler", "original")
    return PRESETS[args.config](**overrides, attn_implementation=args.train_attn_implementation)


# ------------------------------------------------------------------------------------------ mask layout (one place)
# Masks are drawn in the original's layout: a list with one (B, K) index tensor per block, as its MaskCollator
# returns them. hf_mim's `IJepaForPreTraining` and `MultiBlockMasking` are batch-first: (B, num_blocks, K).
def masks_to_hf(masks: list[torch.Tensor]) -> torch.Tensor:
    """The original's list of (B, K) tensors -> hf_mim's batch-first (B, num_blocks, K)."""
    return torch.stack(masks, dim=1)


def masks_from_hf(indices: torch.Tensor) -> list[torch.Tensor]:
    """hf_mim's batch-first (B, num_blocks, K) -> the original's list of (B, K) tensors."""
    return [m.contiguous() for m in indices.unbind(1)]


# ------------------------------------------------------------------------------------------------ the original code
def import_original_ijepa(checkout: Path) -> SimpleNamespace:
    """Import the original's modules from a facebookresearch/ijepa work tree (its package is called `src`)."""
    checkout = checkout.expanduser().resolve()
    if not (checkout / "src" / "models" / "vision_transformer.py").is_file():
        raise SystemExit(f"--original_ijepa {checkout}: no src/models/vision_transformer.py (not an ijepa tree?)")
    stashed = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "src" or name.startswith("src.")}
    sys.path.insert(0, str(checkout))
    try:
        vit = importlib.import_module("src.models.vision_transformer")
        multiblock = importlib.import_module("src.masks.multiblock")
        mask_utils = importlib.import_module("src.masks.utils")
        tensors = importlib.import_module("src.utils.tensors")
        distributed = importlib.import_module("src.utils.distributed")
        if not Path(vit.__file__).resolve().is_relative_to(checkout):
            raise SystemExit(f"--original_ijepa: `src` resolved to {vit.__file__}, not inside {checkout}")
    finally:
        sys.path.remove(str(checkout))
        for name in [n for n in sys.modules if n == "src" or n.startswith("src.")]:
            sys.modules.pop(name)
        sys.modules.update(stashed)
    return SimpleNamespace(
        vit=vit,
        MaskCollator=multiblock.MaskCollator,
        apply_masks=mask_utils.apply_masks,
        repeat_interleave_batch=tensors.repeat_interleave_batch,
        AllReduce=distributed.AllReduce,
    )


def check_original_compatible(config: IJepaConfig) -> None:
    problems = []
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act={config.hidden_act!r} (the original uses nn.GELU)")
    if not config.qkv_bias:
        problems.append("qkv_bias=False (the original's I-JEPA models have qkv biases)")
    if config.predictor_num_attention_heads != config.num_attention_heads:
        problems.append("predictor heads != encoder heads (the original's init_model uses the encoder's)")
    if config.drop_path_rate or config.attention_probs_dropout_prob:
        problems.append("drop_path_rate / attention dropout (0 in I-JEPA pretraining)")
    if config.loss_type != "smooth_l1":
        problems.append(f"loss_type={config.loss_type!r} (the released code uses smooth_l1)")
    if problems:
        raise SystemExit("--original_ijepa cannot build this config: " + "; ".join(problems))


class OriginalIJepa:
    """The original's encoder / predictor / target encoder, built as its `init_model` + `copy.deepcopy` do, and its
    train step (src/train.py `train_step`, float32 branch, one process)."""

    def __init__(self, original: SimpleNamespace, config: IJepaConfig):
        self.original = original
        norm = partial(torch.nn.LayerNorm, eps=config.layer_norm_eps)
        self.encoder = original.vit.VisionTransformer(
            img_size=[config.image_size],
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            embed_dim=config.hidden_size,
            depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / config.hidden_size,
            qkv_bias=config.qkv_bias,
            norm_layer=norm,
        )
        self.predictor = original.vit.VisionTransformerPredictor(
            num_patches=self.encoder.patch_embed.num_patches,
            embed_dim=config.hidden_size,
            predictor_embed_dim=config.predictor_hidden_size,
            depth=config.predictor_num_hidden_layers,
            num_heads=config.num_attention_heads,
            mlp_ratio=config.predictor_intermediate_size / config.predictor_hidden_size,
            qkv_bias=config.qkv_bias,
            norm_layer=norm,
        )
        for width, module in (
            (config.intermediate_size, self.encoder.blocks[0]),
            (config.predictor_intermediate_size, self.predictor.predictor_blocks[0]),
        ):
            if module.mlp.fc1.out_features != width:
                raise SystemExit(f"the original cannot build an MLP of width {width} from an integer-free ratio")
        self.target_encoder = copy.deepcopy(self.encoder)
        for param in self.target_encoder.parameters():
            param.requires_grad = False

    def checkpoint(self) -> dict:
        """The original's .pth.tar layout (DDP 'module.' prefixes), as its checkpoints are saved."""

        def prefixed(module):
            return {f"module.{k}": v.detach().clone() for k, v in module.state_dict().items()}

        return {
            "encoder": prefixed(self.encoder),
            "predictor": prefixed(self.predictor),
            "target_encoder": prefixed(self.target_encoder),
        }

    def setup(self) -> None:
        self.encoder.train()
        self.predictor.train()
        self.target_encoder.train()  # the original never switches it to eval (no dropout, no drop path)

        def groups(module):  # init_opt's rule: no weight decay on biases and 1-D parameters
            decay = [p for n, p in module.named_parameters() if ("bias" not in n) and (len(p.shape) != 1)]
            no_decay = [p for n, p in module.named_parameters() if ("bias" in n) or (len(p.shape) == 1)]
            return decay, no_decay

        (enc_decay, enc_no), (pred_decay, pred_no) = groups(self.encoder), groups(self.predictor)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": enc_decay},
                {"params": pred_decay},
                {"params": enc_no, "WD_exclude": True, "weight_decay": 0},
                {"params": pred_no, "WD_exclude": True, "weight_decay": 0},
            ],
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            fused=True,
        )

    def loss(self, images: torch.Tensor, masks_enc: list, masks_pred: list) -> torch.Tensor:
        apply_masks, repeat_interleave_batch = self.original.apply_masks, self.original.repeat_interleave_batch
        with torch.no_grad():  # forward_target()
            h = self.target_encoder(images)
            h = F.layer_norm(h, (h.size(-1),))
            batch = len(h)
            h = apply_masks(h, masks_pred)
            h = repeat_interleave_batch(h, batch, repeat=len(masks_enc))
        z = self.encoder(images, masks_enc)  # forward_context()
        z = self.predictor(z, masks_enc, masks_pred)
        return self.original.AllReduce.apply(F.smooth_l1_loss(z, h))  # loss_fn(); AllReduce is the identity here

    def step(self, images: torch.Tensor, masks_enc: list, masks_pred: list) -> torch.Tensor:
        loss = self.loss(images, masks_enc, masks_pred)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            for param_q, param_k in zip(self.encoder.parameters(), self.target_encoder.parameters()):
                param_k.data.mul_(MOMENTUM).add_((1.0 - MOMENTUM) * param_q.detach().data)
        return loss.detach()


def copy_original_ijepa_weights(original: OriginalIJepa, hf_model: IJepaForPreTraining, config: IJepaConfig) -> str:
    """Original encoder / predictor / target encoder -> hf_mim through hf_mim.models.ijepa.convert_ijepa."""
    inferred, state, _ = convert_checkpoint(original.checkpoint(), "<original>", config.num_attention_heads)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "predictor_hidden_size",
        "predictor_num_hidden_layers",
        "predictor_intermediate_size",
        "patch_size",
        "image_size",
    ):
        if getattr(inferred, key) != getattr(config, key):
            raise SystemExit(f"converter inferred {key}={getattr(inferred, key)}, config has {getattr(config, key)}")
    hf_model.load_state_dict(state, strict=True)
    hf_model._after_load()
    return "weights: original -> hf_mim via hf_mim.models.ijepa.convert_ijepa.convert_checkpoint()"


# ------------------------------------------------------------------------------------------------------ hf_mim step
class HfIJepa:
    """hf_mim's step as its trainer runs it: forward, backward, fused AdamW (transformers' default optimizer on torch
    >= 2.8, `adamw_torch_fused`) over IJepaTrainer's parameter groups, zero_grad, `update_teacher`."""

    def __init__(self, model: IJepaForPreTraining):
        self.model = model

    def setup(self) -> None:
        self.model.train()
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, fused=True)

    @torch.no_grad()
    def loss(self, images: torch.Tensor, masks_enc: list, masks_pred: list) -> torch.Tensor:
        out = self.model(
            pixel_values=images, context_indices=masks_to_hf(masks_enc), target_indices=masks_to_hf(masks_pred)
        )
        return out.loss

    def step(self, images: torch.Tensor, context_indices: torch.Tensor, target_indices: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=images, context_indices=context_indices, target_indices=target_indices)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_teacher(MOMENTUM)
        return out.loss.detach()


# -------------------------------------------------------------------------------------------------------- CAPI row
def fuse_optimizers(runner) -> None:
    """Rebuild every optimizer a benchmark_pretraining runner holds as fused AdamW (same groups and settings)."""
    for name, value in list(vars(runner).items()):
        if isinstance(value, torch.optim.Optimizer):
            groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in value.param_groups]
            setattr(runner, name, torch.optim.AdamW(groups, fused=True))


def build_capi(args, ijepa_config: IJepaConfig, notes: list[str]):
    """hf_mim and original CAPI steps from benchmarks/benchmark_pretraining.py, on copied weights and shared masks;
    with --compiled also hf_mim's on a copy of its weights, its forward `torch.compile(model)` (default dynamic
    shapes, not HfRunner's own `dynamic=False`)."""
    c = ijepa_config
    settings = dict(
        image_size=c.image_size,
        patch_size=c.patch_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=4 * c.hidden_size,
        decoder_hidden_size=c.hidden_size,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=c.num_attention_heads,
        decoder_intermediate_size=4 * c.hidden_size,
        num_register_tokens=4,
        num_prototypes=1024,
        drop_path_rate=0.0,
    )
    settings.update(common.parse_overrides(args.capi_config_overrides, "--capi_config_overrides"))
    config = CapiConfig(**settings, attn_implementation=args.train_attn_implementation)
    capi_benchmark.check_original_compatible(config)
    original, stubbed = capi_benchmark.import_original(args.original_capi)
    if stubbed:
        notes.append(f"capi: stubbed missing module(s) {', '.join(stubbed)} to import the original model.py")
    torch.manual_seed(args.seed)
    original_model = capi_benchmark.OriginalCapi(original, config)
    hf_model = capi_benchmark.CapiForPreTraining(config)
    capi_benchmark.copy_original_weights(original_model, hf_model, config)
    compiled_model = copy.deepcopy(hf_model) if args.compiled else None
    generator = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(args.batch_size, config.num_channels, c.image_size, c.image_size, generator=generator)
    grid = (c.image_size // config.patch_size,) * 2
    masking = InverseBlockMasking(
        config.mask_ratio, config.prediction_subsampling, config.mask_min_aspect, roll=config.mask_roll
    )
    draws = []
    for _ in range(args.mask_draws):
        m = masking(args.batch_size, grid, generator)
        draws.append(
            {
                "visible": m.visible_indices,
                "predict": m.predict_indices,
                "visible_abs": to_absolute(m.visible_indices, grid[0] * grid[1]),
                "predict_abs": to_absolute(m.predict_indices, grid[0] * grid[1]),
            }
        )
    hf_runner = capi_benchmark.HfRunner(hf_model, False)
    original_runner = capi_benchmark.OriginalRunner(original_model, False)
    autocast = contextlib.nullcontext
    hf_model.eval()
    original_model.eval()
    hf_losses = hf_runner.losses(images, draws[0], autocast)
    original_losses = original_runner.losses(images, draws[0], autocast)
    diff = max(abs(hf_losses[k] - original_losses[k]) for k in hf_losses)
    values = ", ".join(f"{k} {hf_losses[k]:.8f} vs {original_losses[k]:.8f}" for k in hf_losses)
    checks = [f"capi first-step losses (eval mode), hf_mim vs original: {values}: max abs diff {diff:.3g}"]
    runners = [("hf_mim", hf_runner), ("original", original_runner)]
    if compiled_model is not None:
        compiled_runner = capi_benchmark.HfRunner(compiled_model, False)
        compiled_runner.forward = torch.compile(compiled_model)
        runners.append((harness.COMPILED, compiled_runner))
    impls = []
    for name, runner in runners:
        runner.setup(torch.device("cpu"))
        fuse_optimizers(runner)
        impls.append(
            harness.Impl(
                "capi_step",
                name,
                args.batch_size,
                True,
                lambda i, r=runner: r.step(images, draws[i % len(draws)], autocast),
            )
        )
    notes.append(
        f"capi: hidden {config.hidden_size}x{config.num_hidden_layers}, decoder {config.decoder_hidden_size}x"
        f"{config.decoder_num_hidden_layers}, {config.num_prototypes} prototypes, patch {config.patch_size}; steps of "
        "benchmark_pretraining.py's HfRunner / OriginalRunner with their optimizers rebuilt as fused AdamW."
    )
    return impls, checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original_ijepa", type=Path, default=None, help="facebookresearch/ijepa work tree")
    parser.add_argument("--original_capi", type=Path, default=None, help="facebookresearch/capi checkout (CAPI row)")
    parser.add_argument("--config", choices=sorted(PRESETS), default="bench", help="IJepaConfig preset")
    parser.add_argument("--config_overrides", default=None, help='"k=v,..." IJepaConfig fields')
    parser.add_argument("--capi_config_overrides", default=None, help='"k=v,..." CapiConfig fields of the CAPI row')
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=None, help="default: the config's image_size")
    parser.add_argument("--mask_draws", type=int, default=4, help="mask draws, cycled over the steps (both sides)")
    parser.add_argument(
        "--train_attn_implementation",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="hf_mim's attention in the training steps (the original I-JEPA always runs eager math)",
    )
    parser.add_argument("--skip", default="", help="comma list of workloads to leave out (ijepa_step,ijepa_infer)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time hf_mim's ijepa_step / capi_step with torch.compile(model), compiled in untimed warm-up steps",
    )
    common.add_timing_arguments(parser, rounds=8, steps=4, verbose_help="also print per-round medians", profile=False)
    args = parser.parse_args(argv)
    common.require_positive(args, "rounds", "steps", "mask_draws")
    common.use_threads(args.num_threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    skip = set(common.comma_list(args.skip))

    config = build_ijepa_config(args)
    side = config.image_size
    if side % config.patch_size:
        raise SystemExit(f"image size {side} is not a multiple of patch_size {config.patch_size}")
    grid = (side // config.patch_size, side // config.patch_size)
    notes, checks = [], []
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, config.num_channels, side, side, generator=generator)

    # ---- models and masks (same weights, same masks for both implementations of a workload)
    torch.manual_seed(args.seed)
    original = None
    if args.original_ijepa is not None:
        check_original_compatible(config)
        original = OriginalIJepa(import_original_ijepa(args.original_ijepa), config)
    hf_model = IJepaForPreTraining(config)
    if original is not None:
        notes.append(copy_original_ijepa_weights(original, hf_model, config))
        collator = original.original.MaskCollator(
            input_size=side,
            patch_size=config.patch_size,
            enc_mask_scale=config.context_block_scale,
            pred_mask_scale=config.target_block_scale,
            aspect_ratio=config.target_aspect_ratio,
            nenc=config.num_context_blocks,
            npred=config.num_target_blocks,
            min_keep=config.min_keep,
            allow_overlap=config.allow_overlap,
        )
        torch.manual_seed(args.seed)  # the collator places blocks with torch's global RNG
        draws = [collator([0] * args.batch_size)[1:] for _ in range(args.mask_draws)]
        draws = [([m.contiguous() for m in enc], [m.contiguous() for m in pred]) for enc, pred in draws]
        notes.append("masks: the original src.masks.multiblock.MaskCollator, the same draws for both")
    else:
        masking = multiblock_masking(config, sampler="original")
        draws = []
        for _ in range(args.mask_draws):
            m = masking(args.batch_size, grid, generator)
            draws.append((masks_from_hf(m.context_indices), masks_from_hf(m.target_indices)))
        notes.append("masks: hf_mim MultiBlockMasking(sampler='original')")
    hf_draws = [(masks_to_hf(enc), masks_to_hf(pred)) for enc, pred in draws]
    sizes = [(enc[0].shape[1], pred[0].shape[1]) for enc, pred in draws]

    groups: dict[str, list[harness.Impl]] = {}
    if "ijepa_step" not in skip:
        if original is not None:
            hf_model.eval()
            hf_loss = HfIJepa(hf_model).loss(images, *draws[0]).item()
            with torch.no_grad():
                original_loss = original.loss(images, *draws[0]).item()
            checks.append(
                f"ijepa first-step losses hf_mim {hf_loss:.8f} vs original {original_loss:.8f}: max abs diff "
                f"{abs(hf_loss - original_loss):.3g}"
            )
        hf_step = HfIJepa(hf_model)
        hf_step.setup()
        impls = [
            harness.Impl(
                "ijepa_step",
                "hf_mim",
                args.batch_size,
                True,
                lambda i: hf_step.step(images, *hf_draws[i % len(hf_draws)]),
            )
        ]
        if original is not None:
            original.setup()
            impls.append(
                harness.Impl(
                    "ijepa_step",
                    "original",
                    args.batch_size,
                    True,
                    lambda i: original.step(images, *draws[i % len(draws)]),
                )
            )
        if args.compiled:  # a copy of the same weights, its own fused AdamW, the model under torch.compile
            compiled_step = HfIJepa(copy.deepcopy(hf_model))
            compiled_step.setup()
            compiled_step.model = torch.compile(compiled_step.model)
            impls.append(
                harness.Impl(
                    "ijepa_step",
                    harness.COMPILED,
                    args.batch_size,
                    True,
                    lambda i: compiled_step.step(images, *hf_draws[i % len(hf_draws)]),
                )
            )
        groups["ijepa_step"] = impls

    if "ijepa_infer" not in skip:
        with tempfile.TemporaryDirectory() as folder:
            hf_model.ijepa.save_pretrained(folder)  # the context encoder (converted from the original if given)
            for implementation in ("sdpa", "eager"):
                ours = IJepaModel.from_pretrained(folder, attn_implementation=implementation).eval()
                theirs = transformers.IJepaModel.from_pretrained(folder, attn_implementation=implementation).eval()
                with torch.no_grad():
                    diff = (ours(images).last_hidden_state - theirs(images).last_hidden_state).abs().max().item()
                checks.append(
                    f"ijepa_infer_{implementation}: hf_mim vs transformers last_hidden_state max abs diff {diff:.3g}"
                )

                def infer(i, model=None):
                    with torch.no_grad():
                        return model(pixel_values=images)

                groups[f"ijepa_infer_{implementation}"] = [
                    harness.Impl(
                        f"ijepa_infer_{implementation}", "hf_mim", args.batch_size, False, partial(infer, model=ours)
                    ),
                    harness.Impl(
                        f"ijepa_infer_{implementation}",
                        "transformers",
                        args.batch_size,
                        False,
                        partial(infer, model=theirs),
                    ),
                ]

    if args.original_capi is not None:
        capi_impls, capi_checks = build_capi(args, config, notes)
        groups["capi_step"] = capi_impls
        checks += capi_checks
    if not groups:
        raise SystemExit("nothing to run")
    harness.warm_up_compiled(groups, args.mask_draws, checks, notes)  # with --compiled: untimed, over every mask draw

    trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    print(
        f"I-JEPA config={args.config}: encoder {config.hidden_size}x{config.num_hidden_layers} (heads "
        f"{config.num_attention_heads}, mlp {config.intermediate_size}), predictor {config.predictor_hidden_size}x"
        f"{config.predictor_num_hidden_layers}, patch {config.patch_size}, image {side} ({grid[0] * grid[1]} patches)"
        f", {config.num_target_blocks} target blocks | trainable {trainable / 1e6:.2f}M | batch {args.batch_size} | "
        f"train attn {args.train_attn_implementation} | threads {torch.get_num_threads()} | torch {torch.__version__}"
        f" | transformers {transformers.__version__}"
    )
    print(f"mask draws (context, target patches per block): {sizes}")
    for line in checks:
        print("check: " + line)

    # ---- FLOPs (doubles as warm-up: one step per mask draw), interleaved rounds, peak RSS growth
    graphs = harness.dynamo_graphs()
    matmul_rounds, elapsed = harness.measure(groups, args, args.mask_draws)
    if args.compiled:
        notes.append(harness.compiled_after_warm_up(graphs))
    peak_wall, peak = max(w for w, _ in matmul_rounds), max(c for _, c in matmul_rounds)

    print()
    harness.print_table(groups, peak)
    print()
    calls = len(matmul_rounds) * args.matmul_reps - args.matmul_reps + 1
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s by CPU time ({peak_wall:.1f} by wall clock): {args.matmul_size}x"
        f"{args.matmul_size} torch.mm, best of {calls} calls spread over the run, {torch.get_num_threads()} "
        "thread(s)"
    )
    print(
        f"{args.rounds} rounds x {args.steps} timed steps per implementation ({elapsed:.0f} s); median ms over all "
        "timed steps (wall clock; CPU ms = process CPU time, which leaves out time spent descheduled by other "
        "load); speed-up = median over rounds of (other's round median / hf_mim's round median), wall and CPU, > 1 "
        f"means hf_mim is faster{harness.COMPILED_SPEEDUP if args.compiled else ''}; implementations take turns step "
        "by step, in an order that rotates (A B, B A, ...; A B C, B C A, C A B, ...); GFLOP/step from "
        "FlopCounterMode (matmul, conv, attention; forward + backward for training steps; mean over the mask "
        "draws); GFLOP/s = GFLOP/step / median CPU time, % of the matmul peak (also by CPU time); peak RSS +MiB = "
        "growth of the process peak RSS over one step after malloc_trim (activations, grads, temporaries)."
    )
    for note in notes:
        print("note: " + note)
    if args.verbose:
        harness.print_round_medians(groups, 18, 13, versus=True)
        print("  matmul GFLOP/s per round (wall/CPU): " + " ".join(f"{w:.1f}/{c:.1f}" for w, c in matmul_rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
