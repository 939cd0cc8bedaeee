"""Named configurations of every method, one table for every script (`--config_name capi-tiny`, ...).

Naming rule: a paper's architecture is named by its architecture (`capi-vitl14`, `ijepa-vith14`, `cae-vitb16`,
`cae-v2-vitt16` = CAE v2's ViT-Tiny/16, `vicregl-convnext-small`); `-small` is a ViT-S-sized model that no paper
released (for single-GPU experiments); `-tiny` is always a toy for CPU demos and tests (64 wide, two blocks, 56-64
px). `PRESET_DESCRIPTIONS` says which is which, `presets.measured` holds each preset's exact parameter counts and
its measured CPU seconds per training step (`benchmarks/benchmark_presets.py`), and every script's --help prints
that table (`presets.help`). Old names stay accepted with a FutureWarning (`PRESET_ALIASES`, `presets.lookup`)."""

from ..models.cae import CaeConfig
from ..models.capi import CapiConfig
from ..models.ijepa import IJepaConfig
from ..models.vicregl import VicreglConfig

PAPER, REDUCED, DEMO = "paper", "reduced", "demo"

CONFIG_PRESETS = {
    "capi-vitl14": CapiConfig.vitl14,
    "capi-small": CapiConfig.small,
    "capi-tiny": CapiConfig.tiny,
    "ijepa-vith14": IJepaConfig.vith14,
    "ijepa-vith16-448": IJepaConfig.vith16_448,
    "ijepa-vitg16": IJepaConfig.vitg16,
    "ijepa-small": IJepaConfig.small,
    "ijepa-tiny": IJepaConfig.tiny,
    "cae-vitb16": CaeConfig.base,
    "cae-vitl16": CaeConfig.large,
    "cae-v2-vitt16": CaeConfig.v2_tiny,
    "cae-v2-vits16": CaeConfig.v2_small,
    "cae-v2-vitb16": CaeConfig.v2_base,
    "cae-v2-vitl16": CaeConfig.v2_large,
    "cae-tiny": CaeConfig.tiny,
    "vicregl-resnet50": VicreglConfig.resnet50,
    "vicregl-convnext-small": VicreglConfig.convnext_small,
    "vicregl-convnext-base": VicreglConfig.convnext_base,
    "vicregl-convnext-xlarge": VicreglConfig.convnext_xlarge,
    "vicregl-tiny": VicreglConfig.tiny,
    "vicregl-tiny-resnet": VicreglConfig.tiny_resnet,
}

# name -> (kind, what it is): `paper` a paper's architecture (a released checkpoint has it), `reduced` a smaller
# model of the same design that no paper released, `demo` a toy for CPU demos and tests.
# fmt: off
PRESET_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "capi-vitl14": (PAPER, "ViT-L/14, the released CAPI"),
    "capi-small": (REDUCED, "ViT-S/14-sized, 4 registers"),
    "capi-tiny": (DEMO, "64 wide, 2 + 2 blocks, 56 px"),
    "ijepa-vith14": (PAPER, "ViT-H/14"),
    "ijepa-vith16-448": (PAPER, "ViT-H/16 at 448 px"),
    "ijepa-vitg16": (PAPER, "ViT-g/16, 16-block predictor"),
    "ijepa-small": (REDUCED, "ViT-S/16-sized, 6-block predictor"),
    "ijepa-tiny": (DEMO, "64 wide, 2 blocks, 56 px"),
    "cae-vitb16": (PAPER, "CAE v1 ViT-B/16"),
    "cae-vitl16": (PAPER, "CAE v1 ViT-L/16"),
    "cae-v2-vitt16": (PAPER, "CAE v2 ViT-Tiny/16"),
    "cae-v2-vits16": (PAPER, "CAE v2 ViT-S/16"),
    "cae-v2-vitb16": (PAPER, "CAE v2 ViT-B/16"),
    "cae-v2-vitl16": (PAPER, "CAE v2 ViT-L/16"),
    "cae-tiny": (DEMO, "64 wide, 2 blocks, 64 px, v1"),
    "vicregl-resnet50": (PAPER, "ResNet-50"),
    "vicregl-convnext-small": (PAPER, "ConvNeXt-S"),
    "vicregl-convnext-base": (PAPER, "ConvNeXt-B"),
    "vicregl-convnext-xlarge": (PAPER, "ConvNeXt-XL"),
    "vicregl-tiny": (DEMO, "ConvNeXt, 1 block per stage, 16-128 wide"),
    "vicregl-tiny-resnet": (DEMO, "ResNet, 1 block per stage, 16-128 wide"),
}
# fmt: on

