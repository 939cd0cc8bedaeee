#!/usr/bin/env python
"""The GPU check in one shot: each method's pretraining step at its released size on one accelerator, one table.

    python benchmarks/gpu_check.py                        # one H100/H200: CAPI ViT-L/14, I-JEPA ViT-H/14, CAE-B,
                                                          # VICRegL ConvNeXt-B; about 6-8 minutes
    python benchmarks/gpu_check.py --workloads capi,ijepa --steps 30
    python benchmarks/gpu_check.py --tiny                 # the same code path on CPU at tiny sizes (a minute or two)

For every workload, from one initialisation and the same batches, three runs of `--steps` training steps:
  eager-fp32     float32 (TF32 matmuls off): the reference loss
  eager-bf16     torch.autocast(bfloat16), as `--bf16` in the trainers (the numerically sensitive parts stay fp32)
  compiled-bf16  the same under torch.compile (inductor), as `--torch_compile True --bf16`
A step is what the trainers run: forward with the loss, backward, fused AdamW step, EMA teacher update (CAPI, I-JEPA).
Batches are real: the recipe's transform and collator of examples/pytorch/pretraining/run_<method>.py applied to the
photos bundled with scikit-image, built before timing and kept on the device (this measures the step, not the data
pipeline; see benchmark_data.py for that).

Columns: img/s and ms/step (median over the steps after `--warmup`), achieved TFLOP/s (model FLOPs of one
forward + backward counted by torch.utils.flop_counter in the eager bf16 run, over the median step time), MFU
(against the card's dense bf16 peak: --peak_tflops, else a table of known cards), peak memory (CUDA allocator; peak
RSS on CPU), loss after the last step and its relative gap to fp32, dynamo compilations, and the attention kernel
the step ran (aten op names seen by torch.profiler: flash / efficient / cudnn / math, "cpu-flash" on CPU;
"none" for a ConvNet or hf_mim's short-sequence matmul path on CPU). Goals on one H100 (issue 24): CAPI ViT-L/14 >= 45 % MFU, I-JEPA ViT-H/14 >= 40 %.
`--budget_s` stops starting new runs when the time is spent (the table says what was skipped).
"""

import argparse
import inspect
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import _common as common
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from hf_mim.data import bundled_photos, mark_length_dynamic
from hf_mim.trainers.run_pretraining import DataTrainingArguments, recipe_image_transform

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pytorch" / "pretraining"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name(); first match wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
# aten ops that name the attention kernel, most specific first
ATTENTION_KERNELS = (
    ("_flash_attention_for_cpu", "cpu-flash"),
    ("flash_attention", "flash"),
    ("efficient_attention", "efficient"),
    ("cudnn_attention", "cudnn"),
    ("_scaled_dot_product_attention_math", "math"),
)
MODES = ("eager-fp32", "eager-bf16", "compiled-bf16")


@dataclass(frozen=True)
class Workload:
    script: str  # examples/pytorch/pretraining/run_<script>.py
    recipe: str  # the PretrainingRecipe's name in it
    preset: str  # released architecture
    batch_size: int  # per step, on one 80 GB card
    tiny_preset: str  # --tiny
    description: str


WORKLOADS = {
    "capi": Workload("capi", "CAPI", "capi-vitl14", 64, "capi-tiny", "CAPI ViT-L/14"),
    "ijepa": Workload("ijepa", "IJEPA", "ijepa-vith14", 32, "ijepa-tiny", "I-JEPA ViT-H/14"),
    "cae": Workload("cae", "CAE", "cae-vitb16", 128, "cae-tiny", "CAE ViT-B/16 (v1)"),
    "vicregl": Workload("vicregl", "VICREGL", "vicregl-convnext-base", 32, "vicregl-tiny", "VICRegL ConvNeXt-B"),
}


# ------------------------------------------------------------------------------------------------ model and batches
def build(workload: Workload, tiny: bool):
    """(model, collator, transform) as `run_<method>.py --config_name <preset>` builds them with default arguments."""
    script = common.load_module(EXAMPLES / f"run_{workload.script}.py", f"_gpu_check_{workload.script}")
    recipe = getattr(script, workload.recipe)
    config = recipe.config_presets[workload.tiny_preset if tiny else workload.preset]()
    extra_args = [argument_class() for argument_class in recipe.extra_argument_classes]
    if recipe.configure is not None:
        config = recipe.configure(config, *extra_args)
    data_args = DataTrainingArguments()
    image_size = config.image_size
    transform = recipe_image_transform(recipe, config, data_args, image_size, extra_args)
    model = recipe.model_class(config)
    if recipe.attach is not None:
        recipe.attach(model, *extra_args)
    return model, recipe.collator(model), transform


def make_batches(model, collate, transform, batch_size: int, count: int, device: torch.device) -> list[dict]:
    """`count` different batches from the bundled photos through the recipe's transform and collator, on `device`;
    only the fields the model's forward takes. Index lengths the collator marks dynamic are marked again on the
    device copy (the mark stays with the host tensor), as the trainers do."""
    photos = [photo.convert("RGB") for photo in bundled_photos()]
    accepted = set(inspect.signature(model.forward).parameters)
    rng = random.Random(0)
    torch.manual_seed(0)
    batches = []
    for _ in range(count):
        examples = [_as_example(transform(rng.choice(photos))) for _ in range(batch_size)]
        batch = collate(examples)
        batch = {k: v.to(device) for k, v in batch.items() if k in accepted and isinstance(v, torch.Tensor)}
        for name in getattr(collate, "dynamic_lengths", ()):
            mark_length_dynamic(batch[name])
        batches.append(batch)
    return batches


