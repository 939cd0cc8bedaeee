"""A few VICRegL pretraining steps on a fixed global batch, under one process or 2-process DDP, for equivalence tests.

Run with `torchrun --nproc_per_node N vicregl_train_loop.py --mode {single,ddp,ddp_no_gather} --steps K --out FILE`.
Every layout sees the same global batch of 8 images (2 global + 2 local views each, with grids) per step; each rank
takes its contiguous slice. `ddp_no_gather` replaces the cross-rank gather of the variance / covariance terms by the
identity (each rank's terms on its own slice only), to show that the equivalence test catches a missing gather.
After K AdamW steps rank 0 writes the model's full state (safetensors) and the world size.
"""

import argparse
import os

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hf_mim import VicreglConfig, VicreglForPreTraining
from hf_mim.data import crop_location_grid
from hf_mim.models.vicregl import loss_vicregl

GLOBAL_BATCH = 8


def build_model(dtype: torch.dtype = torch.float64) -> VicreglForPreTraining:
    torch.manual_seed(0)  # identical init on every rank
    return VicreglForPreTraining(VicreglConfig.tiny(num_matches=(3, 1))).to(dtype)


def global_batch(step: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    boxes = torch.randint(0, 40, (GLOBAL_BATCH, 4, 4), generator=generator)

    def grids(view_slice, size):
        return torch.stack(
            [torch.stack([crop_location_grid(tuple((b[v] + 20).tolist()), size) for v in view_slice]) for b in boxes]
        ).to(dtype)

    return {
        "pixel_values": torch.randn(GLOBAL_BATCH, 2, 3, 64, 64, generator=generator, dtype=dtype),
        "locations": grids(range(2), 2),
        "local_pixel_values": torch.randn(GLOBAL_BATCH, 2, 3, 32, 32, generator=generator, dtype=dtype),
        "local_locations": grids(range(2, 4), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["single", "ddp", "ddp_no_gather"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.mode == "ddp_no_gather":
        loss_vicregl.gather_with_grad = lambda x: x
    model = build_model(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    per_rank = GLOBAL_BATCH // world
    for step in range(args.steps):
        batch = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in global_batch(step, dtype).items()}
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if rank == 0:
        unwrapped = model.module if world > 1 else model
        state = {k: v.detach().contiguous() for k, v in unwrapped.state_dict().items()}
        state["__world_size__"] = torch.tensor(world)
        save_file(state, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
