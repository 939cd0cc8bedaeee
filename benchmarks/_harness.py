"""The harness of the side-by-side benchmarks (benchmark_ijepa.py, benchmark_vicregl.py, benchmark_cae.py): each
implementation of a workload is an `Impl` (one step per call); `measure` counts FLOPs, times the implementations of
a workload in interleaved rounds (the order rotating step by step) beside a matmul yardstick, and probes the peak RSS
growth of one step; `warm_up_compiled` compiles the --compiled side ("hf_mim compiled") in untimed steps and checks
its first loss against the eager one; `print_table` / `print_round_medians` print the results; `profile` gives
torch.profiler tables.

The scripts import it by name (`import _harness as harness`), as they import `_common`.
"""

import collections
import math
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import _common as common
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


# ------------------------------------------------------------------------------------------------------ measurement
@dataclass
class Impl:
    workload: str
    name: str
    batch: int
    training: bool
    run: Callable[[int], object]  # run(step_index): one step
    flops: float = 0.0
    rounds: list[list[float]] = field(default_factory=list)  # wall seconds per timed step, per round
    cpu_rounds: list[list[float]] = field(default_factory=list)  # process CPU seconds per timed step, per round
    rss: int | None = None


def _cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # torch's SDPA backward count includes the flash kernel's recomputation of q @ k^T; leave it out, so that SDPA
    # and eager attention count the same (model) FLOPs: 4 matmuls backward for the 2 forward ones.
    batch, heads, queries, dim = query
    return sdpa_backward_flop_count(grad_out, query, key, value) - 2 * batch * heads * queries * key[-2] * dim


# torch's FLOP table has no entry for the CPU flash-attention kernels SDPA dispatches to; count them as SDPA does.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def count_flops(impl: Impl, indices: range) -> float:
    """Mean FLOPs of one step over `indices` (every mask draw once): matmuls, convolutions and attention, forward
    and, for training, backward."""
    total = 0
    for index in indices:
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter, warnings.catch_warnings():
            # the counter's module tracker is a global module hook, which a compiled module calls once more (that
            # changes its per-module breakdown, not the total counted here)
            warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
            impl.run(index)
        total += counter.get_total_flops()
    return total / len(indices)


