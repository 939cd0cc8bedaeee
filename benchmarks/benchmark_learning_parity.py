#!/usr/bin/env python
"""Learning parity: does hf_mim's pretraining learn as well as the original code, on the same data, architecture,
steps and seeds? Digits k-NN probe and effective rank, several seeds per side, difference of means with a 90 %
Welch confidence interval.

    python benchmarks/benchmark_learning_parity.py --original_ijepa_src /tmp/orig/ijepa \
        --original_capi_src /tmp/orig/capi --output_dir outputs/learning_parity        # 5 seeds, 3000 / 1500 steps
    python benchmarks/benchmark_learning_parity.py --steps 20 --seeds 0 --output_dir /tmp/lp_smoke    # smoke test
    python benchmarks/benchmark_learning_parity.py --output_dir outputs/learning_parity --report_only   # the table

Protocol: scikit-learn's `load_digits` upsampled to 56 px (nearest), stratified 70 / 30 split (`digits_dataset(...,
test_fraction=0.3, seed=0)`); the training split is written once as an image folder (`<output_dir>/data/train/<label>/
*.png`) that every run trains on (hf_mim through `--train_dir`, the originals through torchvision's `ImageFolder`).
Tiny ViT: 64 wide, 2 blocks, 4 heads, patch 7 (an 8x8 grid); I-JEPA predictor 32 wide, 2 blocks; CAPI decoder 2
blocks, 4 registers, 64 prototypes (the `capi-tiny` preset). Batch 64, one thread per run, `--steps` (default 3000
for I-JEPA, 1500 for CAPI). Probe: weighted k-NN (k = 20, T = 0.07, cosine) of the test split on the train split,
features of the frozen model (`pooler_output`; CAPI also the mean patch token), images through the method's image
processor at 56 px (no crop); effective rank (`hf_mim.losses.effective_rank`) of the test features.

Variants (`--variants`, per method and seed; "random" init is always evaluated, it costs seconds):

* `random`: the untrained model of hf_mim's config, seeded with the seed (I-JEPA: target = context at init).
* `default`: hf_mim's `run_<method>.py` with its defaults, at the hyper-parameters the original tool uses.
* `original_choices`: the same, with the choices where hf_mim deliberately departs from the original set back
  (I-JEPA: `mask_sampler=original`; CAPI: `--original_weight_decay_groups True`).
* `original`: the original code, driven by `train_original_<method>.py` from `--tools_dir` (never copied into this
  repository), its checkpoint converted with `scripts/convert/convert_<method>_to_hf.py`.
  CAE v1 / v2 and VICRegL are driven in-process instead (benchmarks/learning_parity_originals.py), the original's
  model, optimizer rule, schedule and loop body reused by name from the speed benchmarks (benchmark_cae.py,
  benchmark_vicregl.py) and the trajectory recorders (scripts/trajectory/record_{cae,vicregl}_trajectory.py), on the
  same crops as hf_mim's side (its transforms, as `run_<method>.py` builds them), converted with the benchmarks'
  `copy_weights` (hf_mim's converters); probed at 64 px:
  - `cae` (v1) and `cae_v2` (`--original_cae_src TREE`, Atten4Vis/CAE): `run_cae.py` at `cae-tiny` (64 px, 16 px
    patches; `--cae_version 2` for its v2 twin) and the CPU recipe (lr 3e-4, crops >= 40 %; drop path 0 on both
    sides); both sides get their targets from the same seeded random stand-in target network (`run_cae.py`'s
    `random_target_model`: a DALL-E tokenizer for v1, a CLIP teacher for v2).
  - `vicregl` (`--original_vicregl_src TREE`, facebookresearch/VICRegL): `run_vicregl.py` at its CPU recipe preset
    `vicregl-tiny-resnet` (LARS, base lr 0.3 x batch / 256, 2 global 64 px crops) with a stem of 4 instead of 8
    (`embedding_size=4`: the original ResNet ties the stem width to the first stage's, widths 16..128 need 4); the
    original's VICRegL with its LARS and `learning_schedule`; its online classifier (10 classes) trains along.
    Pooled features only (the ResNet's pooler output is the mean of its map).

Every (method, variant, seed) runs as its own subprocess (`--jobs` at a time, `--threads` torch threads each) and
caches its result as `<output_dir>/results/<method>_<variant>_seed<seed>.json`: an interrupted benchmark resumes
where it stopped, and `--report_only` prints the table from the cache. A cached result whose settings (steps, batch
size, ...) differ from the requested ones is re-run.
"""

import argparse
import concurrent.futures
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import learning_parity_originals as originals

