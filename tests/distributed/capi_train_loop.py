"""A few CAPI pretraining steps on a fixed global batch, under one of three layouts, for equivalence tests.

Run with `torchrun --nproc_per_node N capi_train_loop.py --mode {single,ddp,fsdp2} --steps K --out FILE`
(N = 1 for `single`, 2 for `ddp` and `fsdp2`). Every layout sees the same global batch of 4 images per step and the
same masks per image (drawn from a generator seeded by (step, global image index)); each rank takes its contiguous
slice of the batch. After K steps rank 0 writes the full teacher state dict to FILE (safetensors), with the world
size and, for fsdp2, whether the teacher parameters really were sharded DTensors.
"""

import argparse

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hf_mim.masking import InverseBlockMasking
from hf_mim.models.capi.configuration_capi import CapiConfig
from hf_mim.models.capi.modeling_capi import CapiForPreTraining

GLOBAL_BATCH = 4
IMAGE_SIZE = 56
EXPECTED_WORLD = {"single": 1, "ddp": 2, "fsdp2": 2}


def build_model(dtype: torch.dtype = torch.float32) -> CapiForPreTraining:
    torch.manual_seed(0)  # identical init on every rank
    return CapiForPreTraining(CapiConfig.tiny(drop_path_rate=0.0, num_prototypes=32)).to(dtype)


def global_batch(step: int, config: CapiConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's images and per-image masks, identical for every layout."""
    pixels = torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1000 + step))
    grid = (IMAGE_SIZE // config.patch_size, IMAGE_SIZE // config.patch_size)
    masking = InverseBlockMasking(
        config.mask_ratio, config.prediction_subsampling, config.mask_min_aspect, roll=config.mask_roll
    )
    visible, predict = [], []
    for image in range(GLOBAL_BATCH):
        masks = masking(1, grid, torch.Generator().manual_seed(100_000 * (step + 1) + image))
        visible.append(masks.visible_indices)
        predict.append(masks.predict_indices)
    return pixels, torch.cat(visible), torch.cat(predict)


def shard_fsdp2(model: CapiForPreTraining, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from hf_mim.layers import CrossAttentionBlock, SelfAttentionBlock

    mesh = init_device_mesh("cpu", (world,))
    # Student and teacher get the same policy, so their local shards line up for the shard-local EMA.
    for backbone in (model.capi, model.teacher):
        for module in backbone.modules():
            if isinstance(module, (SelfAttentionBlock, CrossAttentionBlock)):
                fully_shard(module, mesh=mesh)
        fully_shard(backbone, mesh=mesh)
        # CapiForPreTraining calls `encode` / `predict` rather than `forward`: FSDP2 must unshard around them too.
        register_fsdp_forward_method(backbone, "encode")
        register_fsdp_forward_method(backbone, "predict")
    fully_shard(model, mesh=mesh)


def full_teacher_state(teacher: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) teacher parameters and buffers; a collective under FSDP2, so every rank calls it."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, tensor in [*teacher.named_parameters(), *teacher.named_buffers()]:
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        state[name] = full.detach().cpu().clone().contiguous()
    return state


def teacher_is_sharded(teacher: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor, Shard

    params = list(teacher.parameters())
    return bool(params) and all(
        isinstance(p, DTensor) and any(isinstance(placement, Shard) for placement in p.placements) for p in params
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(EXPECTED_WORLD), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
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
        sharded = teacher_is_sharded(model.teacher)
        wrapped = model
    else:
        wrapped = model

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    for step in range(args.steps):
        pixels, visible, predict = global_batch(step, config)
        rows = slice(rank * local, (rank + 1) * local)
        output = wrapped(
            pixel_values=pixels[rows].to(dtype), visible_indices=visible[rows], predict_indices=predict[rows]
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        model.update_teacher(momentum=0.9)
        if rank == 0:
            print(f"[{args.mode}] step {step} loss {output.loss.item():.6f}", flush=True)

    teacher = full_teacher_state(model.teacher)
    if rank == 0:
        teacher["__world_size__"] = torch.tensor(world)
        teacher["__teacher_sharded__"] = torch.tensor(int(sharded))
        save_file(teacher, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
