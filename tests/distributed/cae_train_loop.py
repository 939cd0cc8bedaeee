"""A few CAE pretraining steps on a fixed global batch, in one process or under 2-process DDP, for equivalence tests.

Run with `torchrun --nproc_per_node N cae_train_loop.py --mode {single,ddp} --steps K --out FILE` (N = 1 for `single`,
2 for `ddp`). Two models train one after the other, each with its frozen target network attached through
`set_target_model` (kept outside the module tree, so DDP neither wraps, broadcasts nor averages it):

* v2: `CaeForPreTraining` (CaeConfig.tiny v2) against a tiny random `ClipTeacher` (CLIP's projected tokens);
* v1: `CaeForPreTraining` (CaeConfig.tiny v1) against a tiny random `DalleTokenizer` (codebook ids of a 32 px view).

Every layout sees the same global batch of 4 images per step and the same block mask per image (BlockMasking seeded
by (step, global image index); every mask has exactly `num_masking_patches` patches, so no image's mask depends on
its rank's slice). Each rank takes its contiguous slice. The CAE losses are means over equal-size local batches, so
DDP's gradient average is exactly the gradient of the global-batch mean.

After K AdamW steps rank 0 writes to FILE (safetensors): both trained state dicts (`v2.*`, `v1.*`), its target
networks (`v2_target.*`, `v1_target.*`), the world size, the largest change of any target-network weight on any rank
(`__target_max_change__`, all-reduced) and whether any target-network parameter was among DDP's parameters.
"""

import argparse

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.masking import BlockMasking

GLOBAL_BATCH = 4
IMAGE_SIZE = 64  # CaeConfig.tiny: 16 px patches, a 4x4 grid
LAYOUTS = {"single": 1, "ddp": 2}  # processes per layout


def build_model(version: int, dtype: torch.dtype = torch.float32) -> CaeForPreTraining:
    torch.manual_seed(0)  # identical init on every rank
    return CaeForPreTraining(CaeConfig.tiny(cae_version=version, drop_path_rate=0.0)).to(dtype)


def build_target(version: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The frozen target network, seeded: identical on every rank and in a fresh process."""
    torch.manual_seed(1)
    config = CaeConfig.tiny(cae_version=version)
    if version == 1:
        from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig

        return DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=config.vocab_size)).to(dtype)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from hf_mim.models.cae.targets_cae import ClipTeacher

    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=IMAGE_SIZE, patch_size=config.patch_size,
                            projection_dim=config.target_hidden_size)  # fmt: skip
    return ClipTeacher(CLIPVisionModelWithProjection(clip)).to(dtype)


def global_batch(step: int, version: int, config: CaeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's encoder views, block masks (B, N) and target views, identical for every layout. v1's target view is
    half the size and already in the tokenizer's logit-Laplace range [0.1, 0.9]; v2's is a full-size view."""
    generator = torch.Generator().manual_seed(1000 * version + step)
    pixels = torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if version == 1:
        targets = 0.1 + 0.8 * torch.rand(GLOBAL_BATCH, 3, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=generator)
    else:
        targets = torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    masking = BlockMasking(config.num_masking_patches, config.min_masking_patches_per_block)
    grid = (IMAGE_SIZE // config.patch_size,) * 2
    masks = torch.cat(
        [
            masking(1, grid, torch.Generator().manual_seed(100_000 * (step + 1) + image)).bool_masked_pos
            for image in range(GLOBAL_BATCH)
        ]
    )
    return pixels, masks, targets


def train(version: int, mode: str, steps: int, dtype: torch.dtype, rank: int, world: int):
    model = build_model(version, dtype)
    target = build_target(version, dtype)
    model.set_target_model(target)
    model.train()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if mode == "ddp" else model
    target_ids = {id(p) for p in target.parameters()}
    target_in_ddp = any(id(p) in target_ids for p in wrapped.parameters())

    local = GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)
    for step in range(steps):
        pixels, masks, target_pixels = global_batch(step, version, model.config)
        output = wrapped(
            pixel_values=pixels[rows].to(dtype),
            bool_masked_pos=masks[rows],
            target_pixel_values=target_pixels[rows].to(dtype),
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"[{mode} v{version}] step {step} loss {output.loss.item():.12f}", flush=True)

    fresh = build_target(version, dtype).state_dict()
    change = max((t - fresh[n]).abs().max().item() for n, t in target.state_dict().items())
    return model, target, change, target_in_ddp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(LAYOUTS), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != LAYOUTS[args.mode]:
        raise SystemExit(f"--mode {args.mode} expects {LAYOUTS[args.mode]} processes, got {world}")
    if GLOBAL_BATCH % world:
        raise SystemExit(f"global batch {GLOBAL_BATCH} does not split over {world} ranks")
    dtype = getattr(torch, args.dtype)

    saved, change, target_in_ddp = {}, 0.0, False
    for version in (2, 1):
        model, target, version_change, in_ddp = train(version, args.mode, args.steps, dtype, rank, world)
        change, target_in_ddp = max(change, version_change), target_in_ddp or in_ddp
        saved |= {f"v{version}.{n}": t.detach().clone().contiguous() for n, t in model.state_dict().items()}
        saved |= {f"v{version}_target.{n}": t.detach().clone().contiguous() for n, t in target.state_dict().items()}
    facts = torch.tensor([change, float(target_in_ddp)], dtype=torch.float64)
    dist.all_reduce(facts, op=dist.ReduceOp.MAX)
    if rank == 0:
        saved["__world_size__"] = torch.tensor(world)
        saved["__target_max_change__"] = facts[:1].clone()
        saved["__target_in_ddp__"] = facts[1:].clone()
        save_file(saved, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