REPO = Path(__file__).resolve().parent.parent
METHODS = ("ijepa", "capi", "cae", "cae_v2", "vicregl")
VARIANTS = ("random", "default", "original_choices", "original")
DEFAULT_STEPS = {"ijepa": 3000, "capi": 1500, "cae": 1200, "cae_v2": 1200, "vicregl": 800}  # CAE, VICRegL: CPU recipes
POOLED = {"pooled": "pooled (pooler_output)"}
FEATURES = {"ijepa": ("target", "context"), "capi": ("pooled", "mean_patch"), "cae": ("pooled", "mean_patch"),
            "cae_v2": ("pooled", "mean_patch"), "vicregl": ("pooled",)}  # fmt: skip
FEATURE_TITLES = {
    "ijepa": {"target": "target encoder", "context": "context encoder"},
    "capi": {**POOLED, "mean_patch": "mean patch token"},
    "cae": {**POOLED, "mean_patch": "mean patch token"},
    "cae_v2": {**POOLED, "mean_patch": "mean patch token"},
    "vicregl": POOLED,
}
IMAGE_SIZE, TEST_FRACTION, SPLIT_SEED, K, TEMPERATURE = 56, 0.3, 0, 20, 0.07
# The probe's image side per method: the training folder's 56 px, or the model's crop size (cae-tiny and
# vicregl-tiny-resnet: 64 px; the digits upsampled)
PROBE_SIZE = {"cae": 64, "cae_v2": 64, "vicregl": 64}
LOG_EVERY = 100

# hf_mim's side: run_<method>.py arguments that mirror the original tools' defaults (see their docstrings).
HF_CONFIG = {
    "ijepa": ("ijepa-tiny", "patch_size=7,min_keep=4"),
    "capi": ("capi-tiny", "patch_size=7"),
    "cae": ("cae-tiny", ""),  # 64 px, 16 px patches; hf_mim's CPU recipe (lr 3e-4, crops >= 40 %)
    "cae_v2": ("cae-tiny", ""),  # its v2 twin (--cae_version 2)
    "vicregl": ("vicregl-tiny-resnet", f"embedding_size={originals.VICREGL_STEM}"),  # the CPU recipe's preset
}
HF_SCRIPT = {"cae_v2": "run_cae.py"}  # default: run_<method>.py
# What "original_choices" changes on top of hf_mim's defaults.
ORIGINAL_CHOICES = {
    "ijepa": {"config_overrides": "mask_sampler=original", "arguments": []},
    "capi": {"config_overrides": "", "arguments": ["--original_weight_decay_groups", "True"]},
    "cae": {"config_overrides": "", "arguments": []},  # linspace warm-up is already hf_mim's default
    "cae_v2": {"config_overrides": "", "arguments": []},
    "vicregl": {"config_overrides": "", "arguments": []},  # both sides get hf_mim's crops (flip_grid the paper's)
}
# Methods whose original is driven in-process (learning_parity_originals.py), not by a tool in --tools_dir.
IN_PROCESS = {"cae", "cae_v2", "vicregl"}
# The flag of each method's original tree (CAE v1 and v2 are the same repository).
SOURCE_FLAG = {"ijepa": "original_ijepa_src", "capi": "original_capi_src", "cae": "original_cae_src",
               "cae_v2": "original_cae_src", "vicregl": "original_vicregl_src"}  # fmt: skip
# run_cae.py defaults to drop path 0.1; benchmark_cae.build_original (the original side) builds with 0.0
CAE_HF_ARGUMENTS = ["--learning_rate", str(originals.CAE_LR), "--crop_scale_min", str(originals.CAE_CROP_SCALE_MIN),
                    "--drop_path_rate", "0.0"]  # fmt: skip
HF_ARGUMENTS = {"cae": CAE_HF_ARGUMENTS, "cae_v2": [*CAE_HF_ARGUMENTS, "--cae_version", "2"]}
ORIGINAL_TOOL = {"ijepa": "train_original_ijepa.py", "capi": "train_original_capi.py"}
ORIGINAL_OUT = {"ijepa": "original.pth.tar", "capi": "original.pth"}


