"""The original code's pretraining, driven in-process for benchmarks/benchmark_learning_parity.py: CAE v1 / v2
(Atten4Vis/CAE) and VICRegL (facebookresearch/VICRegL), each at the size and recipe of the hf_mim run it is compared
with, on the same image folder and through the same crops (hf_mim's transforms, as `run_<method>.py` builds them), so
that only the training code differs.

Nothing of the originals is copied here. Their models come from the speed benchmarks' importers and builders
(`benchmark_cae.import_original` / `build_original`, `benchmark_vicregl.import_original` / `build_original`), CAE's
`cosine_scheduler` and `get_parameter_groups` are compiled from the tree's source as
scripts/trajectory/record_cae_trajectory.py does, and VICRegL's optimizer (`optimizers.build_optimizer`) and lr
schedule (`utils.learning_schedule`, through record_vicregl_trajectory.learning_rate) are the tree's own. Each step is
the original engine's loop body (CAE: `record_cae_trajectory.run`; VICRegL: main_vicregl.py's fp32 branch). The
trained model is converted with the benchmarks' `copy_weights` (hf_mim's converters) and its backbone saved as
`<out_dir>/converted`.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# hf_mim's side of the CAE runs (run_cae.py at cae-tiny): the CPU recipe's lr and crops (hf_mim.presets.CPU_RECIPES)
CAE_LR, CAE_CROP_SCALE_MIN = 3e-4, 0.4
# The original ResNet ties the stem width to the first stage's bottleneck width (stage widths = 4 x stem x 2^i), so
# vicregl-tiny-resnet's stem of 8 with widths 16..128 cannot be built by it: both sides use a stem of 4 (the
# trajectory fixture's size), everything else is the preset.
VICREGL_STEM = 4
VICREGL_BASE_LR, VICREGL_END_LR_RATIO, VICREGL_WARMUP = 0.3, 1e-3, 0.1  # VicreglTrainingArguments' LARS defaults


def _import_paths() -> None:
    for folder in (
        REPO / "benchmarks",
        REPO / "scripts" / "trajectory",
        REPO / "examples" / "pytorch" / "pretraining",
    ):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def image_folder(data_dir: Path, transform):
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(data_dir), transform=lambda image: transform(image.convert("RGB")))


def last_logged_window(losses: list[float], window: int) -> float:
    """Mean loss over the steps that hf_mim's last logged loss covers with `--logging_steps window` (the Trainer logs
    the mean since its previous log at every multiple of `window`): the last full window ending at such a multiple,
    or every step of a run shorter than one window."""
    end = max(len(losses) // window * window, min(window, len(losses)))
    return statistics.fmean(losses[max(end - window, 0) : end])


def cycled(loader, steps: int):
    """`steps` batches of `loader`, epoch after epoch."""
    done = 0
    while True:
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return


# ---------------------------------------------------------------------------------------------------- CAE v1 / v2
def cae_config(version: int):
    """cae-tiny (64 px, 16 px patches), or its v2 twin (no decoder blocks), as run_cae.py --cae_version builds it."""
    from hf_mim import CaeConfig

    return CaeConfig.tiny(cae_version=version)


def train_original_cae(src: Path, data_dir: Path, out_dir: Path, *, version: int, steps: int, batch_size: int,
                       seed: int, log_window: int) -> dict:  # fmt: skip
    """CAE v1 or v2 through the original Atten4Vis/CAE code: its `ContextAutoencoderViT`, its `get_parameter_groups`
    and `cosine_scheduler`, and the recorder's loop body (`record_cae_trajectory.run`: AdamW, per-step lr / wd, v1
    CE + 2 x alignment MSE, v2 cosine loss against the L2-normalised teacher features, clipping at 3), at cae-tiny's
    sizes and hf_mim's CPU recipe (lr 3e-4, crops >= 40 %, drop path 0 on both sides). Masks from the original's
    `MaskingGenerator`; targets from the same seeded random stand-in target network `run_cae.py` uses when given none
    (`random_target_model`: a DALL-E tokenizer for v1, a CLIP teacher for v2), on the same two views
    (`run_cae.transform`)."""
    import json
    import random

    import numpy as np
    import torch

    _import_paths()
    import benchmark_cae as bench
    import record_cae_trajectory as recorder
    import run_cae

    import hf_mim

    original, _ = bench.import_original(src)
    quiet = {"print": lambda *x, **k: None}
    cosine_scheduler = recorder.original_function(src / "furnace" / "utils.py", "cosine_scheduler",
                                                  {"np": np, "math": math, **quiet})  # fmt: skip
    get_parameter_groups = recorder.original_function(src / "furnace" / "optim_factory.py", "get_parameter_groups",
                                                      {"json": json, **quiet})  # fmt: skip
    config = cae_config(version)
    load = bench.Workload(version=version, regressor_depth=config.regressor_num_layers,
                          decoder_depth=config.decoder_num_layers, decoder_width=config.decoder_hidden_size,
                          image_size=config.image_size, patch_size=config.patch_size, width=config.hidden_size,
                          depth=config.num_hidden_layers, heads=config.num_attention_heads,
                          decoder_heads=config.decoder_num_attention_heads, num_masked=config.num_masking_patches,
                          min_block=config.min_masking_patches_per_block, vocab_size=config.vocab_size,
                          target_dim=config.target_hidden_size)  # fmt: skip
    # CaeTrainingArguments' defaults at the recipe's lr: min lr ratio 1e-5 / 1.5e-3, weight decay 0.05, clip 3.0
    hparams = argparse.Namespace(lr=CAE_LR, min_lr=CAE_LR * 1e-5 / 1.5e-3, weight_decay=0.05, clip_grad=3.0,
                                 align_loss_weight=2.0, latent_alignment_loss_weight=1.0)  # fmt: skip
    warmup = math.ceil(steps * 10 / 300)  # CaeTrainingArguments: warmup 10 of 300 epochs
    # one step per "epoch": the original's warmup_steps only takes effect with warmup_epochs > 0
    lr_values = cosine_scheduler(hparams.lr, hparams.min_lr, steps, 1, warmup_epochs=warmup)
    wd_values = cosine_scheduler(hparams.weight_decay, hparams.weight_decay, steps, 1)
    torch.manual_seed(seed)
    random.seed(seed)
    model = bench.build_original(original, load)
    target_model = run_cae.random_target_model(config)  # seeds torch with 0 itself, as run_cae.py does
    torch.manual_seed(seed)
    transform = run_cae.transform(config, argparse.Namespace(crop_scale_min=CAE_CROP_SCALE_MIN), config.image_size,
                                  run_cae.CaeArguments(drop_path_rate=0.0))  # fmt: skip
    loader = torch.utils.data.DataLoader(image_folder(data_dir, transform), batch_size=batch_size, shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    grid = config.image_size // config.patch_size
    masker = original.MaskingGenerator(grid, num_masking_patches=load.num_masked, min_num_patches=load.min_block)

    def batches():
        for views, _ in cycled(loader, steps):
            mask = torch.stack([torch.from_numpy(masker()).flatten().bool() for _ in range(batch_size)])
            with torch.no_grad():
                if version == 1:
                    targets = target_model.get_codebook_indices(views["target_pixel_values"]).flatten(1)
                else:  # (B, 1 + N, D): [cls, patches row-major]; the loop body reorders them as the engine does
                    targets = target_model.get_target_features(views["target_pixel_values"])
            yield {"images": views["pixel_values"], "mask": mask, "targets": targets}

    start = time.perf_counter()
    log, trained, _ = recorder.run(model, batches(), hparams, version, (lr_values, wd_values), get_parameter_groups,
                                   torch.float32)  # fmt: skip
    wall = time.perf_counter() - start
    hf_model = hf_mim.CaeForPreTraining(bench.hf_config(load, "eager"))
    bench.copy_weights(trained, hf_model, load)
    hf_model.cae.save_pretrained(out_dir / "converted")
    losses = [entry["loss"] for entry in log]
    return {"wall_s": wall, "loss_last_window": last_logged_window(losses, log_window), "first_loss": losses[0],
            "warmup_steps": warmup, "steps": len(log)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- VICRegL
def vicregl_config():
    """vicregl-tiny-resnet with the stem the original ResNet can build (VICREGL_STEM)."""
    from hf_mim import VicreglConfig

    return VicreglConfig.tiny_resnet(embedding_size=VICREGL_STEM)


def train_original_vicregl(src: Path, data_dir: Path, out_dir: Path, *, steps: int, batch_size: int, seed: int,
                           log_window: int) -> dict:  # fmt: skip
    """VICRegL through the original facebookresearch/VICRegL code: `VICRegL(args)` with a bottleneck ResNet of
    vicregl-tiny-resnet's sizes (`benchmark_vicregl.build_original`, stem VICREGL_STEM), its LARS
    (`optimizers.build_optimizer`: weight decay 1e-6, momentum 0.9, eta 1e-3, no decay or adaptation of biases and
    norms), `utils.learning_schedule` (base lr 0.3 x batch / 256, warmup 10 % of the steps, cosine to 1e-3 of it: the
    values of VicreglTrainingArguments for ResNet) and main_vicregl.py's loop body (fp32 branch: zero_grad, forward,
    backward, step; the logging reduce is left out, a no-op in one process). Its online classifier (10 digit classes,
    on the detached representation) trains along as in the original and is dropped by the converter. The crops are
    run_vicregl.py's `multicrop_transform` at the preset's defaults (2 global 64 px crops, scale 0.08-1, no local
    crops, grids mirrored for flipped crops), on the digits image folder; the labels feed only the classifier."""
    import torch
    import torch.distributed as dist

    _import_paths()
    import benchmark_vicregl as bench
    import record_vicregl_trajectory as recorder
    import run_vicregl

    import hf_mim

    original, _ = bench.import_original(src)
    config = vicregl_config()
    crops = ((config.num_global_views, config.image_size),)
    load = bench.Workload("resnet", tuple(config.depths), tuple(config.hidden_sizes), config.embedding_size,
                          config.projector, config.maps_projector, config.alpha, crops, tuple(config.num_matches))  # fmt: skip
    warmup = math.ceil(steps * VICREGL_WARMUP)  # transformers' get_warmup_steps of a fraction
    torch.manual_seed(seed)
    model = bench.build_original(original, load, batch_size)
    args = model.args
    args.num_classes = 10
    model.classifier = torch.nn.Linear(model.representation_dim, args.num_classes)
    args.optimizer, args.base_lr, args.end_lr_ratio = "lars", VICREGL_BASE_LR, VICREGL_END_LR_RATIO
    args.l2_all_matches, args.fast_vc_reg = True, False
    # learning_rate() derives total / warmup steps from epochs x data set size / batch: one batch per "epoch"
    args.epochs, args.warmup_epochs = steps, warmup
    optimizer = original.optimizers.build_optimizer(args, model)
    transform = run_vicregl.multicrop_transform(config, argparse.Namespace(crop_scale_min=None), config.image_size,
                                                run_vicregl.MultiCropArguments())  # fmt: skip
    loader = torch.utils.data.DataLoader(image_folder(data_dir, transform), batch_size=batch_size, shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    if not dist.is_initialized():  # its gather_center / batch_all_gather call torch.distributed
        recorder.init_process_group()
    model.train()
    log = []
    start = time.perf_counter()
    for step, (views, labels) in enumerate(cycled(loader, steps)):
        lr = recorder.learning_rate(original, args, step, batch_size)
        for group in optimizer.param_groups:
            group["lr"] = lr * args.maps_lr_ratio if "__MAPS_TOKEN__" in group else lr
        inputs = {
            "views": [view.contiguous() for view in views["pixel_values"].unbind(1)],
            "locations": [grid.contiguous() for grid in views["locations"].unbind(1)],
            "labels": labels,
        }
        optimizer.zero_grad()
        loss, logs = model.forward(inputs)
        loss.backward()
        optimizer.step()
        log.append(float((loss - logs["cls_l"]).detach()))  # the VICRegL loss, without the online classifier's CE
    wall = time.perf_counter() - start
    dist.destroy_process_group()
    hf_model = hf_mim.VicreglForPreTraining(config)
    bench.copy_weights(model, hf_model, config)
    hf_model.vicregl.save_pretrained(out_dir / "converted")
    return {"wall_s": wall, "loss_last_window": last_logged_window(log, log_window), "first_loss": log[0],
            "warmup_steps": warmup, "steps": len(log)}  # fmt: skip