# Former names -> current ones. `cae-v2-tiny` (CAE v2's ViT-Tiny at 224 px, 5.7 M parameters) looked like the toy
# `cae-tiny`; the CAE presets are now named by architecture like the other methods'. Still accepted, with a warning.
PRESET_ALIASES = {
    "cae-base": "cae-vitb16",
    "cae-large": "cae-vitl16",
    "cae-v2-tiny": "cae-v2-vitt16",
    "cae-v2-small": "cae-v2-vits16",
    "cae-v2-base": "cae-v2-vitb16",
    "cae-v2-large": "cae-v2-vitl16",
}


def method_of(preset: str) -> str:
    """The method a preset (or former preset name) belongs to: its first dash-separated word."""
    return preset.split("-")[0]


def presets_for(method: str) -> dict:
    """The presets of one method ("capi", "ijepa", "cae", "vicregl"), by name."""
    return {name: factory for name, factory in CONFIG_PRESETS.items() if method_of(name) == method}


__all__ = [
    "CONFIG_PRESETS",
    "CPU_RECIPES",
    "PRESET_ALIASES",
    "PRESET_DESCRIPTIONS",
    "method_of",
    "presets_for",
]


# The CPU recipes: what `run_<method>.py` trains when it is given no data and no preset (its embedded default, the
# README's first command). Small data (scikit-learn's digits, 1257 training images), short schedules, one CPU
# thread: chosen by measurement with `benchmarks/benchmark_learning.py` (see benchmarks/README.md, "Learning"), so
# that a few CPU minutes visibly improve the frozen backbone over its random initialisation. The paper's recipes
# are the large-scale presets above with the trainers' default arguments; these are not.
# fmt: off
CPU_RECIPES: dict[str, tuple[str, ...]] = {
    # A faster EMA teacher than the paper's 0.999 / 0.996: in a few hundred steps the paper's teacher barely leaves
    # its initialisation (pooled k-NN gain, CAPI at 600 steps: 0.999 +0, 0.99 +9.8, 0.98 +15.4 / +18.0 / +14.1;
    # 0.98 at 1000 steps +17.4 / +22.6. I-JEPA 0.996 for 1500 steps -5.6, 0.98 for 600 steps +6.7; at 600 steps
    # and momentum 0.98, lr 1e-3 / 5e-4 / 2e-4 gave +6.7 (seed 42) / +15.9, -6.9 / +1.3, +27.6 on seeds 0, 1 with
    # the tiny preset's narrow predictor, see benchmarks/README.md "How the recipes were chosen").
    "capi": ("--config_overrides", "patch_size=7", "--max_steps", "1000", "--per_device_train_batch_size", "64",
             "--teacher_momentum", "0.98"),
    # I-JEPA also needs a predictor as wide as its encoder (4 blocks x 64 instead of the tiny preset's 2 x 32): with
    # the narrow one, 600 steps gave +1.3 / +27.6 on seeds 0 / 1 (the loss jumps mid-run and one seed never
    # recovers); with this one +26.9 / +25.0, as the paper's ablation favours a deep predictor.
    "ijepa": ("--config_overrides", "patch_size=7,predictor_num_hidden_layers=4,predictor_hidden_size=64,"
              "predictor_intermediate_size=256", "--max_steps", "600", "--per_device_train_batch_size", "64",
              "--teacher_momentum", "0.98", "--learning_rate", "2e-4"),
    # CAE: the paper's lr 1.5e-3 is for batch 2048; at batch 64, lr 3e-4 with crops of at least 40 % of the image
    # (digits lose their shape in smaller ones) for 1200 steps took the mean patch token from +6.1 / +3.9 (the tiny
    # preset's defaults, 600 steps) to +14.4 / +10.4 on seeds 0 / 1. The [CLS] token, which no CAE v1 loss reaches,
    # still loses points, and the target network is a random stand-in (see benchmarks/README.md).
    "cae": ("--max_steps", "1200", "--per_device_train_batch_size", "64", "--learning_rate", "3e-4",
            "--crop_scale_min", "0.4"),
    # VICRegL trains its ResNet here (the paper's ResNet-50 recipe: LARS, lr 0.3 x batch / 256): the tiny ConvNeXt's
    # untrained features already score 85-86 % on digits (raw pixels 98 %), so 300 steps moved it only +2.6 / +2.8
    # (7 CPU-minutes); the tiny ResNet starts at 53 % and gains +26.5 / +28.3 in 800 steps (about 5 CPU-minutes),
    # to 80.5 % (still below the untrained ConvNeXt).
    "vicregl": ("--config_name", "vicregl-tiny-resnet", "--max_steps", "800", "--per_device_train_batch_size", "64"),
}
# fmt: on
