"""A few I-JEPA pretraining steps on a fixed global batch, under one of three layouts, for equivalence tests.

Run with `torchrun --nproc_per_node N ijepa_train_loop.py --mode {single,ddp,fsdp2} --steps K --out FILE`
(N = 1 for `single`, 2 for `ddp` and `fsdp2`). Every layout sees the same global batch of 4 images per step and the
same masks per image. The masks are hand-made with a fixed length per image (a random permutation of the patch grid,
seeded by (step, global image index), split into target blocks and a disjoint context), so that no batch-minimum
truncation can make a rank's masks depend on its slice of the batch. Each rank takes its contiguous slice of the
batch. After K steps rank 0 writes the full EMA target-encoder state to FILE (safetensors), with the world size and,
for fsdp2, whether the target-encoder parameters really were sharded DTensors.

I-JEPA's loss is a mean over the (n_tgt * B, K_tgt, D) elements of the local batch; with equal local batches, the
gradient average of DDP / FSDP2 is exactly the gradient of the global-batch mean.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hf_mim import IJepaConfig, IJepaForPreTraining

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capi_train_loop import EXPECTED_WORLD, full_teacher_state, teacher_is_sharded  # noqa: E402

GLOBAL_BATCH = 4
IMAGE_SIZE = 56  # IJepaConfig.tiny: 14 px patches, a 4x4 grid
NUM_TARGETS = 2
NUM_CONTEXT = 1


def build_model(dtype: torch.dtype = torch.float32) -> IJepaForPreTraining:
    torch.manual_seed(0)  # identical init on every rank
    config = IJepaConfig.tiny(drop_path_rate=0.0, num_target_blocks=NUM_TARGETS, num_context_blocks=NUM_CONTEXT)
    return IJepaForPreTraining(config).to(dtype)


def global_batch(step: int, config: IJepaConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's images, batch-first context indices (B, n_ctx, K_ctx) and target indices (B, n_tgt, K_tgt), identical for every
    layout. Every image gets NUM_TARGETS disjoint target sets of K_tgt patches and a context of all other patches."""
    pixels = torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1000 + step))
    num_patches = (IMAGE_SIZE // config.patch_size) ** 2
    keep_target = num_patches // (2 * NUM_TARGETS)
    contexts, targets = [], []
    for image in range(GLOBAL_BATCH):
        order = torch.randperm(num_patches, generator=torch.Generator().manual_seed(100_000 * (step + 1) + image))
        chosen = order[: NUM_TARGETS * keep_target].reshape(NUM_TARGETS, keep_target)
        targets.append(chosen.sort(dim=-1).values)
        rest = order[NUM_TARGETS * keep_target :].sort().values
        contexts.append(rest.expand(NUM_CONTEXT, -1))
    return pixels, torch.stack(contexts), torch.stack(targets)


def shard_fsdp2(model: IJepaForPreTraining, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from hf_mim.layers import ViTLayer

    mesh = init_device_mesh("cpu", (world,))
    # Context and target encoders get the same policy, so their local shards line up for the shard-local EMA.
    for submodule in (model.ijepa, model.target_encoder, model.predictor):
        for module in submodule.modules():
            if isinstance(module, ViTLayer):
                fully_shard(module, mesh=mesh)
        fully_shard(submodule, mesh=mesh)
    # IJepaForPreTraining calls the encoders' `encode` rather than `forward`: FSDP2 must unshard around it too.
    register_fsdp_forward_method(model.ijepa, "encode")
    register_fsdp_forward_method(model.target_encoder, "encode")
    fully_shard(model, mesh=mesh)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(EXPECTED_WORLD), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != EXPECTED_WORLD[args.mode]:
        raise SystemExit(f"--mode {args.mode} expects {EXPECTED_WORLD[args.mode]} processes, got {world}")
    if GLOBAL_BATCH % world:
        raise SystemExit(f"global batch {GLOBAL_BATCH} does not split over {world} ranks")
    local = GLOBAL_BATCH // world

    dtype = getattr(torch, args.dtype)
    model = build_model(dtype)
    model.train()
    config = model.config
    sharded = False
    if args.mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif args.mode == "fsdp2":
        shard_fsdp2(model, world)
        sharded = teacher_is_sharded(model.target_encoder) and teacher_is_sharded(model.ijepa)
        wrapped = model
    else:
        wrapped = model

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    for step in range(args.steps):
        pixels, context, target = global_batch(step, config)
        rows = slice(rank * local, (rank + 1) * local)
        output = wrapped(
            pixel_values=pixels[rows].to(dtype), context_indices=context[rows], target_indices=target[rows]
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        model.update_teacher(momentum=args.momentum)
        if rank == 0:
            print(f"[{args.mode}] step {step} loss {output.loss.item():.10f}", flush=True)

    teacher = full_teacher_state(model.target_encoder)
    if rank == 0:
        teacher["__world_size__"] = torch.tensor(world)
        teacher["__teacher_sharded__"] = torch.tensor(int(sharded))
        save_file(teacher, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
