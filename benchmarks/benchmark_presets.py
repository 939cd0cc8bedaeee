#!/usr/bin/env python
"""Every preset's size and CPU speed, the numbers every script's --help shows (`hf_mim.presets.help`).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/benchmark_presets.py        # all presets; ~10 minutes here
    python benchmarks/benchmark_presets.py --presets capi-tiny,cae-v2-vitt16 --no_write

Per preset: the exact parameter counts of its backbone and pretraining model (built from the config on the meta
device), its default image size, and the seconds of one fp32 training step on one CPU thread: what the trainers
run (forward with the loss, backward, AdamW step, EMA teacher update), in CPU seconds of the process (the wall
time of an idle core; the wall time seen is in the note, it grows with the machine's load), on batches of the photos bundled with
scikit-image through the recipe's transform and collator of examples/pytorch/pretraining/run_<method>.py (the
model, transform and collator are built by gpu_check.build, as `run_<method>.py --config_name <preset>` builds
them). Batch 8, or 1 for the presets whose pretraining model has more than `--large_parameters` parameters (the
table says which); the median of the timed steps after one warm-up step, at most `--steps` steps or until
`--preset_budget_s` is spent (at least one). A preset whose step would not fit the available memory (parameters,
gradients and AdamW state, estimated from the counts, plus a margin) is "not measured", with the reason. CAE steps
run against the small random stand-in target network (no DALL-E tokenizer or CLIP teacher forward).

The results replace src/hf_mim/presets/measured.py (entries of presets not measured in this run are kept), with
the date, the CPU, torch's version and the load average seen (the machine may be shared: compare runs only at a
similar load)."""

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import _common as common
import gpu_check
import torch

from hf_mim.presets import CONFIG_PRESETS, method_of
from hf_mim.presets.sizes import PresetSize, count_parameters, preset_models_on_meta, preset_parameters

MIN_BATCH_SIZE = {"vicregl": 2}  # the projectors' BatchNorm needs two images
MEASURED_FILE = Path(__file__).resolve().parents[1] / "src" / "hf_mim" / "presets" / "measured.py"
RECIPE_NAMES = {method: workload.recipe for method, workload in gpu_check.WORKLOADS.items()}
BYTES_PER_PARAMETER = 4  # fp32
# On top of parameters + gradients + AdamW state: activations of one image, the batches, the allocator.
MEMORY_FACTOR, MEMORY_EXTRA_BYTES = 1.15, 2 * 2**30


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def estimated_training_bytes(model_parameters: int, trainable: int) -> int:
    return int(BYTES_PER_PARAMETER * (model_parameters + 3 * trainable) * MEMORY_FACTOR) + MEMORY_EXTRA_BYTES


def measure_step(name: str, batch_size: int, args) -> tuple[float, float, int]:
    """(median CPU seconds, median wall seconds per training step, number of timed steps) of the preset `name` at
    `batch_size`. CPU seconds are the process's (time.process_time): with one thread they equal the wall time of an
    idle core, and stay close to it while other processes share the core (the wall time then grows with the load)."""
    method = method_of(name)
    workload = gpu_check.Workload(method, RECIPE_NAMES[method], name, batch_size, name, name)
    torch.manual_seed(0)
    model, collate, transform = gpu_check.build(workload, tiny=False)
    model.train()
    batches = gpu_check.make_batches(model, collate, transform, batch_size, 2, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def step(batch) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(model, "update_teacher"):
            model.update_teacher(0.996)

    step(batches[0])  # warm-up: first-call allocations, AdamW state
    cpu_times, wall_times = [], []
    started = time.perf_counter()
    while len(cpu_times) < args.steps and (not cpu_times or time.perf_counter() - started < args.preset_budget_s):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        step(batches[len(cpu_times) % len(batches)])
        cpu_times.append(time.process_time() - start_cpu)
        wall_times.append(time.perf_counter() - start_wall)
    return statistics.median(cpu_times), statistics.median(wall_times), len(cpu_times)


def config_image_size(name: str) -> int:
    return CONFIG_PRESETS[name]().image_size


def measure(name: str, args, loads: list[float]) -> PresetSize:
    backbone_model, pretraining_model = preset_models_on_meta(name)
    backbone, pretraining = count_parameters(backbone_model), count_parameters(pretraining_model)
    trainable = sum(p.numel() for p in pretraining_model.parameters() if p.requires_grad)  # not the EMA teacher
    batch_size = max(1 if pretraining > args.large_parameters else 8, MIN_BATCH_SIZE.get(method_of(name), 1))
    size = dict(backbone_parameters=backbone, pretraining_parameters=pretraining, image_size=config_image_size(name))
    needed = estimated_training_bytes(pretraining, trainable)
    available = available_memory_bytes()
    if needed > available:
        note = f"not measured: needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
        return PresetSize(**size, batch_size=batch_size, seconds_per_step=None, note=note)
    loads.append(os.getloadavg()[0])
    seconds, wall, steps = measure_step(name, batch_size, args)
    common.release_memory()  # the model and its optimizer went with measure_step's frame
    loads.append(os.getloadavg()[0])
    note = f"median of {steps}; wall {wall:.3g} s"
    return PresetSize(**size, batch_size=batch_size, seconds_per_step=round(seconds, 3), note=note)


def read_measured() -> tuple[dict, dict]:
    """(PRESET_SIZES, MEASURED_ON) of the file as it is, empty if there is none."""
    if not MEASURED_FILE.exists():
        return {}, {}
    namespace = {}
    source = MEASURED_FILE.read_text().replace("from .sizes import PresetSize\n", "")
    exec(compile(source, str(MEASURED_FILE), "exec"), {"PresetSize": PresetSize}, namespace)  # our own file
    return dict(namespace["PRESET_SIZES"]), dict(namespace["MEASURED_ON"])


def merged_conditions(previous: dict, done: list[str], loads: list[float], num_threads: int) -> dict:
    """MEASURED_ON for this run; a run on the same day and machine that measured other presets adds to the earlier
    one (its presets and load range are kept)."""
    now = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {num_threads} thread(s)",
        "torch": torch.__version__,
    }
    if all(previous.get(key) == value for key, value in now.items()):
        loads = loads + [float(value) for value in previous.get("load_average", "").split("-") if value]
        done = [name for name in previous.get("presets", "").split(",") if name and name not in done] + done
    now["load_average"] = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"
    now["presets"] = ",".join(done)
    return now