# ---------------------------------------------------------------------------------------------------- statistics
def _t_cdf(x: float, df: float, intervals: int = 2000) -> float:
    """Student's t CDF at x >= 0: 1/2 + Simpson's rule over the density on [0, x] (math only)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(u: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(u * u / df))

    h = x / intervals
    total = density(0.0) + density(x)
    total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    return 0.5 + total * h / 3


def t_quantile_95(df: float) -> tuple[float, str]:
    """The 0.95 quantile of Student's t with `df` (real, >= 1) degrees of freedom, and where it came from: scipy if
    installed, else bisection on `_t_cdf` (agrees with scipy to ~1e-6)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.95, df)), "scipy"
    except ImportError:
        pass
    if math.isinf(df) or df > 1e6:
        return 1.6448536269514722, "normal"
    low, high = 0.0, 7.0  # t_0.95(df=1) = 6.31
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf(middle, df) < 0.95 else (low, middle)
    return (low + high) / 2, "math"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def welch_interval(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b) with its two-sided 90 % Welch t interval."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    diff = ma - mb
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "low": math.nan, "high": math.nan, "df": math.nan, "t": math.nan, "source": "n<2"}
    va, vb = sa**2 / len(a), sb**2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff, "df": math.inf, "t": 0.0, "source": "zero variance"}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t, source = t_quantile_95(df)
    return {"diff": diff, "low": diff - t * se, "high": diff + t * se, "df": df, "t": t, "source": source}


# ---------------------------------------------------------------------------------------------------- helpers
def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    # `python benchmarks/...` puts benchmarks/ on sys.path, not the repository; the children import hf_mim (installed)
    return env


