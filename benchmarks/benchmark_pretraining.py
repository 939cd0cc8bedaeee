#!/usr/bin/env python
"""Pretraining-step throughput and peak memory of hf_mim's `CapiForPreTraining`, optionally side by side with the
original facebookresearch/capi implementation on the same masks and the same (copied) weights.

    python benchmarks/benchmark_pretraining.py --config tiny --batch_size 8 --image_size 56 --steps 5
    python benchmarks/benchmark_pretraining.py --config small --original /path/to/capi --device cuda --dtype bfloat16

One timed step is a full training step:
  * hf_mim: forward (teacher + clustering head + student + prediction head) -> backward -> AdamW -> update_teacher.
  * original: teacher `forward_pretrain` (no grad) -> `OnlineClustering` loss -> backward; student `forward_pretrain`
    with flat absolute indices -> `L2NormLinear` -> cross-entropy -> backward; AdamW steps; EMA (`_foreach_lerp_`).
Both use the AdamW the Trainer uses by default (`adamw_torch_fused`: `torch.optim.AdamW(..., fused=True)`). With
`--original` the two are timed in interleaved rounds (hf_mim, original, hf_mim, ...) in one process, so a load
change on the machine hits both; the ratio is one of medians. Mask drawing and image loading are not timed (a data
loader does them in both code bases). See benchmarks/README.md.
"""

import argparse
import ast
import contextlib
import copy
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import math
import statistics
import sys
import time
import types
from pathlib import Path

import _common as common
import torch
import torch.nn.functional as F

from hf_mim import CapiConfig
from hf_mim.allocator import tune_glibc_malloc
from hf_mim.masking import InverseBlockMasking, to_absolute
from hf_mim.models.capi.convert_capi import convert_state_dict
from hf_mim.models.capi.modeling_capi import CapiForPreTraining

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": CapiConfig.tiny, "small": CapiConfig.small, "vitl14": CapiConfig.vitl14}
# Optimisation hyper-parameters of CAPI's default_pretrain_config.yaml (they do not affect timing).
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1
CLUSTERING_LR, CLUSTERING_WEIGHT_DECAY = 5e-4, 0.01
MOMENTUM = 0.999
# How torch.optim.AdamW runs: "fused" is what transformers' Trainer uses by default (optim="adamw_torch_fused").
ADAMW_IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}


def adamw(params, implementation: str, **kwargs) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, **kwargs, **ADAMW_IMPLEMENTATIONS[implementation])


# --------------------------------------------------------------------------------------------- arguments / config
def build_config(args) -> CapiConfig:
    overrides = common.parse_overrides(args.config_overrides, "--config_overrides", reference=PRESETS[args.config]())
    return PRESETS[args.config](**overrides, attn_implementation=args.attn_implementation)


# ------------------------------------------------------------------------------------------------- memory tracking
class PeakMemory:
    """Peak memory of one phase (a few steps of one implementation, after the timed rounds), as growth over the
    memory in use at its start. CUDA: torch.cuda.max_memory_allocated - memory_allocated. CPU: growth of the process
    peak RSS (ru_maxrss) over the RSS at the start of the phase. The peak is reset through /proc/self/clear_refs where
    Linux allows it; otherwise ru_maxrss is monotone over the process, so a later phase only shows growth beyond every
    earlier peak. `process_peak` is the largest RSS the process reached in any phase (CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.can_reset = False
        self.process_peak = 0
        if device.type == "cpu":
            self.can_reset = common.reset_peak_rss()

    def start(self) -> None:
        common.release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        self.process_peak = max(self.process_peak, common.maxrss_bytes())
        if self.can_reset:
            common.reset_peak_rss()  # peak RSS := current RSS
        self.baseline = common.maxrss_bytes()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        peak = common.maxrss_bytes()
        self.process_peak = max(self.process_peak, peak)
        return peak - self.baseline

    def label(self) -> str:
        return "peak alloc +MiB" if self.device.type == "cuda" else "peak RSS +MiB"

    def note(self) -> str:
        if self.device.type == "cuda":
            return (
                "peak memory = torch.cuda.max_memory_allocated during a few untimed steps of each implementation, "
                "minus the memory allocated at their start: grads and activations, NOT parameters or optimizer state."
            )
        text = (
            "peak memory = growth of the process peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss) during a few "
            "untimed steps of each implementation, over the RSS at their start (after malloc_trim): grads, "
            "activations and allocator slack, NOT the parameters or the optimizer state (both exist before)."
            f" Process peak RSS over all phases: {self.process_peak / 2**20:.0f} MiB."
        )
        if self.can_reset:
            return text + " The peak is reset between phases via /proc/self/clear_refs."
        return (
            text + " WARNING: the peak could not be reset, so the second phase only shows growth beyond the first's."
        )


# ----------------------------------------------------------------------------------------------- the original code
class _StubModule(types.ModuleType):
    """A missing third-party module: every public attribute is a permissive class (subscriptable, callable)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{self.__name__}.{name}")


