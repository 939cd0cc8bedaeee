"""CAPI and I-JEPA under FSDP2 with a mixed-precision policy and gradient checkpointing, sharded by accelerate's own
FSDP2 code (`accelerate.utils.fsdp_utils.fsdp2_prepare_model`, what `fsdp2.yaml` runs), for the equivalence tests in
tests/test_fsdp2_mixed_precision.py.

Run with `torchrun --nproc_per_node N fsdp2_mixed_precision_loop.py --mode {single,fsdp2} --steps K --out FILE`
(N = 1 for `single`, 2 for `fsdp2`). Every variant trains a float32 model for K steps on the fixed global batches of
capi_train_loop.py / ijepa_train_loop.py (each rank takes its contiguous slice) and rank 0 writes, per method and
variant, the full EMA teacher after K steps, the first step's global loss and full gradients, and what was observed
on the first step (see `train`).

Variants (param dtype of the FSDP2 `MixedPrecisionPolicy`, gradient checkpointing); the reduce dtype is always float32:
* single: `fp32` = the plain module, no FSDP (the reference); `bf16` = FSDP2 on a 1-process mesh with bf16 params.
* fsdp2: `fp32_ckpt` = float32 policy + checkpointing; `bf16` and `bf16_ckpt` = bf16 params without / with it.
"""

import argparse
import os
import sys
import types

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capi_train_loop  # noqa: E402
import ijepa_train_loop  # noqa: E402

METHODS = {
    "capi": (capi_train_loop, ("pixel_values", "visible_indices", "predict_indices")),
    "ijepa": (ijepa_train_loop, ("pixel_values", "context_indices", "target_indices")),
}
VARIANTS = {  # variant -> (FSDP2 param dtype or None for no FSDP, gradient checkpointing)
    "single": {"fp32": (None, False), "bf16": (torch.bfloat16, False)},
    "fsdp2": {
        "fp32_ckpt": (torch.float32, True),
        "bf16": (torch.bfloat16, False),
        "bf16_ckpt": (torch.bfloat16, True),
    },
}
EXPECTED_WORLD = {"single": 1, "fsdp2": 2}
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # dtypes are saved as indices into this
MOMENTUM = 0.9


def dtype_codes(dtypes) -> torch.Tensor:
    return torch.tensor(sorted({DTYPES.index(dtype) for dtype in dtypes}), dtype=torch.int64)


class Collectives(TorchDispatchMode):
    """Counts all-gathers - FSDP2's (`c10d::_allgather_base_`) and DTensor's (`_c10d_functional::all_gather_*`) - and
    records the dtypes that were all-gathered and reduce-scattered while active."""

    def __init__(self):
        super().__init__()
        self.gathers, self.gathered, self.reduced = 0, set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if "c10d" in name:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if "gather" in name:
                self.gathers += 1
                self.gathered.update(t.dtype for t in tensors)
            elif "reduce_scatter" in name:
                self.reduced.update(t.dtype for t in tensors)
        return func(*args, **(kwargs or {}))


class SavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Counts the tensors (and bytes) autograd keeps for backward; checkpointed blocks keep only their inputs."""

    def __init__(self):
        self.count, self.bytes = 0, 0

        def pack(tensor):
            self.count += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return tensor

        super().__init__(pack, lambda tensor: tensor)


def count_checkpoint_calls(model: torch.nn.Module, teacher_prefix: str) -> dict[str, int]:
    """Wrap every checkpointing layer's checkpoint function to count its calls, for teacher and student apart."""
    calls = {"student": 0, "teacher": 0}
    for name, module in model.named_modules():
        if getattr(module, "gradient_checkpointing", False):
            side = "teacher" if name.startswith(teacher_prefix) else "student"

            def counted(*args, _inner=module._gradient_checkpointing_func, _side=side, **kwargs):
                calls[_side] += 1
                return _inner(*args, **kwargs)

            module._gradient_checkpointing_func = counted
    return calls


def record_weight_dtypes(modules: torch.nn.Module) -> set:
    """The dtypes of the Linear weights the forward computes with (FSDP2 has unsharded and cast them by then)."""
    seen = set()
    for module in modules.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda mod, args: seen.add(mod.weight.dtype))
    return seen