def run_logged(command: list[str], log_path: Path, threads: int, cwd: Path = REPO) -> float:
    """Run `command`, stdout + stderr into `log_path`; returns its wall time; raises with the log's tail on failure."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(map(str, command)) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=child_env(threads))
    wall = time.perf_counter() - start
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{command[1]} exited with {result.returncode} (log: {log_path}):\n{tail}")
    return wall


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def git_state() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True)  # fmt: skip
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def write_train_folder(output_dir: Path) -> Path:
    """The digits train split as an image folder (PNG, lossless), written once."""
    folder = output_dir / "data" / "train"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    from hf_mim.data.labelled import digits_dataset

    if folder.exists():
        shutil.rmtree(folder)
    train = digits_dataset("train", IMAGE_SIZE, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    for index, row in enumerate(train):
        label_dir = folder / str(row["label"])
        label_dir.mkdir(parents=True, exist_ok=True)
        row["image"].save(label_dir / f"{index:05d}.png")
    marker.write_text(f"{len(train)} images\n")
    return folder


# ---------------------------------------------------------------------------------------------------- one run
def settings_of(args, method: str, variant: str) -> dict:
    settings = {"image_size": IMAGE_SIZE, "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED, "k": K,
                "temperature": TEMPERATURE}  # fmt: skip
    if variant != "random":
        settings.update(steps=args.steps_for[method], batch_size=args.batch_size, threads=args.threads)
    return settings


def hf_command(args, method: str, variant: str, seed: int, data_dir: Path, out: Path) -> list[str]:
    config_name, overrides = HF_CONFIG[method]
    extra = []
    if variant == "original_choices":
        if ORIGINAL_CHOICES[method]["config_overrides"]:
            overrides += "," + ORIGINAL_CHOICES[method]["config_overrides"]
        extra = ORIGINAL_CHOICES[method]["arguments"]
    extra = [*HF_ARGUMENTS.get(method, []), *extra]
    script = HF_SCRIPT.get(method, f"run_{method}.py")
    command = [
        sys.executable, str(REPO / "examples" / "pytorch" / "pretraining" / script),
        "--config_name", config_name, "--config_overrides", overrides, "--train_dir", str(data_dir),
        "--max_steps", str(args.steps_for[method]), "--per_device_train_batch_size", str(args.batch_size),
        "--seed", str(seed), "--output_dir", str(out), "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", str(LOG_EVERY), "--dataloader_num_workers", "0", "--dataloader_drop_last", "True",
        "--disable_tqdm", "True", *extra,
    ]  # fmt: skip
    if not overrides:
        command = command[:4] + command[6:]  # no --config_overrides
    return command


def original_command(args, method: str, seed: int, data_dir: Path, out: Path) -> list[str]:
    src = getattr(args, SOURCE_FLAG[method])
    return [
        sys.executable, str(args.tools_dir / ORIGINAL_TOOL[method]), "--src", str(src), "--data_dir", str(data_dir),
        "--out", str(out), "--steps", str(args.steps_for[method]), "--batch", str(args.batch_size),
        "--threads", str(args.threads), "--seed", str(seed), "--log_every", str(LOG_EVERY),
    ]  # fmt: skip


def last_hf_loss(train_dir: Path, method: str) -> float | None:
    state = train_dir / "trainer_state.json"
    if not state.exists():
        return None
    key = "student_loss" if method == "capi" else "loss"
    logged = [entry[key] for entry in json.loads(state.read_text()).get("log_history", []) if key in entry]
    return float(logged[-1]) if logged else None


def parse_original_summary(log_path: Path, method: str) -> dict:
    line = [x for x in log_path.read_text().splitlines() if x.startswith(f"original_{method}_train:")]
    if not line:
        return {}
    return {key: float(value) for key, value in re.findall(r"(\w+)=([-\d.eE+naif]+)", line[-1])}


def load_models(method: str, variant: str, seed: int, run_dir: Path) -> dict:
    """The frozen models to probe, by feature name: {name: (model, pooling)}."""
    import torch
    from transformers import AutoModel, set_seed

    import hf_mim

    if method == "ijepa":
        if variant == "random":
            set_seed(seed)
            config = hf_mim.IJepaConfig.tiny(patch_size=7, min_keep=4)
            model = hf_mim.IJepaForPreTraining(config)
            return {"target": (model.target_encoder, "pooler"), "context": (model.ijepa, "pooler")}
        if variant == "original":
            target = AutoModel.from_pretrained(run_dir / "converted_target")
            context = AutoModel.from_pretrained(run_dir / "converted_context")
        else:
            target = AutoModel.from_pretrained(run_dir / "train" / "backbone")
            context = AutoModel.from_pretrained(run_dir / "train")  # config.standalone_encoder "context"
            full = hf_mim.IJepaForPreTraining.from_pretrained(run_dir / "train")
            for name, loaded, reference in (("target", target, full.target_encoder), ("context", context, full.ijepa)):
                a, b = loaded.state_dict(), reference.state_dict()
                if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
                    raise RuntimeError(f"AutoModel did not load the {name} encoder of {run_dir / 'train'}")
        return {"target": (target, "pooler"), "context": (context, "pooler")}
    if method in ("cae", "cae_v2", "vicregl"):
        if variant == "random":
            set_seed(seed)
            if method == "vicregl":
                model = hf_mim.VicreglForPreTraining(originals.vicregl_config()).vicregl
            else:
                model = hf_mim.CaeForPreTraining(originals.cae_config(1 if method == "cae" else 2)).cae
        elif variant == "original":
            model = AutoModel.from_pretrained(run_dir / "converted")
        else:
            model = AutoModel.from_pretrained(run_dir / "train" / "backbone")
        return {name: (model, name if name == "mean_patch" else "pooler") for name in FEATURES[method]}
    if variant == "random":
        set_seed(seed)
        model = hf_mim.CapiForPreTraining(hf_mim.CapiConfig.tiny(patch_size=7)).teacher
    elif variant == "original":
        model = AutoModel.from_pretrained(run_dir / "converted")
    else:
        model = AutoModel.from_pretrained(run_dir / "train" / "backbone")
    return {"pooled": (model, "pooler"), "mean_patch": (model, "mean_patch")}


def evaluate(method: str, models: dict) -> dict:
    import torch

    import hf_mim
    from hf_mim.data.labelled import digits_dataset, pixel_values_for
    from hf_mim.evaluation import extract_features, knn_accuracy
    from hf_mim.losses import effective_rank

    size = PROBE_SIZE.get(method, IMAGE_SIZE)
    side = {"height": size, "width": size}
    processor_class = {"ijepa": hf_mim.IJepaImageProcessor, "capi": hf_mim.CapiImageProcessor,
                       "cae": hf_mim.CaeImageProcessor, "cae_v2": hf_mim.CaeImageProcessor,
                       "vicregl": hf_mim.VicreglImageProcessor}[method]  # fmt: skip
    processor = processor_class(size=side, crop_size=side, do_center_crop=False)
    splits = {name: digits_dataset(name, IMAGE_SIZE, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
              for name in ("train", "test")}  # fmt: skip
    pixels = {name: pixel_values_for(split, processor) for name, split in splits.items()}
    labels = {name: torch.tensor(split["label"]) for name, split in splits.items()}
    metrics = {}
    for feature_name, (model, pooling) in models.items():
        model.eval()
        features = {name: extract_features(model, pixels[name], pooling=pooling, batch_size=256) for name in pixels}
        accuracy = knn_accuracy(features["train"], labels["train"], features["test"], labels["test"], k=K,
                                temperature=TEMPERATURE)  # fmt: skip
        metrics[feature_name] = {
            "knn_top1": float(accuracy),
            "effective_rank": float(effective_rank(features["test"])),
            "feature_dim": int(features["test"].shape[1]),
            "finite": bool(torch.isfinite(features["test"]).all()),
        }
    return metrics


def train_original(args, method: str, seed: int, data_dir: Path, run_dir: Path) -> dict:
    """The in-process original of `method` (learning_parity_originals.py), trained into `run_dir`."""
    common = {"steps": args.steps_for[method], "batch_size": args.batch_size, "seed": seed, "log_window": LOG_EVERY}
    src = getattr(args, SOURCE_FLAG[method])
    if method == "vicregl":
        return originals.train_original_vicregl(src, data_dir, run_dir, **common)
    return originals.train_original_cae(src, data_dir, run_dir, version=1 if method == "cae" else 2, **common)


def worker(args) -> int:
    """One (method, variant, seed): train (subprocess), convert (original), probe; writes the cached JSON."""
    import torch

    torch.set_num_threads(args.threads)
    method, variant, seed = args.method, args.variant, args.seed
    output_dir = args.output_dir
    result_path = output_dir / "results" / f"{method}_{variant}_seed{seed}.json"
    run_dir = output_dir / "runs" / f"{method}_{variant}_seed{seed}"
    data_dir = output_dir / "data" / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run interrupted earlier: start it again from scratch
    run_dir.mkdir(parents=True)
    result = {"method": method, "variant": variant, "seed": seed, "settings": settings_of(args, method, variant),
              "hf_mim": git_state(), "started": datetime.now().isoformat(timespec="seconds"), "commands": []}  # fmt: skip
    start = time.perf_counter()
    if variant in ("default", "original_choices"):
        command = hf_command(args, method, variant, seed, data_dir, run_dir / "train")
        result["commands"].append(command)
        result["train_wall_s"] = run_logged(command, run_dir / "train.log", args.threads)
        metrics_file = run_dir / "train" / "train_results.json"
        runtime = json.loads(metrics_file.read_text()).get("train_runtime") if metrics_file.exists() else None
        result["train_runtime_s"] = runtime
        result["final_loss"] = last_hf_loss(run_dir / "train", method)
    elif variant == "original" and method in IN_PROCESS:
        train_start = time.perf_counter()
        summary = train_original(args, method, seed, data_dir, run_dir)
        result["train_wall_s"] = time.perf_counter() - train_start
        result["train_runtime_s"] = summary["wall_s"]
        result["final_loss"] = summary["loss_last_window"]
        result[f"original_{method}"] = summary
    elif variant == "original":
        checkpoint = run_dir / ORIGINAL_OUT[method]
        command = original_command(args, method, seed, data_dir, checkpoint)
        result["commands"].append(command)
        result["train_wall_s"] = run_logged(command, run_dir / "train.log", args.threads)
        summary = parse_original_summary(run_dir / "train.log", method)
        result["train_runtime_s"] = summary.get("wall_s")
        result["final_loss"] = summary.get("loss_last_window", summary.get("capi_loss_last_window"))
        converter = REPO / "scripts" / "convert" / f"convert_{method}_to_hf.py"
        if method == "ijepa":
            for encoder in ("target", "context"):
                command = [sys.executable, str(converter), "--checkpoint_path", str(checkpoint), "--output_dir",
                           str(run_dir / f"converted_{encoder}"), "--encoder", encoder, "--num_attention_heads", "4"]  # fmt: skip
                result["commands"].append(command)
                run_logged(command, run_dir / f"convert_{encoder}.log", args.threads)
        else:
            command = [sys.executable, str(converter), "--checkpoint_path", str(checkpoint), "--output_dir",
                       str(run_dir / "converted")]  # fmt: skip
            result["commands"].append(command)
            run_logged(command, run_dir / "convert.log", args.threads)
    if result.get("train_runtime_s"):
        result["s_per_step"] = result["train_runtime_s"] / args.steps_for[method]
    eval_start = time.perf_counter()
    result["metrics"] = evaluate(method, load_models(method, variant, seed, run_dir))
    result["eval_wall_s"] = time.perf_counter() - eval_start
    result["total_wall_s"] = time.perf_counter() - start
    result["finished"] = datetime.now().isoformat(timespec="seconds")
    result_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result_path, result)
    if not args.keep_runs and variant != "random":
        for path in run_dir.glob("*.pth*"):
            path.unlink()  # the original checkpoints (optimizer state included); the converted folders stay
    print(json.dumps({"result": str(result_path), "metrics": result["metrics"], "wall_s": result["total_wall_s"]}))
    return 0


# ---------------------------------------------------------------------------------------------------- driver
def cached(args, method: str, variant: str, seed: int) -> dict | None:
    path = args.output_dir / "results" / f"{method}_{variant}_seed{seed}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if args.report_only or result.get("settings") == settings_of(args, method, variant):
        return result
    print(f"note: {path.name} was made with other settings ({result.get('settings')}): running it again")
    return None


def worker_command(args, method: str, variant: str, seed: int) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--_worker", "--method", method, "--variant", variant,
        "--seed", str(seed), "--output_dir", str(args.output_dir), "--steps", args.steps, "--batch_size",
        str(args.batch_size), "--threads", str(args.threads), "--tools_dir", str(args.tools_dir),
    ]  # fmt: skip
    for flag, value in (
        ("--original_ijepa_src", args.original_ijepa_src),
        ("--original_capi_src", args.original_capi_src),
        ("--original_cae_src", args.original_cae_src),
        ("--original_vicregl_src", args.original_vicregl_src),
    ):
        if value is not None:
            command += [flag, str(value)]
    if args.keep_runs:
        command.append("--keep_runs")
    return command


def plan(args) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(method, variant, seed) to run, and notes: every random init first (seconds each), then seed by seed, the
    methods in `--methods` order within a seed (so that complete seeds of every method accumulate early)."""
    notes, trained = [], {}
    for method in args.methods:
        variants = ["random", *[v for v in args.variants if v != "random"]]
        if "original_choices" in variants and ORIGINAL_CHOICES[method] == {"config_overrides": "", "arguments": []}:
            notes.append(f"{method}: no deliberate departure to set back: original_choices is the default, skipped")
            variants.remove("original_choices")
        if "original" in variants:
            flag = SOURCE_FLAG[method]
            src = getattr(args, flag)
            tool = args.tools_dir / ORIGINAL_TOOL.get(method, "")
            if src is None:
                notes.append(f"{method}: no --{flag} given: the original variant is skipped")
                variants.remove("original")
            elif not Path(src).is_dir():
                notes.append(f"{method}: --{flag} {src} does not exist: the original is skipped")
                variants.remove("original")
            elif method not in IN_PROCESS and not tool.exists():
                notes.append(f"{method}: {tool} not found (--tools_dir {args.tools_dir}): the original is skipped")
                variants.remove("original")
        trained[method] = [v for v in variants if v != "random"]
    todo = [(method, "random", seed) for method in args.methods for seed in args.seeds]
    todo += [(method, v, seed) for seed in args.seeds for method in args.methods for v in trained[method]]
    return todo, notes