def _stub_class(name: str) -> type:
    return type(
        name.rsplit(".", 1)[-1],
        (),
        {
            "__module__": name.rsplit(".", 1)[0],
            "__class_getitem__": classmethod(lambda cls, item: cls),  # jaxtyping's Float[Tensor, "b d"]
            "__init__": lambda self, *args, **kwargs: None,
            "__call__": lambda self, *args, **kwargs: self,
        },
    )


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last-resort finder: stubs only the listed top-level modules, and only when no real finder found them."""

    def __init__(self, names: set[str]):
        self.names = names
        self.stubbed: list[str] = []

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in self.names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        self.stubbed.append(module.__name__)


def _module_level_imports(path: Path) -> set[str]:
    """Top-level module names imported by statements at module level (not in try blocks or functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def import_original(checkout: Path):
    """Import `model.py` from a checkout of facebookresearch/capi, stubbing third-party modules it (or the checkout's
    own modules it imports, i.e. utils.py) needs at import time but that are not installed. Returns (module, stubs)."""
    checkout = checkout.expanduser().resolve()
    if not (checkout / "model.py").is_file():
        raise SystemExit(f"--original {checkout}: no model.py there (expected a facebookresearch/capi checkout).")
    local, third_party, todo = set(), set(), ["model"]
    while todo:
        name = todo.pop()
        if name in local:
            continue
        local.add(name)
        for imported in _module_level_imports(checkout / f"{name}.py"):
            if (checkout / f"{imported}.py").is_file():
                todo.append(imported)
            else:
                third_party.add(imported)
    # The checkout's modules have generic names (model, utils): set aside any same-named modules already imported.
    stashed = {name: sys.modules.pop(name) for name in local if name in sys.modules}
    finder = _StubFinder(third_party - set(sys.builtin_module_names))
    sys.path.insert(0, str(checkout))
    sys.meta_path.append(finder)
    utils_logger = logging.getLogger("utils")  # utils.py warns at import that sklearnex is missing: irrelevant here
    utils_level = utils_logger.level
    utils_logger.setLevel(logging.ERROR)
    try:
        spec = importlib.util.spec_from_file_location("model", checkout / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
    finally:
        utils_logger.setLevel(utils_level)
        sys.meta_path.remove(finder)
        sys.path.remove(str(checkout))
        for name in local:
            sys.modules.pop(name, None)
        sys.modules.update(stashed)
    return module, sorted({name.split(".")[0] for name in finder.stubbed})


def check_original_compatible(config: CapiConfig) -> None:
    problems = []
    if config.intermediate_size != 4 * config.hidden_size:
        problems.append(f"intermediate_size={config.intermediate_size} (the original's MLP ratio is 4)")
    if config.decoder_intermediate_size != 4 * config.decoder_hidden_size:
        problems.append(f"decoder_intermediate_size={config.decoder_intermediate_size} (MLP ratio 4)")
    if config.attention_bias or config.mlp_bias:
        problems.append("attention_bias/mlp_bias (the original has none)")
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act={config.hidden_act!r} (the original uses nn.GELU)")
    if problems:
        raise SystemExit("--original cannot build this config: " + "; ".join(problems))


class OriginalCapi(torch.nn.Module):
    """The original's training modules: student backbone + L2NormLinear head, EMA teacher backbone + OnlineClustering
    head, built with the same sizes as `config`."""

    def __init__(self, original, config: CapiConfig):
        super().__init__()

        def part(width: int, heads: int) -> dict:
            rope = {"max_freq": config.rope_max_freq, "min_freq": config.rope_min_freq}
            attn = {"num_heads": heads, "rope_kwargs": rope}
            return {"embed_dim": width, "block_kwargs": {"drop_path_type": config.drop_path_mode, "attn_kwargs": attn}}

        encoder = part(config.hidden_size, config.num_attention_heads)
        decoder = part(config.decoder_hidden_size, config.decoder_num_attention_heads)
        shared = {"drop_path_rate": config.drop_path_rate}
        if encoder == decoder:  # the original's usual layout: everything but depth in transformers_kwargs
            shared.update(encoder)
            encoder, decoder = {}, {}
        encoder["depth"] = config.num_hidden_layers
        decoder["depth"] = config.decoder_num_hidden_layers
        self.student = original.EncoderDecoder(
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            n_registers=config.num_register_tokens,
            register_coordinates=config.register_coordinates,
            scale_reg_to_visible=config.scale_registers_to_visible,
            transformers_kwargs=shared,
            encoder_kwargs=encoder,
            decoder_kwargs=decoder,
            norm_layer_kwargs={"eps": config.rms_norm_eps},
        ).init_weights()
        self.student_head = original.L2NormLinear(self.student.pred_dim, config.num_prototypes)
        self.teacher = copy.deepcopy(self.student)  # the original copies student -> student_ema at init
        self.clustering_head = original.OnlineClustering(
            self.student.embed_dim,
            config.num_prototypes,
            bias=config.clustering_bias,
            n_sk_iter=config.sinkhorn_iterations,
            target_temp=config.target_temp,
            pred_temp=config.clustering_pred_temp,
            positionwise_sk=config.positionwise_sinkhorn,
        )
        self.student_temp = config.student_temp
        # RoPE tables are parameters in the original but trained with rope_lr_mult=0; hf_mim makes them buffers.
        for name, param in self.student.named_parameters():
            if name.endswith("rope.freqs"):
                param.requires_grad_(False)
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def student_params(self) -> list[torch.nn.Parameter]:
        return [p for p in [*self.student.parameters(), *self.student_head.parameters()] if p.requires_grad]

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) backbone parameters, RoPE tables excluded (constant, as in hf_mim)."""
        teacher = dict(self.teacher.named_parameters())
        pairs = [(teacher[n], p) for n, p in self.student.named_parameters() if not n.endswith("rope.freqs")]
        return [t.data for t, _ in pairs], [s.data for _, s in pairs]


def original_do_teacher(model: OriginalCapi, images, predict_indices):
    """As train_capi.do_teacher: teacher tokens without grad, clustering head with grad, targets at predict_indices."""
    with torch.set_grad_enabled(False):
        patch_before_head, _ = model.teacher.forward_pretrain(images)
    bs, n_tokens, _ = patch_before_head.shape
    with torch.set_grad_enabled(True):
        patch_after_head, loss = model.clustering_head(patch_before_head.transpose(0, 1))
    with torch.set_grad_enabled(False):
        patch_after_head = patch_after_head.detach().transpose(0, 1)
        targets = torch.index_select(patch_after_head.reshape(bs * n_tokens, -1), dim=0, index=predict_indices)
    return targets, loss


def original_do_student(model: OriginalCapi, images, predict_indices, visible_indices, targets):
    """As train_capi.do_student: student on visible patches, predictions at predict_indices, soft cross-entropy."""
    _, predictions = model.student.forward_pretrain(
        images, visible_indices=visible_indices, predict_indices=predict_indices, do_prediction=True
    )
    logits = model.student_head(predictions)
    loss = -torch.sum(targets.float() * F.log_softmax(logits.float() / model.student_temp, dim=-1), dim=-1)
    return loss.double().sum() / len(loss)


def copy_original_weights(original_model: OriginalCapi, hf_model: CapiForPreTraining, config: CapiConfig) -> str:
    """Original student backbone -> hf_mim student (and teacher) through the CAPI converter; heads copied directly."""
    checkpoint = {f"backbone.{k}": v for k, v in original_model.student.state_dict().items()}
    inferred, state, _ = convert_state_dict(checkpoint)
    for key in ("hidden_size", "num_hidden_layers", "decoder_hidden_size", "decoder_num_hidden_layers"):
        if getattr(inferred, key) != getattr(config, key):
            raise ValueError(f"converter inferred {key}={getattr(inferred, key)}, config has {getattr(config, key)}")
    hf_model.capi.load_state_dict(state, strict=True)
    hf_model.copy_student_to_teacher()
    with torch.no_grad():
        clustering = getattr(hf_model.clustering_head, "layer", hf_model.clustering_head)  # nn.Linear or own params
        clustering.weight.copy_(original_model.clustering_head.layer.weight)
        if config.clustering_bias:
            clustering.bias.copy_(original_model.clustering_head.layer.bias)
        head, source = hf_model.prediction_head, original_model.student_head.last_layer
        # The original's weight_g / weight_v (hf_mim may name them magnitude / direction).
        g_name, v_name = ("magnitude", "direction") if hasattr(head, "magnitude") else ("weight_g", "weight_v")
        getattr(head, g_name).copy_(source.weight_g)
        getattr(head, v_name).copy_(source.weight_v)
    return "weights copied original -> hf_mim (backbone via hf_mim.models.capi.convert_capi, heads directly)"


# --------------------------------------------------------------------------------------------------------- stepping
class HfRunner:
    name = "hf_mim"

    def __init__(self, model: CapiForPreTraining, compile_model: bool, adamw_implementation: str = "fused"):
        self.model = model
        self.forward = torch.compile(model, dynamic=False) if compile_model else model
        self.adamw_implementation = adamw_implementation

    def setup(self, device):
        self.model.to(device).train()
        student = [p for n, p in self.model.named_parameters() if p.requires_grad and "clustering_head" not in n]
        groups = [
            {"params": student, "lr": LR, "weight_decay": WEIGHT_DECAY},
            {"params": list(self.model.clustering_head.parameters()), "lr": CLUSTERING_LR,
             "weight_decay": CLUSTERING_WEIGHT_DECAY},
        ]  # fmt: skip
        self.optimizer = adamw(groups, self.adamw_implementation, betas=BETAS)

    def step(self, images, masks, autocast):
        self.optimizer.zero_grad(set_to_none=True)
        with autocast():
            output = self.forward(
                pixel_values=images, visible_indices=masks["visible"], predict_indices=masks["predict"]
            )
        output.loss.backward()
        self.optimizer.step()
        self.model.update_teacher(MOMENTUM)
        return output.loss.detach()

    @torch.no_grad()
    def losses(self, images, masks, autocast) -> dict[str, float]:
        with autocast():
            out = self.model(pixel_values=images, visible_indices=masks["visible"], predict_indices=masks["predict"])
        return {"student_loss": out.student_loss.item(), "clustering_loss": out.clustering_loss.item()}

    def teardown(self):
        del self.optimizer
        self.model.zero_grad(set_to_none=True)
        self.model.to("cpu")


class OriginalRunner:
    name = "original"

    def __init__(self, model: OriginalCapi, compile_model: bool, adamw_implementation: str = "fused"):
        self.model = model
        wrap = (lambda fn: torch.compile(fn, dynamic=False)) if compile_model else (lambda fn: fn)
        self.do_teacher, self.do_student = wrap(original_do_teacher), wrap(original_do_student)
        self.adamw_implementation = adamw_implementation

    def setup(self, device):
        self.model.to(device).train()
        self.optimizer = adamw(
            self.model.student_params(), self.adamw_implementation, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY
        )
        self.clustering_optimizer = adamw(
            self.model.clustering_head.parameters(),
            self.adamw_implementation,
            lr=CLUSTERING_LR,
            betas=BETAS,
            weight_decay=CLUSTERING_WEIGHT_DECAY,
        )
        self.ema_teacher, self.ema_student = self.model.ema_pairs()

    def step(self, images, masks, autocast):
        self.optimizer.zero_grad(set_to_none=True)
        self.clustering_optimizer.zero_grad(set_to_none=True)
        with autocast():
            targets, clustering_loss = self.do_teacher(self.model, images, masks["predict_abs"])
        clustering_loss.backward()
        with autocast():
            student_loss = self.do_student(self.model, images, masks["predict_abs"], masks["visible_abs"], targets)
        student_loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_teacher, self.ema_student, 1.0 - MOMENTUM)
        self.clustering_optimizer.step()
        return (student_loss + clustering_loss).detach()

    @torch.no_grad()
    def losses(self, images, masks, autocast) -> dict[str, float]:
        with autocast():
            targets, clustering_loss = original_do_teacher(self.model, images, masks["predict_abs"])
            student_loss = original_do_student(self.model, images, masks["predict_abs"], masks["visible_abs"], targets)
        return {"student_loss": student_loss.item(), "clustering_loss": clustering_loss.item()}

    def teardown(self):
        del self.optimizer, self.clustering_optimizer, self.ema_teacher, self.ema_student
        self.model.zero_grad(set_to_none=True)
        self.model.to("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(runner, images, masks, autocast, device) -> tuple[float, float]:
    synchronize(device)
    start = time.perf_counter()
    loss = runner.step(images, masks, autocast)
    synchronize(device)
    return time.perf_counter() - start, loss.item()


def benchmark(
    runners, images, masks_per_step, warmup: int, autocast, device, memory: PeakMemory, steps_per_round: int = 1
) -> dict:
    """Interleaved rounds: `steps_per_round` steps of each implementation in turn (A, B, A, B, ...), on the same
    masks; then, untimed, the peak memory of a few steps of each. All implementations stay set up throughout."""
    results = {runner.name: {"times": [], "losses": []} for runner in runners}
    for runner in runners:
        runner.setup(device)
    # Untimed: one process warm-up step of each (thread pools, autograd engine, allocator arenas, first-call
    # overheads), then the warm-up steps (compilation, optimizer state), interleaved as well.
    for index in range(-1, warmup):
        for runner in runners:
            timed_step(runner, images, masks_per_step[max(index, 0)], autocast, device)
    timed = masks_per_step[warmup:]
    for first in range(0, len(timed), steps_per_round):
        for runner in runners:
            for masks in timed[first : first + steps_per_round]:
                elapsed, loss = timed_step(runner, images, masks, autocast, device)
                results[runner.name]["times"].append(elapsed)
                results[runner.name]["losses"].append(loss)
    for runner in runners:
        memory.start()
        for masks in masks_per_step[: min(len(masks_per_step), 2)]:
            timed_step(runner, images, masks, autocast, device)
        results[runner.name]["peak"] = memory.stop()
    for runner in runners:
        runner.teardown()
        losses = results[runner.name]["losses"]
        if not all(math.isfinite(value) for value in losses):
            print(f"WARNING: {runner.name} produced non-finite losses: {losses}")
    common.release_memory(device)
    return results


# -------------------------------------------------------------------------------------------------------- reporting
def print_table(results: dict[str, dict], batch_size: int, memory: PeakMemory) -> None:
    rows = []
    for name, result in results.items():
        times = result["times"]
        mean, median = statistics.fmean(times), statistics.median(times)
        std = statistics.stdev(times) if len(times) > 1 else 0.0
        rows.append((name, batch_size / mean, mean * 1e3, median * 1e3, std * 1e3, result["peak"] / 2**20))
    header = f"{'implementation':<16}{'img/s':>10}{'ms/step':>10}{'median':>10}{'± std':>9}{memory.label():>17}"
    print(header)
    print("-" * len(header))
    for name, throughput, ms, median, std, mib in rows:
        print(f"{name:<16}{throughput:>10.2f}{ms:>10.2f}{median:>10.2f}{std:>9.2f}{mib:>17.1f}")
    if len(rows) == 2:
        (_, t0, m0, d0, _, p0), (_, t1, m1, d1, _, p1) = rows
        mem_ratio = f"{p0 / p1:.3f}x" if p1 > 0 else "n/a"
        print(f"{'hf_mim/original':<16}{t0 / t1:>9.3f}x{m0 / m1:>9.3f}x{d0 / d1:>9.3f}x{'':>9}{mem_ratio:>17}")
        print(f"\nhf_mim step time / original (ratio of medians): {d0 / d1:.3f} -> hf_mim is {d1 / d0:.2f}x as fast")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="tiny")
    parser.add_argument(
        "--config_overrides", default=None, help='"k=v,..." CapiConfig fields, e.g. "drop_path_rate=0"'
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=None, help="default: the config's image_size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup_steps", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: autocast")
    parser.add_argument("--attn_implementation", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the original: its step fns)")
    parser.add_argument("--original", type=Path, default=None, help="checkout of facebookresearch/capi to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    parser.add_argument(
        "--adamw", choices=sorted(ADAMW_IMPLEMENTATIONS), default="fused",
        help="torch.optim.AdamW implementation for both (default fused: the Trainer's default adamw_torch_fused)",
    )  # fmt: skip
    parser.add_argument(
        "--steps_per_round", type=int, default=1, help="timed steps of one implementation before switching"
    )
    parser.add_argument(
        "--tune_malloc", action="store_true",
        help="hf_mim.allocator.tune_glibc_malloc() first (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... at run time)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    malloc_tuned = tune_glibc_malloc() if args.tune_malloc else False
    if args.tune_malloc and not malloc_tuned:
        print("note: --tune_malloc: not glibc, allocator unchanged")
    common.require_positive(args, "steps_per_round")
    if args.steps < 1 or args.warmup_steps < 0:
        raise SystemExit("--steps must be >= 1 and --warmup_steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.compile and args.warmup_steps == 0:
        print("note: --compile with --warmup_steps 0 times the compilation too")

    device = torch.device(args.device)
    config = build_config(args)
    image_size = args.image_size or config.image_size
    if image_size % config.patch_size:
        raise SystemExit(f"--image_size {image_size} is not a multiple of patch_size {config.patch_size}")
    grid = (image_size // config.patch_size, image_size // config.patch_size)
    num_tokens = grid[0] * grid[1]
    dtype = getattr(torch, args.dtype)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    # Models, built on the CPU; both move to the device for the interleaved rounds.
    torch.manual_seed(args.seed)
    notes = []
    original_model = None
    if args.original is not None:
        check_original_compatible(config)
        original, stubbed = import_original(args.original)
        if stubbed:
            notes.append(
                f"stubbed missing module(s) {', '.join(stubbed)} (not installed) so that the original model.py "
                "imports; model.py uses them only for annotations/config loading, not in the timed code."
            )
        original_model = OriginalCapi(original, config)
        notes.append(
            "original: RoPE tables frozen (rope_lr_mult=0 in its recipe; hf_mim has them as buffers); EMA over the "
            "backbone only (its unused student_ema head is skipped, as in hf_mim); autocast instead of FSDP bf16 params; "
            "no activation checkpointing / FSDP."
        )
    hf_model = CapiForPreTraining(config)
    weights_copied = False
    if original_model is not None:
        try:
            notes.append(copy_original_weights(original_model, hf_model, config))
        except Exception as error:  # timing stays valid with independent initialisations
            notes.append(f"weights NOT copied ({type(error).__name__}: {error}); losses are not comparable")
        else:
            weights_copied = True

    # The same images and masks for both implementations (images first: step 0 does not depend on --steps).
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, config.num_channels, image_size, image_size, generator=generator).to(device)
    mask_generator = InverseBlockMasking(
        config.mask_ratio, config.prediction_subsampling, config.mask_min_aspect, roll=config.mask_roll
    )
    masks_per_step = []
    for _ in range(args.warmup_steps + args.steps):
        masks = mask_generator(args.batch_size, grid, generator)
        masks_per_step.append(
            {
                "visible": masks.visible_indices.to(device),
                "predict": masks.predict_indices.to(device),
                "visible_abs": to_absolute(masks.visible_indices, num_tokens).to(device),
                "predict_abs": to_absolute(masks.predict_indices, num_tokens).to(device),
            }
        )

    n_visible, n_predict = masks_per_step[0]["visible"].shape[1], masks_per_step[0]["predict"].shape[1]
    trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    print(
        f"config={args.config} (hidden {config.hidden_size}x{config.num_hidden_layers}, predictor "
        f"{config.decoder_hidden_size}x{config.decoder_num_hidden_layers}, prototypes {config.num_prototypes}, "
        f"drop_path {config.drop_path_rate}) | image {image_size} ({num_tokens} patches: {n_visible} visible, "
        f"{n_predict} predicted/img) | batch {args.batch_size} | device {device} | dtype {args.dtype} | "
        f"attn {args.attn_implementation} | compile {args.compile} | threads {torch.get_num_threads()} | "
        f"AdamW {args.adamw} | malloc tuned {malloc_tuned}"
    )
    print(f"hf_mim trainable parameters: {trainable / 1e6:.2f}M", end="")
    if original_model is not None:
        trainable_original = sum(p.numel() for p in original_model.student_params()) + sum(
            p.numel() for p in original_model.clustering_head.parameters()
        )
        print(f" | original: {trainable_original / 1e6:.2f}M", end="")
    print()
    if args.attn_implementation == "eager" and original_model is not None:
        notes.append(
            "the original always uses F.scaled_dot_product_attention; --attn_implementation only affects hf_mim"
        )

    # Correctness: one forward of each on the first step's masks, eval mode (no stochastic depth), same weights.
    if original_model is not None and weights_copied:
        hf_runner_check, original_runner_check = HfRunner(hf_model, False), OriginalRunner(original_model, False)
        hf_model.to(device).eval()
        hf_losses = hf_runner_check.losses(images, masks_per_step[0], autocast)
        hf_model.to("cpu")
        original_model.to(device).eval()
        original_losses = original_runner_check.losses(images, masks_per_step[0], autocast)
        original_model.to("cpu")
        diffs = {k: abs(hf_losses[k] - original_losses[k]) for k in hf_losses}
        print(
            "first-step losses (eval mode: no drop path), hf_mim vs original: "
            + ", ".join(f"{k} {hf_losses[k]:.6f} vs {original_losses[k]:.6f}" for k in hf_losses)
            + f" | max abs diff {max(diffs.values()):.3g}"
        )

    memory = PeakMemory(device)
    runners = [HfRunner(hf_model, args.compile, args.adamw)]
    if original_model is not None:
        runners.append(OriginalRunner(original_model, args.compile, args.adamw))
    results = benchmark(
        runners, images, masks_per_step, args.warmup_steps, autocast, device, memory, args.steps_per_round
    )

    print()
    print_table(results, args.batch_size, memory)
    print()
    order = " / ".join(runner.name for runner in runners)
    print(
        f"timed {args.steps} step(s) per implementation, interleaved {order} ({args.steps_per_round} step(s) each "
        f"per round), after one untimed process warm-up step and {args.warmup_steps} warmup step(s) of each; "
        f"AdamW {args.adamw}; malloc tuned: {malloc_tuned}; img/s = batch / mean step time; "
        "ratio row = hf_mim / original."
    )
    print(memory.note())
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
