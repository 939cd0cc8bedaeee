#!/usr/bin/env python
"""Does each method's CPU recipe learn? Pretrain every method's tiny preset for a fixed budget on the digits training
split, then compare the frozen backbone with its own random initialisation and with raw pixels.

    python benchmarks/benchmark_learning.py --output_dir outputs/learning                 # 4 methods x 2 seeds
    python benchmarks/benchmark_learning.py --methods vicregl --seeds 0,1,2 --steps vicregl=400 --jobs 2
    python benchmarks/benchmark_learning.py --output_dir outputs/learning --report_only    # the table again
    python benchmarks/benchmark_learning.py --methods capi --run_args capi="--learning_rate 2e-3" --tag lr2e-3

Each run is the main job itself: `examples/pytorch/pretraining/run_<method>.py` on its embedded default (the CPU
recipe of `hf_mim.presets.CPU_RECIPES`, scikit-learn's digits), `--max_steps` from `--steps` (default: the recipe's
own), `--seed`, one subprocess per (method, seed) with `--threads` torch threads. The run's learning report
(`learning_report.json`, `hf_mim.evaluation.learning.evaluate_probes`: weighted k-NN top-1, k = 20, of the 540
held-out digits on the 1257 training digits, and the effective rank of the test features, on both probes: clean
digits and transformed digits) gives raw pixels, the backbone at initialisation (the random init of that seed) and
after training; the loss at the first and last logging step come from `trainer_state.json`. The table shows mean ±
std over seeds, the gain (trained − random init) per seed, and raw pixels, per probe and feature.

`--reprobe` (with runs kept by `--keep_runs`) re-measures every cached run with `run_knn.py`'s own code on its
exported backbone (`run_knn.main`: the backbone's training resolution, its own config's random init with the run's
seed, both probes), e.g. for runs made before the transformed-digits probe existed.

Results are cached per (method, seed, tag) in `<output_dir>/results/*.json`; an interrupted benchmark resumes, and a
cached result whose settings differ is re-run. Wall times depend on the machine's load: run at most as many jobs as
cores, one thread each.
"""

import argparse
import json
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmark_learning_parity import git_state, mean_std, run_logged, write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RUN_KNN = REPO / "examples" / "pytorch" / "image-classification" / "run_knn.py"
METHODS = ("capi", "ijepa", "cae", "vicregl")
LOG_EVERY = 25


def parse_per_method(text: str | None, methods, cast=str) -> dict:
    """'capi=300,ijepa=500' or one value for every method."""
    if not text:
        return {}
    if "=" not in text:
        return {method: cast(text) for method in methods}
    values = {}
    for part in text.split(";" if ";" in text else ","):
        if not part.strip():  # a trailing ";" lets one method's arguments hold commas
            continue
        name, _, value = part.partition("=")
        if name.strip() not in METHODS:
            raise SystemExit(f"unknown method {name!r} in {text!r}")
        values[name.strip()] = cast(value.strip())
    return values


def settings_of(args, method: str) -> dict:
    return {
        "steps": args.steps.get(method),
        "threads": args.threads,
        "run_args": args.run_args.get(method, ""),
    }


def result_path(args, method: str, seed: int) -> Path:
    tag = f"_{args.tag}" if args.tag else ""
    return args.output_dir / "results" / f"{method}{tag}_seed{seed}.json"


def run_dir_of(args, method: str, seed: int) -> Path:
    return args.output_dir / "runs" / f"{method}{'_' + args.tag if args.tag else ''}_seed{seed}"


def run_one(args, method: str, seed: int) -> dict:
    run_dir = run_dir_of(args, method, seed)
    command = [
        sys.executable, str(REPO / "examples" / "pytorch" / "pretraining" / f"run_{method}.py"),
        "--seed", str(seed), "--output_dir", str(run_dir),
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", str(LOG_EVERY),
        "--disable_tqdm", "True", "--learning_report", "True",
    ]  # fmt: skip
    if args.steps.get(method):
        command += ["--max_steps", str(args.steps[method])]
    command += shlex.split(args.run_args.get(method, ""))
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: run_<method>.py would resume from a stale checkpoint
    run_dir.mkdir(parents=True)
    wall = run_logged(command, run_dir.parent / f"{run_dir.name}.log", args.threads)
    report = json.loads((run_dir / "learning_report.json").read_text())
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    state = json.loads((run_dir / "trainer_state.json").read_text())
    result = {
        "method": method, "seed": seed, "settings": settings_of(args, method), "git": git_state(),
        "minutes": wall / 60, "steps": state.get("global_step"), "loss_start": losses[0] if losses else None,
        "loss_end": losses[-1] if losses else None, "probes": report.get("probes"), "probe_source": "learning report",
        "image_size": report.get("image_size"),
    }  # fmt: skip
    if not args.keep_runs:
        for path in sorted(run_dir.rglob("*.safetensors")):
            path.unlink()
    return result