def drive(args) -> None:
    todo, notes = plan(args)
    for note in notes:
        print(f"note: {note}")
    missing = [job for job in todo if cached(args, *job) is None]
    print(f"{len(todo) - len(missing)} of {len(todo)} results cached in {args.output_dir / 'results'}; "
          f"{len(missing)} to run, {args.jobs} at a time, {args.threads} thread(s) each", flush=True)  # fmt: skip
    if missing:
        data_dir = write_train_folder(args.output_dir)
        import datasets

        datasets.load_dataset("imagefolder", data_dir=str(data_dir), split="train")  # build the cache once, here
        (args.output_dir / "logs").mkdir(parents=True, exist_ok=True)
    lock, done, failures = threading.Lock(), [0], []
    started = time.perf_counter()

    def run_one(job):
        method, variant, seed = job
        log = args.output_dir / "logs" / f"{method}_{variant}_seed{seed}.log"
        with open(log, "w") as handle:
            code = subprocess.run(worker_command(args, method, variant, seed), stdout=handle,
                                  stderr=subprocess.STDOUT, cwd=REPO, env=child_env(args.threads)).returncode  # fmt: skip
        with lock:
            done[0] += 1
            elapsed = time.perf_counter() - started
            if code != 0:
                failures.append(job)
                tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                print(f"[{done[0]}/{len(missing)}] FAILED {method} {variant} seed {seed} (log {log}):\n{tail}",
                      flush=True)  # fmt: skip
                return
            result = cached(args, method, variant, seed)
            summary = ", ".join(f"{name} k-NN {m['knn_top1']:.3f} rank {m['effective_rank']:.1f}"
                                for name, m in result["metrics"].items())  # fmt: skip
            per_step = f", {result['s_per_step']:.3f} s/step" if result.get("s_per_step") else ""
            print(f"[{done[0]}/{len(missing)}] {method} {variant} seed {seed}: {result['total_wall_s'] / 60:.1f} min"
                  f"{per_step}; {summary} (elapsed {elapsed / 60:.1f} min)", flush=True)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(run_one, missing))
    if failures:
        print(f"{len(failures)} run(s) failed: {failures}")


def fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def initial_results(args, method: str) -> dict[int, dict]:
    """{seed: result} of the original's initialisation: the cache of a `--steps 1 --variants original` run in
    `--init_dir` (lr and weight decay are 0 at the first warmup step and the EMA momentum starts at 1, so its teacher
    is the init)."""
    init_args = argparse.Namespace(**{**vars(args), "output_dir": args.init_dir, "report_only": True})
    return {seed: result for seed in args.seeds if (result := cached(init_args, method, "original", seed))}


def change_over_init_lines(args, method: str, feature: str, sources: set) -> list[str]:
    """Paired per seed: trained minus the same seed's initialisation, hf_mim default (vs its `random` variant) and
    original (vs `--init_dir`). Removes the spread of initial draws, which dominates at small budgets."""
    inits = initial_results(args, method)
    gains = {"default": [], "original": []}
    for seed in args.seeds:
        random_init, default = cached(args, method, "random", seed), cached(args, method, "default", seed)
        original = cached(args, method, "original", seed)
        if random_init and default:
            gains["default"].append(100 * (default["metrics"][feature]["knn_top1"]
                                           - random_init["metrics"][feature]["knn_top1"]))  # fmt: skip
        if seed in inits and original:
            gains["original"].append(100 * (original["metrics"][feature]["knn_top1"]
                                            - inits[seed]["metrics"][feature]["knn_top1"]))  # fmt: skip
    if not gains["default"] or not gains["original"]:
        return []
    w = welch_interval(gains["default"], gains["original"])
    sources.add(w["source"])
    lines = ["\nChange over the same seed's initialisation (k-NN points; original init from `--init_dir`):\n",
             "| side | n | change (mean ± std) | per seed |", "| --- | --- | --- | --- |"]  # fmt: skip
    for side, values in gains.items():
        m, sd = mean_std(values)
        lines.append(
            f"| {side} | {len(values)} | {fmt(m, 1)} ± {fmt(sd, 1)} | {' '.join(f'{x:+.1f}' for x in values)} |"
        )
    lines.append(
        f"\nhf_mim − original change: {w['diff']:+.1f} [{fmt(w['low'], 1)}, {fmt(w['high'], 1)}] (90 % Welch)"
    )
    return lines