def shard_like_accelerate(model: torch.nn.Module, param_dtype: torch.dtype, rank: int) -> torch.nn.Module:
    """What accelerate does with fsdp2.yaml: transformer-based wrap of the model's `_no_split_modules` (student and
    teacher blocks alike), its embedding / final-norm units, the root; the policy given explicitly."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        mixed_precision_policy={"param_dtype": param_dtype, "reduce_dtype": torch.float32},
    )  # fmt: skip
    mixed_precision = "bf16" if param_dtype == torch.bfloat16 else "no"
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), mixed_precision=mixed_precision, is_main_process=rank == 0,
        device=torch.device("cpu"),
    )  # fmt: skip
    return fsdp2_prepare_model(accelerator, model)


def train(method: str, param_dtype, checkpointing: bool, rank: int, world: int, steps: int) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    module, input_names = METHODS[method]
    model = module.build_model(torch.float32)
    teacher_name = model.teacher_attribute
    if checkpointing:
        model.activation_checkpointing_enable()  # what the Trainer's --gradient_checkpointing calls
    calls = count_checkpoint_calls(model, teacher_name)
    model.train()
    if param_dtype is not None:
        model = shard_like_accelerate(model, param_dtype, rank)
    student, teacher = model.student_module, model.teacher_module
    student_dtypes, teacher_dtypes = record_weight_dtypes(student), record_weight_dtypes(teacher)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    local = capi_train_loop.GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)
    found = {}
    for step in range(steps):
        batch = module.global_batch(step, model.config)
        inputs = {name: tensor[rows] for name, tensor in zip(input_names, batch)}
        forward, saved = Collectives(), SavedTensors()
        with forward, saved:
            output = model(**inputs)
        optimizer.zero_grad(set_to_none=True)
        with Collectives() as backward:
            output.loss.backward()
        grad_dtypes = {p.grad.dtype for p in params if p.grad is not None}
        if step == 0:  # the first step's global loss and full gradients (collectives, outside the counted regions)
            loss = output.loss.detach().float().clone()
            dist.all_reduce(loss)
            found["loss"] = loss / world
            for name, param in model.named_parameters():
                if param.grad is not None:
                    grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
                    found[f"grad/{name}"] = grad.detach().clone()
        optimizer.step()
        with Collectives() as ema:
            model.update_teacher(momentum=MOMENTUM)
        if step == 0:
            found.update(
                forward_gathers=forward.gathers, ema_gathers=ema.gathers, saved_tensors=saved.count,
                saved_bytes=saved.bytes, gathered=dtype_codes(forward.gathered | backward.gathered),
                reduced=dtype_codes(backward.reduced), grads=dtype_codes(grad_dtypes),
                student_compute=dtype_codes(student_dtypes), teacher_compute=dtype_codes(teacher_dtypes),
            )  # fmt: skip
    teacher_params = list(teacher.parameters())
    found["storage"] = dtype_codes(p.dtype for p in model.parameters())
    found["teacher_dtensors"] = sum(isinstance(p, DTensor) for p in teacher_params) / len(teacher_params)
    local_numel = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in teacher_params)
    found["teacher_local_fraction"] = local_numel / sum(p.numel() for p in teacher_params)
    found["student_checkpoints"], found["teacher_checkpoints"] = calls["student"], calls["teacher"]
    if param_dtype is not None:  # the counter sees a gather of the teacher when one happens
        with Collectives() as control:
            teacher_params[0].full_tensor()
        found["control_gathers"] = control.gathers
    state = {f"teacher/{name}": tensor for name, tensor in capi_train_loop.full_teacher_state(teacher).items()}
    return state | {name: torch.as_tensor(value) for name, value in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(EXPECTED_WORLD), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != EXPECTED_WORLD[args.mode]:
        raise SystemExit(f"--mode {args.mode} expects {EXPECTED_WORLD[args.mode]} processes, got {world}")
    results = {}
    for method in METHODS:
        for variant, (param_dtype, checkpointing) in VARIANTS[args.mode].items():
            found = train(method, param_dtype, checkpointing, rank, world, args.steps)
            results |= {f"{method}/{variant}/{name}": tensor.contiguous() for name, tensor in found.items()}
            if rank == 0:
                print(f"[{args.mode}] {method} {variant} done", flush=True)
    if rank == 0:
        save_file(results, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