def matmul_gflops(size: int, reps: int, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
    """Best (wall, CPU-time) GFLOP/s of `reps` fp32 size x size matmuls."""
    best_wall = best_cpu = math.inf
    for _ in range(reps):
        cpu_start, start = time.process_time(), time.perf_counter()
        torch.mm(a, b, out=c)
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    return 2 * size**3 / best_wall / 1e9, 2 * size**3 / best_cpu / 1e9


def measure(groups: dict[str, list[Impl]], args, flop_steps: int) -> tuple[list[tuple[float, float]], float]:
    """Fill in every Impl of `groups`, under the timing arguments of `args` (_common.add_timing_arguments):
    * `flops`: FLOPs per step, the mean over steps 0 .. flop_steps - 1 of a training Impl (step 0 of an inference
      one); this doubles as warm-up, followed by one plain untimed step each;
    * `rounds` / `cpu_rounds`: wall and process CPU seconds of each timed step. In each of `args.rounds` rounds every
      workload's implementations take turns step by step, the order rotating from one step to the next (A B, B A,
      ...; with three, A B C, B C A, C A B, ...: neighbours in time see about the same machine load), `args.steps`
      timed steps each, at step indices that go on from round to round;
    * `rss`: the peak RSS growth of one step (after timing: it trims the heap, which would perturb the timings).
    Returns the (wall, CPU) GFLOP/s of the matmul yardstick (one call before the first round, the best of
    `args.matmul_reps` after each) and the seconds the rounds took."""
    impls = [impl for group in groups.values() for impl in group]
    for impl in impls:
        impl.flops = count_flops(impl, range(flop_steps) if impl.training else range(1))
        impl.run(0)

    size = args.matmul_size
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    matmul_rounds = [matmul_gflops(size, 1, a, b, c)]  # warm-up call, also counted
    step_index = 0
    started = time.perf_counter()
    for round_index in range(args.rounds):
        for group in groups.values():
            for impl in group:
                impl.rounds.append([])
                impl.cpu_rounds.append([])
            for s in range(args.steps):
                turn = (round_index * args.steps + s) % len(group)
                for impl in group[turn:] + group[:turn]:
                    cpu_start, start = time.process_time(), time.perf_counter()
                    impl.run(step_index + s)
                    impl.rounds[-1].append(time.perf_counter() - start)
                    impl.cpu_rounds[-1].append(time.process_time() - cpu_start)
        step_index += args.steps
        matmul_rounds.append(matmul_gflops(size, args.matmul_reps, a, b, c))
    elapsed = time.perf_counter() - started

    for impl in impls:
        impl.rss = measure_rss(impl, 0)
    return matmul_rounds, elapsed


def measure_rss(impl: Impl, index: int) -> int | None:
    """Growth of the process peak RSS over one step, after a malloc_trim and a peak reset (None if not allowed)."""
    common.release_memory()
    if not common.reset_peak_rss():
        return None
    baseline = common.maxrss_bytes()
    impl.run(index)
    return common.maxrss_bytes() - baseline


# ---------------------------------------------------------------------------------------------------- compiled side
COMPILED = "hf_mim compiled"  # the name of the compiled implementation (a variant of the first, "hf_mim")
COMPILED_RTOL = 1e-4  # its first-step loss against the eager one
COMPILED_SPEEDUP = f" ({COMPILED}'s row: its own speed-up over the other implementation, then over eager hf_mim)"


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (recompilations and the pieces around graph breaks
    included): torch._dynamo.utils.counters["stats"]["unique_graphs"]."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _compile_passes(compiled: Impl, draws: int) -> tuple[float, int, int]:
    """Steps of `compiled` at indices 0 .. draws - 1 (every batch and mask shape the timed steps use), pass after pass
    until a whole pass compiles no new graph (at most 3). Returns (the first step's loss, passes, graphs the last pass
    compiled)."""
    first_loss, passes, new = None, 0, 1
    while new and passes < 3:
        before = dynamo_graphs()
        for index in range(draws):
            loss = compiled.run(index).item()
            first_loss = loss if first_loss is None else first_loss
        passes += 1
        new = dynamo_graphs() - before
    return first_loss, passes, new


def _warm_up_one(group: list[Impl], draws: int, checks: list[str], notes: list[str]) -> bool:
    """`warm_up_compiled` for one group; False (and COMPILED taken out of `group`) if it raised."""
    from torch._dynamo.utils import counters

    eager, compiled = group[0], group[-1]
    graphs, breaks = dynamo_graphs(), collections.Counter(counters["graph_break"])
    cache = collections.Counter(counters["inductor"])
    eager_loss = eager.run(0).item()
    started = time.perf_counter()
    try:
        compiled_loss, passes, new = _compile_passes(compiled, draws)
    except Exception as error:  # reported in the check line, with its traceback on stderr
        traceback.print_exc()
        group.pop()
        checks.append(
            f"{eager.workload} {compiled.name}: FAILED in its warm-up, not timed (traceback on stderr): "
            f"{type(error).__name__}: {error}"
        )
        steps = "its warm-up steps, the last failing"
    else:
        diff = abs(compiled_loss - eager_loss)
        verdict = "ok" if diff <= COMPILED_RTOL * abs(eager_loss) else "MISMATCH"
        checks.append(
            f"{eager.workload} first-step loss (first training step of each, same weights and inputs), "
            f"{compiled.name} vs {eager.name}: {compiled_loss:.8f} vs {eager_loss:.8f}: rel diff "
            f"{diff / abs(eager_loss):.3g} (rtol {COMPILED_RTOL:g}: {verdict})"
        )
        last = f"still compiling {new} graph(s): WARNING, timed steps may compile too" if new else "compiling none"
        steps = f"{passes * draws} untimed warm-up steps ({passes} pass(es) over the {draws} batch / mask draw(s), "
        steps += f"the last {last})"
    seconds = time.perf_counter() - started
    new_breaks = collections.Counter(counters["graph_break"]) - breaks
    cache = collections.Counter(counters["inductor"]) - cache
    broken = (
        f"{sum(new_breaks.values())} graph break(s): "
        + "; ".join(f"{' '.join(reason.split())!r} x{n}" for reason, n in new_breaks.items())
        if new_breaks
        else "no graph break"
    )
    notes.append(
        f"{eager.workload}: {compiled.name} = torch.compile(model) (inductor, fullgraph=False): dynamo compiled "
        f"{dynamo_graphs() - graphs} graph(s), {broken}, in {steps}: {seconds:.1f} s (inductor FX-graph cache: "
        f"{cache['fxgraph_cache_hit']} hit(s), {cache['fxgraph_cache_miss']} miss(es))"
    )
    return group[-1] is compiled


def warm_up_compiled(groups: dict[str, list[Impl]], draws: int, checks: list[str], notes: list[str]) -> None:
    """Untimed, before `measure`, for every group whose first implementation is hf_mim's eager step and whose last is
    COMPILED: the eager side's first step (index 0), then the compiled side's steps over every batch / mask draw,
    pass after pass until a whole pass compiles no new graph, so that no compilation falls into the timed rounds.
    Appends to `checks` the first training step's loss of each (same weights and inputs), which must agree within
    rtol COMPILED_RTOL, and to `notes` the graphs dynamo compiled, the graph breaks with their reasons, the warm-up
    steps and seconds, and inductor's on-disk FX-graph cache hits (which shorten the warm-up).

    If compiling or running a compiled step raises, its traceback goes to stderr, the check line says FAILED with the
    error, and that compiled implementation leaves its group (the others are still timed). Dynamo is then reset and
    the compiled sides warmed up before it are warmed up again: dynamo keeps some decisions per code object (a frame
    it gave up on after a graph break in a loop runs eagerly from then on), and models of the same classes share
    their code, so the failed model's would otherwise change how the others run."""
    warmed = []
    for group in groups.values():
        if group[-1].name != COMPILED:
            continue
        if _warm_up_one(group, draws, checks, notes):
            warmed.append(group)
            continue
        torch._dynamo.reset()
        if warmed:
            graphs, started = dynamo_graphs(), time.perf_counter()
            for earlier in warmed:
                _compile_passes(earlier[-1], draws)
            notes.append(
                f"after {group[0].workload}'s failure, torch._dynamo.reset() and the compiled warm-ups of "
                f"{', '.join(g[0].workload for g in warmed)} again: {dynamo_graphs() - graphs} graph(s), "
                f"{time.perf_counter() - started:.1f} s"
            )


def compiled_after_warm_up(graphs: int) -> str:
    """The note on compilation after the warm-ups: `graphs` = dynamo_graphs() when they ended."""
    new = dynamo_graphs() - graphs
    if not new:
        return "dynamo compiled no graph after the compiled warm-up steps (FLOP counts, timed rounds, RSS steps)"
    return f"WARNING: dynamo compiled {new} graph(s) after the warm-up steps: the timings may include compilation"


# -------------------------------------------------------------------------------------------------------- reporting
def _speedup(other: list[list[float]], hf: list[list[float]]) -> float:
    """Median over rounds of the paired per-round ratio other / hf (robust to load that drifts between rounds)."""
    return statistics.median(statistics.median(o) / statistics.median(h) for o, h in zip(other, hf))


def _versus(other: Impl, ours: Impl) -> str:
    """ "1.050x / 1.040x vs original": `ours`'s speed-up over `other`, wall / CPU."""
    wall, cpu = _speedup(other.rounds, ours.rounds), _speedup(other.cpu_rounds, ours.cpu_rounds)
    return f"{wall:.3f}x / {cpu:.3f}x vs {other.name}"


def _is_variant(impl: Impl, first: Impl) -> bool:
    """A variant of a workload's first implementation ("hf_mim compiled" of "hf_mim")."""
    return impl is not first and impl.name.startswith(first.name + " ")


def print_table(groups: dict[str, list[Impl]], peak: float) -> None:
    header = [
        "workload",
        "implementation",
        "median ms",
        "CPU ms",
        "img/s",
        "hf_mim speed-up (wall / CPU)",
        "GFLOP/step",
        "GFLOP/s (CPU)",
        "% of mm peak",
        "peak RSS +MiB",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for workload, impls in groups.items():
        hf = impls[0]
        others = [impl for impl in impls[1:] if not _is_variant(impl, hf)]
        for impl in impls:
            median = statistics.median(t for r in impl.rounds for t in r)
            cpu = statistics.median(t for r in impl.cpu_rounds for t in r)
            if impl is hf:
                ratio = "—"
            elif _is_variant(impl, hf):  # its own speed-up over each other implementation, then over hf_mim's
                ratio = ", ".join(_versus(other, impl) for other in others + [hf])
            else:  # hf_mim's speed-up over this implementation
                ratio = _versus(impl, hf)
            gflops = impl.flops / cpu / 1e9
            rss = "n/a" if impl.rss is None else f"{impl.rss / 2**20:.1f}"
            cells = [
                workload,
                impl.name,
                f"{median * 1e3:.1f}",
                f"{cpu * 1e3:.1f}",
                f"{impl.batch / median:.1f}",
                ratio,
                f"{impl.flops / 1e9:.2f}",
                f"{gflops:.1f}",
                f"{100 * gflops / peak:.1f}%",
                rss,
            ]
            print("| " + " | ".join(cells) + " |")


def print_round_medians(
    groups: dict[str, list[Impl]], workload_width: int, name_width: int, versus: bool = False
) -> None:
    """Per-round medians of every implementation (wall, then CPU ms) and the per-round speed-up of hf_mim (the first
    of each group) over each other implementation ("hf_mim speed-up vs <name>" with `versus`, or when the group has a
    variant of hf_mim), then that of each variant ("hf_mim compiled") over the others and over hf_mim."""
    name_width = max(name_width, *(len(impl.name) for group in groups.values() for impl in group))
    for clock, attribute in (("wall", "rounds"), ("CPU", "cpu_rounds")):
        print(f"\nper-round medians, {clock} ms:")
        for group in groups.values():
            for impl in group:
                values = " ".join(f"{statistics.median(r) * 1e3:.1f}" for r in getattr(impl, attribute))
                print(f"  {impl.workload:<{workload_width}} {impl.name:<{name_width}} {values}")
        for workload, group in groups.items():
            hf = group[0]
            variants = [impl for impl in group if _is_variant(impl, hf)]
            others = [impl for impl in group[1:] if not _is_variant(impl, hf)]
            pairs = [(hf, other) for other in others] + [(v, other) for v in variants for other in others + [hf]]
            for ours, other in pairs:
                rounds = zip(getattr(other, attribute), getattr(ours, attribute))
                ratios = " ".join(f"{statistics.median(o) / statistics.median(h):.3f}" for o, h in rounds)
                label = f"{ours.name} speed-up vs {other.name}" if versus or variants else "hf_mim speed-up"
                print(f"  {workload:<{workload_width}} {label}: {ratios}")


# ---------------------------------------------------------------------------------------------------------- profile
def profile(impls: list, steps: int, rows: int) -> None:
    """torch.profiler (CPU, one thread as the timing) over `steps` consecutive steps of each implementation, after
    one untimed step each; top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for impl in impls:
        impl.run(0)
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            for index in range(steps):
                impl.run(index)
        print(f"\n### profile: {impl.workload} / {impl.name} ({steps} steps, self CPU time)")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