def report(args) -> str:
    lines = []
    sources = set()
    for method in args.methods:
        variants = ["random", *[v for v in args.variants if v != "random"]]
        results = {v: [r for s in args.seeds if (r := cached(args, method, v, s)) is not None] for v in variants}
        if not any(results.values()):
            continue
        steps = next((r["settings"]["steps"] for v in variants[1:] for r in results[v]), None)
        lines.append(f"\n## {method}: {steps} steps, batch {args.batch_size}, seeds {args.seeds}; digits k-NN "
                     f"(k={K}, T={TEMPERATURE}) top-1 % and effective rank of the test features")  # fmt: skip
        for feature in FEATURES[method]:
            lines.append(f"\n### {FEATURE_TITLES[method][feature]}\n")
            lines.append("| variant | n | k-NN top-1 (mean ± std) | per seed | eff. rank (mean ± std) | per seed |")
            lines.append("| --- | --- | --- | --- | --- | --- |")
            for variant in variants:
                rows = results[variant]
                if not rows:
                    continue
                acc = [100 * r["metrics"][feature]["knn_top1"] for r in rows]
                rank = [r["metrics"][feature]["effective_rank"] for r in rows]
                (ma, sa), (mr, sr) = mean_std(acc), mean_std(rank)
                lines.append(
                    f"| {variant} | {len(rows)} | {fmt(ma, 1)} ± {fmt(sa, 1)} | {' '.join(f'{x:.1f}' for x in acc)} "
                    f"| {fmt(mr, 2)} ± {fmt(sr, 2)} | {' '.join(f'{x:.2f}' for x in rank)} |"
                )
            if results.get("original"):
                lines.append("\nhf_mim − original (difference of means, 90 % Welch t interval):\n")
                lines.append("| variant | k-NN top-1 (points) | 90 % CI | eff. rank | 90 % CI |")
                lines.append("| --- | --- | --- | --- | --- |")
                base = results["original"]
                for variant in ("default", "original_choices"):
                    if not results.get(variant):
                        continue
                    cells = []
                    for key, scale, digits in (("knn_top1", 100, 1), ("effective_rank", 1, 2)):
                        a = [scale * r["metrics"][feature][key] for r in results[variant]]
                        b = [scale * r["metrics"][feature][key] for r in base]
                        w = welch_interval(a, b)
                        sources.add(w["source"])
                        cells += [f"{w['diff']:+.{digits}f}", f"[{fmt(w['low'], digits)}, {fmt(w['high'], digits)}]"]
                    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            if args.init_dir is not None:
                lines += change_over_init_lines(args, method, feature, sources)
        timing = []
        for variant in variants[1:]:
            walls = [r["total_wall_s"] for r in results[variant]]
            steps_s = [r["s_per_step"] for r in results[variant] if r.get("s_per_step")]
            losses = [r["final_loss"] for r in results[variant] if r.get("final_loss") is not None]
            if walls:
                timing.append(
                    f"| {variant} | {fmt(statistics.fmean(walls) / 60, 1)} | "
                    f"{fmt(statistics.fmean(steps_s), 3) if steps_s else 'n/a'} | "
                    f"{fmt(statistics.fmean(losses), 4) if losses else 'n/a'} |"
                )
        if timing:
            loss_name = {"capi": "student (CAPI) loss", "cae": "CAE (CE + alignment) loss",
                         "cae_v2": "CAE v2 (cosine) loss",
                         "vicregl": "VICRegL loss (no online classifier)"}.get(method, "smooth-L1 loss")  # fmt: skip
            lines += ["\nPer run:\n", f"| variant | wall (min) | train s/step | last-100-step {loss_name} |",
                      "| --- | --- | --- | --- |", *timing]  # fmt: skip
    if sources - {"n<2", "zero variance"}:
        lines.append(f"\nt quantiles from: {', '.join(sorted(sources - {'n<2', 'zero variance'}))}")
    text = "\n".join(lines).strip()
    return text or f"no results in {args.output_dir / 'results'}"


