#!/usr/bin/env python
"""Two checks against the original CAPI code that the recorded trajectory (tests/test_trajectory_capi.py) cannot make:

1. Stochastic depth. The trajectory runs at drop_path 0 because the two code bases might draw the dropped samples
   differently. Here both models get the same weights and the same `torch.manual_seed`, and run encoder + predictor in
   training mode at drop_path 0.2. The original's `EfficientResidual` and hf_mim's `residual_with_drop_path` must
   agree (max |diff| is printed; measured 0).
2. Initialisation distribution. For `--seeds` fresh seeds, the original's `EncoderDecoder.init_weights()` (converted)
   and hf_mim's `_init_weights` are probed untrained on the digits k-NN protocol (`hf_mim.evaluation.learning`).
   Each feature's mean ± std is printed, then per-tensor std and mean for one seed.

    python scripts/trajectory/compare_capi_init_and_drop_path.py --original_src /tmp/orig/capi \
        --tools_dir ../shared/tools --seeds 16

Needs an exported tree of facebookresearch/capi and the tools folder with `original_capi_import.py` (it imports the
original's modules with placeholders for xformers / FSDP). No code of the original is copied here.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ARCH = dict(patch_size=7, n_registers=4, encoder_kwargs={"depth": 2}, decoder_kwargs={"depth": 2})


def original_model(module, drop_path: float):
    kwargs = dict(ARCH, transformers_kwargs={"embed_dim": 64, "drop_path_rate": drop_path,
                                             "block_kwargs": {"attn_kwargs": {"num_heads": 4}}})  # fmt: skip
    with torch.device("meta"):
        model = module.EncoderDecoder(**kwargs)
    return model.to_empty(device="cpu").init_weights()


def converted(original, drop_path: float):
    from hf_mim import CapiConfig, CapiModel
    from hf_mim.models.capi.convert_capi import convert_state_dict

    _, state, _ = convert_state_dict({f"backbone.{k}": v for k, v in original.state_dict().items()})
    config = CapiConfig.tiny(patch_size=7)
    config.drop_path_rate = drop_path
    model = CapiModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rope" in k for k in missing), (missing, unexpected)
    return model


def check_drop_path(module) -> float:
    from hf_mim.masking import InverseBlockMasking
    from hf_mim.masking.inverse_block import to_absolute

    torch.manual_seed(0)
    original = original_model(module, 0.2)
    ours = converted(original, 0.2)
    original.train()
    ours.train()
    batch, grid = 16, (8, 8)
    pixels = torch.randn(batch, 3, 56, 56)
    masks = InverseBlockMasking(0.65, 0.05)(batch, grid, torch.Generator().manual_seed(1))
    visible, predict = to_absolute(masks.visible_indices, 64), to_absolute(masks.predict_indices, 64)
    worst = 0.0
    for seed in range(3):
        torch.manual_seed(seed)
        encoded, decoded = original.forward_pretrain(pixels, visible, predict, do_prediction=True)
        torch.manual_seed(seed)
        student = ours.encode(pixels, visible)
        queries = student.patch_coords.flatten(0, 1)[predict].reshape(batch, -1, 2)
        predicted = ours.predict(student, queries).flatten(0, 1)
        worst = max(worst, (encoded - student.tokens[:, 4:]).abs().max().item(),
                    (decoded - predicted).abs().max().item())  # fmt: skip
    return worst


def compare_inits(module, seeds: int) -> None:
    from hf_mim import CapiConfig, CapiImageProcessor, CapiModel
    from hf_mim.evaluation.learning import digits_probe_data, probe_backbone

    probe = digits_probe_data(CapiImageProcessor, 56)
    scores = {side: {"pooled": [], "mean_patch": []} for side in ("original", "hf_mim")}
    for seed in range(100, 100 + seeds):
        torch.manual_seed(seed)
        theirs = converted(original_model(module, 0.2), 0.2)
        torch.manual_seed(seed)
        ours = CapiModel(CapiConfig.tiny(patch_size=7))
        for side, model in (("original", theirs), ("hf_mim", ours)):
            result = probe_backbone(model.eval(), probe)
            for feature in scores[side]:
                scores[side][feature].append(100 * result[feature]["knn_top1"])
    for side, features in scores.items():
        for feature, values in features.items():
            print(f"untrained {side:8s} {feature:10s} k-NN {statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
                  f" over {len(values)} seeds")  # fmt: skip
    torch.manual_seed(0)
    theirs = converted(original_model(module, 0.2), 0.2).state_dict()
    torch.manual_seed(0)
    ours = CapiModel(CapiConfig.tiny(patch_size=7)).state_dict()
    for name in sorted(theirs):
        if theirs[name].numel() > 1 and name in ours:
            a, b = theirs[name].float(), ours[name].float()
            print(f"{name:55s} original std {a.std():.4f} mean {a.mean():+.4f} | hf_mim std {b.std():.4f} "
                  f"mean {b.mean():+.4f}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original_src", type=Path, required=True)
    parser.add_argument("--tools_dir", type=Path, default=REPO.parent / "shared" / "tools")
    parser.add_argument("--seeds", type=int, default=16, help="fresh initialisations per side (0: skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path[:0] = [str(args.tools_dir)]
    from original_capi_import import import_original

    modules, _ = import_original(args.original_src.resolve())
    worst = check_drop_path(modules["model"])
    print(f"stochastic depth 0.2, training mode, same seed: max |original - hf_mim| = {worst:.3g}")
    if args.seeds:
        compare_inits(modules["model"], args.seeds)
    return 0 if worst == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