def reprobe(args, method: str, seed: int) -> dict:
    """Re-measure a kept run with run_knn.py's code: both probes, its backbone and its own config's random init."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_knn", RUN_KNN)
    run_knn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_knn)
    backbone = run_dir_of(args, method, seed) / "backbone"
    measured = run_knn.main(["--model_name_or_path", str(backbone), "--seed", str(seed)])
    return {"probes": measured["probes"], "image_size": measured["image_size"],
            "probe_source": f"run_knn.py on the kept backbone (random init: its config, seed {seed})"}  # fmt: skip


def cached(args, method: str, seed: int) -> dict | None:
    path = result_path(args, method, seed)
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("settings") == settings_of(args, method) else None


def drive(args) -> None:
    todo = [(m, s) for m in args.methods for s in args.seeds if cached(args, m, s) is None]
    print(f"{len(args.methods) * len(args.seeds) - len(todo)} cached, {len(todo)} to run, {args.jobs} at a time")
    start = time.perf_counter()

    def work(item):
        method, seed = item
        try:
            result = run_one(args, method, seed)
        except RuntimeError as error:
            print(f"{method} seed {seed} failed: {error}", flush=True)
            return
        write_json_atomic(result_path(args, method, seed), result)
        changes = ", ".join(
            f"{probe} {100 * rows['initialisation']['pooled']['knn_top1']:.1f} -> "
            f"{100 * rows['trained']['pooled']['knn_top1']:.1f}"
            for probe, rows in (result["probes"] or {}).items()
        )
        print(f"{method} seed {seed}: {result['minutes']:.1f} min, pooled k-NN {changes} "
              f"(elapsed {(time.perf_counter() - start) / 60:.1f} min)", flush=True)  # fmt: skip

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(work, todo))


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def report(args) -> str:
    lines = [
        "| method | seeds | steps | minutes | loss start → end | probe | feature | raw pixels | random init k-NN |"
        " trained k-NN | gain per seed | rank init → trained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        results = [r for s in args.seeds if (r := cached(args, method, s)) is not None and r.get("probes")]
        if not results:
            continue
        loss = f"{fmt([r['loss_start'] for r in results], 1, 3)} → {fmt([r['loss_end'] for r in results], 1, 3)}"
        for probe in results[0]["probes"]:
            rows = [r["probes"][probe] for r in results]
            initial = [next(label for label in row if label not in ("raw_pixels", "trained")) for row in rows]
            for feature in ("pooled", "mean_patch"):
                before = [row[label][feature]["knn_top1"] for row, label in zip(rows, initial)]
                after = [row["trained"][feature]["knn_top1"] for row in rows]
                gains = " / ".join(f"{100 * (a - b):+.1f}" for a, b in zip(after, before))
                ranks = (f"{fmt([row[label][feature]['effective_rank'] for row, label in zip(rows, initial)], 1)} → "
                         f"{fmt([row['trained'][feature]['effective_rank'] for row in rows], 1)}")  # fmt: skip
                lines.append(
                    f"| {method}{' ' + args.tag if args.tag else ''} | {','.join(str(r['seed']) for r in results)} | "
                    f"{results[0]['steps']} | {fmt([r['minutes'] for r in results], 1)} | {loss} | {probe} | "
                    f"{feature} | {fmt([rows[0]['raw_pixels']['knn_top1']])} | {fmt(before)} | {fmt(after)} | "
                    f"{gains} | {ranks} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", default=None, help="'capi=300,ijepa=500' or one number (default: the recipe's)")
    parser.add_argument("--run_args", default=None,
                        help="extra run_<method>.py arguments: 'capi=--learning_rate 2e-3;ijepa=...'")  # fmt: skip
    parser.add_argument("--tag", default="", help="name for a variant (kept apart in the cache and the table)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output_dir", type=Path, default=REPO / "outputs" / "learning")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--keep_runs", action="store_true", help="keep the trained weights of every run")
    parser.add_argument("--reprobe", action="store_true",
                        help="re-measure cached runs kept by --keep_runs with run_knn.py's code (both probes)")  # fmt: skip
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.steps = parse_per_method(args.steps, args.methods, int)
    args.run_args = parse_per_method(args.run_args, args.methods)
    (args.output_dir / "results").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        print(f"hf_mim {git_state()}; methods {args.methods}, seeds {args.seeds}, {args.threads} thread(s) per run")
        drive(args)
    if args.reprobe:
        for method in args.methods:
            for seed in args.seeds:
                result = cached(args, method, seed)
                if result is not None:
                    write_json_atomic(result_path(args, method, seed), {**result, **reprobe(args, method, seed)})
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