def parse_steps(text: str, methods) -> dict:
    if "=" not in text:
        return {m: int(text) for m in methods}
    steps = dict(DEFAULT_STEPS)
    for item in text.split(","):
        key, value = item.split("=")
        if key.strip() not in METHODS:
            raise SystemExit(f"--steps: unknown method {key!r}")
        steps[key.strip()] = int(value)
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="ijepa,capi", help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--steps", default=None,
                        help="optimizer steps: one number for every method, or 'ijepa=3000,capi=1500' "
                        f"(default {DEFAULT_STEPS})")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each a subprocess)")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/learning_parity"))
    parser.add_argument("--variants", default="default,original_choices,original",
                        help="comma-separated: default, original_choices, original (random init always)")  # fmt: skip
    parser.add_argument("--original_ijepa_src", type=Path, default=None, help="exported facebookresearch/ijepa tree")
    parser.add_argument("--original_capi_src", type=Path, default=None, help="exported facebookresearch/capi tree")
    parser.add_argument("--original_cae_src", type=Path, default=None, help="exported Atten4Vis/CAE tree (v1, v2)")
    parser.add_argument("--original_vicregl_src", type=Path, default=None,
                        help="exported facebookresearch/VICRegL tree")  # fmt: skip
    parser.add_argument("--tools_dir", type=Path, default=None,
                        help="folder with train_original_{ijepa,capi}.py (default: ../shared/tools from the repo)")  # fmt: skip
    parser.add_argument("--report_only", action="store_true", help="print the table from the cache, run nothing")
    parser.add_argument("--keep_runs", action="store_true", help="keep the original checkpoints (.pth) too")
    parser.add_argument("--init_dir", type=Path, default=None,
                        help="output_dir of a '--steps 1 --variants original' run (same seeds): adds the change of "
                        "each side over its own initialisation, paired per seed")  # fmt: skip
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for value, allowed, flag in ((args.methods, METHODS, "--methods"), (args.variants, VARIANTS, "--variants")):
        unknown = set(value) - set(allowed)
        if unknown:
            parser.error(f"{flag}: unknown {sorted(unknown)} (choose from {', '.join(allowed)})")
    if args.steps is None:
        args.steps = ",".join(f"{m}={s}" for m, s in DEFAULT_STEPS.items())
    args.steps_for = parse_steps(args.steps, METHODS)
    args.output_dir = args.output_dir.resolve()
    args.tools_dir = (args.tools_dir or REPO / ".." / "shared" / "tools").resolve()
    for name in sorted(set(SOURCE_FLAG.values())):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())

    if args._worker:
        return worker(args)
    if not args.report_only:
        print(f"hf_mim {git_state()} at {REPO}; tools {args.tools_dir}"
              f"{'' if args.tools_dir.is_dir() else ' (NOT FOUND: original variants will be skipped)'}")  # fmt: skip
        print(f"steps {args.steps_for}, batch {args.batch_size}, seeds {args.seeds}, variants {args.variants}, "
              f"started {datetime.now():%H:%M}", flush=True)  # fmt: skip
        start = time.perf_counter()
        drive(args)
        print(f"finished in {timedelta(seconds=round(time.perf_counter() - start))}")
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