def _as_example(output) -> dict:
    # a transform returns a tensor (one view) or a dict of fields (two views, multi-crop)
    return dict(output) if isinstance(output, dict) else {"pixel_values": output}


# ------------------------------------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    step_seconds: list[float]
    loss: float
    peak_memory_bytes: int
    compilations: int | None
    compile_seconds: float | None
    kernel: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    common.release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        common.reset_peak_rss()


def _peak_memory(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else common.maxrss_bytes()


def attention_kernel(run_step) -> str:
    """The attention kernel(s) one step runs, from the aten op names torch.profiler records."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run_step()
    names = {event.key for event in profiler.key_averages()}
    found = []
    for fragment, label in ATTENTION_KERNELS:
        if any(fragment in name for name in names) and label not in found:
            if label == "flash" and "cpu-flash" in found:
                continue
            found.append(label)
    return "+".join(found) or "none"  # no SDPA kernel: a ConvNet, or hf_mim's short-sequence CPU path


def run_mode(model, initial_state, batches, mode: str, args, device: torch.device) -> RunResult:
    """`args.steps` training steps of `mode` from `initial_state`; drop path and masks drawn from the same seed."""
    model.load_state_dict(initial_state)
    model.train()
    bf16 = mode.endswith("bf16")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32; bf16 runs are unaffected
    torch.backends.cudnn.allow_tf32 = False
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.05, fused=device.type == "cuda")
    forward = model
    compilations = compile_seconds = None
    if mode.startswith("compiled"):
        torch._dynamo.reset()
        counters.clear()
        forward = torch.compile(model, backend=args.compile_backend)

    def step(batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(model, "update_teacher"):
            model.update_teacher(0.996)
        return loss.detach()

    torch.manual_seed(args.seed)
    _reset_peak_memory(device)
    times, loss = [], None
    for index in range(args.steps):
        _sync(device)
        start = time.perf_counter()
        loss = step(batches[index % len(batches)])
        _sync(device)
        times.append(time.perf_counter() - start)
    if mode.startswith("compiled"):
        compilations = counters["stats"]["unique_graphs"]
        compile_seconds = sum(times[: args.warmup]) - args.warmup * statistics.median(times[args.warmup :])
    peak = _peak_memory(device)
    kernel = attention_kernel(lambda: step(batches[0]))
    return RunResult(times[args.warmup :], float(loss), peak, compilations, compile_seconds, kernel)


def step_flops(model, batch, device: torch.device) -> int:
    """FLOPs of one forward + backward (bf16 autocast, the counted matmuls / convolutions / attention)."""
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------------ the table
def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS if fragment in name), None)


def check(name: str, args, device: torch.device, peak: float | None, deadline: float) -> list[list[str]]:
    workload = WORKLOADS[name]
    torch.manual_seed(args.seed)
    model, collate, transform = build(workload, args.tiny)
    model.to(device)
    batch_size = args.batch_size or (8 if args.tiny else workload.batch_size)
    batches = make_batches(model, collate, transform, batch_size, args.num_batches, device)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flops = step_flops(model, batches[0], device)
    rows, reference = [], None
    label = f"{workload.description}{' (tiny)' if args.tiny else ''}, batch {batch_size}"
    for mode in MODES:
        if time.monotonic() > deadline:
            rows.append([label, mode, "skipped: --budget_s spent"] + [""] * 8)
            continue
        try:
            result = run_mode(model, initial_state, batches, mode, args, device)
        except torch.OutOfMemoryError:
            common.release_memory(device)
            rows.append([label, mode, "out of memory: lower --batch_size"] + [""] * 8)
            continue
        median = statistics.median(result.step_seconds)
        achieved = flops / median / 1e12
        reference = result.loss if mode == "eager-fp32" else reference
        gap = abs(result.loss - reference) / max(abs(reference), 1e-12) if reference is not None else math.nan
        rows.append([
            label, mode, f"{batch_size / median:.1f}", f"{1000 * median:.1f}", f"{achieved:.2f}",
            f"{100 * achieved / peak:.1f} %" if peak else "-", f"{result.peak_memory_bytes / 2**30:.2f}",
            f"{result.loss:.5f}", f"{gap:.1e}",
            "-" if result.compilations is None else f"{result.compilations} ({result.compile_seconds:.0f} s)",
            result.kernel,
        ])  # fmt: skip
        label = ""
    del model, batches, initial_state
    common.release_memory(device)
    return rows


def print_table(rows: list[list[str]]) -> None:
    header = ["workload", "mode", "img/s", "ms/step", "TFLOP/s", "MFU", "peak GiB", "loss", "vs fp32",
              "compiles (s)", "attention"]  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_workloads_argument(parser, WORKLOADS)
    parser.add_argument("--tiny", action="store_true", help="tiny presets (CPU proof of the script)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="default: per workload (8 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per mode (loss compared after them)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (compilation)")
    parser.add_argument("--num_batches", type=int, default=4, help="different batches, cycled")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the card's dense bf16 peak")
    parser.add_argument("--budget_s", type=float, default=450.0, help="no new run starts after this many seconds")
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    names = common.parse_workloads(args.workloads, WORKLOADS)
    if args.steps <= args.warmup:
        raise SystemExit("--steps must be larger than --warmup")
    if args.num_threads:
        common.use_threads(args.num_threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = peak_tflops(device, args.peak_tflops)
    start = time.monotonic()
    deadline = start + args.budget_s
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {card}; bf16 peak {peak or '-'} TFLOP/s; torch {torch.__version__}; {args.steps} steps per mode, "
          f"median of the last {args.steps - args.warmup}")  # fmt: skip
    rows = []
    for name in names:
        rows += check(name, args, device, peak, deadline)
    print_table(rows)
    print(f"total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
