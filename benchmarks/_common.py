"""What the benchmark scripts share: loading a Python file by path (the examples' run_*.py, an original tree's
files) and putting modules into sys.modules for a while (stand-ins while an original tree imports), the timing flags
of the side-by-side benchmarks and their checks, `--workloads`, torch's thread counts, "k=v" config overrides, and
the memory probe (heap trim, process peak RSS and its reset). The side-by-side timing harness is `_harness.py`.

The scripts import it by name (`import _common as common`): run as `python benchmarks/<script>.py`, the benchmarks
folder is first on sys.path.
"""

import argparse
import ast
import contextlib
import ctypes
import gc
import importlib.util
import re
import resource
import sys
import types
from pathlib import Path

import torch


def load_module(path: Path, name: str):
    """Import the Python file at `path` as a module called `name` (not put in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def installed(modules: dict[str, types.ModuleType]):
    """Temporarily put `modules` into sys.modules, setting aside same-named ones."""
    stashed = {name: sys.modules.pop(name) for name in modules if name in sys.modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        sys.modules.update(stashed)


# ------------------------------------------------------------------------------------------------------- arguments
def add_timing_arguments(
    parser: argparse.ArgumentParser,
    *,
    rounds: int,
    steps: int,
    verbose_help: str = "also print per-round medians and ratios",
    profile: bool = True,
) -> None:
    """The flags of an interleaved-rounds benchmark: --rounds, --steps, --num_threads, --matmul_size, --matmul_reps,
    --seed, --verbose and, with `profile`, --profile and --profile_steps."""
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per implementation per round")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--matmul_reps", type=int, default=2, help="torch.mm calls per round (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    if profile:
        parser.add_argument("--profile", type=int, default=0, metavar="ROWS", help="after timing, profile each side")
        parser.add_argument("--profile_steps", type=int, default=3)


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Exit unless every named option is >= 1: "--rounds and --steps must be >= 1"."""
    if any(getattr(args, name) < 1 for name in names):
        flags = [f"--{name}" for name in names]
        listed = flags[-1] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"
        raise SystemExit(f"{listed} must be >= 1")


def comma_list(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_workloads_argument(parser: argparse.ArgumentParser, workloads: dict) -> None:
    """--workloads: a comma list of `workloads`' names, all of them by default."""
    parser.add_argument("--workloads", default=",".join(workloads), help=f"comma list of {', '.join(workloads)}")


def parse_workloads(text: str, workloads: dict) -> list[str]:
    """The names in the comma list `text`; exits if it is empty or names one that `workloads` lacks."""
    names = comma_list(text)
    unknown = [name for name in names if name not in workloads]
    if unknown or not names:
        raise SystemExit(f"--workloads: unknown {unknown}; choose from {', '.join(workloads)}")
    return names


def parse_overrides(text: str | None, flag: str, reference=None) -> dict:
    """Parse "k=v,k2=v2" (the value of `flag`); values are Python literals when they parse ((0.1, 0.2), [1, 2],
    1e-5, True), strings otherwise. With `reference` (a config), exits on a key it has no attribute for."""
    if not text:
        return {}
    overrides = {}
    for item in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):  # commas inside values ((a, b), [a, b]) are kept
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag}: expected k=v, got {item!r}")
        value = value.strip()
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        else:
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
        overrides[key.strip()] = parsed
    if reference is not None:
        unknown = [key for key in overrides if not hasattr(reference, key)]
        if unknown:
            raise SystemExit(f"{flag}: {type(reference).__name__} has no attribute(s) {unknown}")
    return overrides


# --------------------------------------------------------------------------------------------------------- threads
def use_threads(num_threads: int) -> None:
    """torch's intra-op threads, and its inter-op threads where they can still be set (once per process)."""
    torch.set_num_threads(num_threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(num_threads)


# ---------------------------------------------------------------------------------------------------- memory probe
def release_memory(device: torch.device | None = None) -> None:
    """Collect garbage, empty the CUDA cache on a CUDA `device`, and hand freed heap back to the OS (glibc
    malloc_trim), so that RSS reflects live memory."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def maxrss_bytes() -> int:
    """The process peak RSS (ru_maxrss), in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Set the process peak RSS to the current RSS through /proc/self/clear_refs; False where Linux does not allow
    it (or it is not Linux): ru_maxrss is then monotone over the process."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True