def write_measured(sizes: dict, measured_on: dict) -> None:
    entries = []
    for name in CONFIG_PRESETS:
        if name not in sizes:
            continue
        s = sizes[name]
        seconds = "None" if s.seconds_per_step is None else repr(s.seconds_per_step)
        entries.append(
            f"    {json.dumps(name)}: PresetSize({s.backbone_parameters:_}, {s.pretraining_parameters:_}, "
            f"{s.image_size}, {s.batch_size}, {seconds}, {json.dumps(s.note)}),"
        )
    # json.dumps: the double quotes ruff format keeps
    on = "\n".join(f"    {json.dumps(key)}: {json.dumps(value)}," for key, value in measured_on.items())
    MEASURED_FILE.write_text(
        '"""Written by benchmarks/benchmark_presets.py: rerun it rather than editing. Per preset: backbone and '
        "pretraining\nparameters (exact), default image size, batch size and CPU seconds of one training step "
        '(None: not measured,\nthe note says why)."""\n\n'
        "from .sizes import PresetSize\n\n"
        f"MEASURED_ON = {{\n{on}\n}}\n\n"
        "# fmt: off\n"
        f"PRESET_SIZES = {{\n{chr(10).join(entries)}\n}}\n"
        "# fmt: on\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", type=common.comma_list, default=list(CONFIG_PRESETS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset, at most")
    parser.add_argument("--preset_budget_s", type=float, default=20.0, help="stop timing a preset after this")
    parser.add_argument("--large_parameters", type=int, default=100_000_000, help="batch 1 above this, else 8")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--no_write", action="store_true", help="print the table only")
    args = parser.parse_args()
    unknown = [name for name in args.presets if name not in CONFIG_PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; presets: {', '.join(CONFIG_PRESETS)}")
    common.use_threads(args.num_threads)

    (sizes, previous), loads, done = read_measured(), [], []
    print(f"{'preset':26s} {'backbone':>14s} {'pretraining':>14s} {'image':>5s} {'batch':>5s} {'s/step':>8s}  note")
    # Smallest first, the file rewritten after each preset: an interrupted run keeps what it measured.
    for name in sorted(args.presets, key=lambda name: preset_parameters(name)[1]):
        size = sizes[name] = measure(name, args, loads)
        done.append(name)
        seconds = "-" if size.seconds_per_step is None else f"{size.seconds_per_step:.3f}"
        print(
            f"{name:26s} {size.backbone_parameters:14_d} {size.pretraining_parameters:14_d} {size.image_size:5d} "
            f"{size.batch_size:5d} {seconds:>8s}  {size.note}",
            flush=True,
        )
        measured_on = merged_conditions(previous, done, loads, args.num_threads)
        if not args.no_write:
            write_measured(sizes, measured_on)
    print(f"measured on {measured_on}" + ("" if args.no_write else f"; wrote {MEASURED_FILE}"))


if __name__ == "__main__":
    main()
