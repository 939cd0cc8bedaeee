"""Objective pieces shared across methods, distributed-aware: Sinkhorn-Knopp and soft-target cross-entropy, and the
float32 guards every method's numerically sensitive parts run under (`at_least_float32`, `autocast_off`,
`runs_in_float32`)."""

import contextlib
import functools

import torch
import torch.distributed as dist


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A half-precision floating tensor (bfloat16, float16) up-cast to float32; anything else (float32, float64,
    integers) unchanged, so in a float32 or float64 run this is the identity (the same tensor, not a copy)."""
    if tensor.is_floating_point() and tensor.element_size() < 4:
        return tensor.float()
    return tensor


def autocast_off(reference: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast disabled on `reference`'s device type (CUDA, CPU, ...), a no-op context where it has no autocast.

    Inside, operations run in the dtype of their inputs: give them `at_least_float32` inputs and they run in float32
    even where the Trainer's `--bf16` autocast would run them (matmul, einsum, ...) in bfloat16."""
    device_type = reference.device.type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _upcast(value):
    if isinstance(value, torch.Tensor):
        return at_least_float32(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(item) for item in value)
    return value


def _first_tensor(values):
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)) and (found := _first_tensor(value)) is not None:
            return found
    return None


def runs_in_float32(function):
    """Decorator for a numerically sensitive function (a loss, a temperature softmax, a normalisation): it runs with
    autocast off and its half-precision tensor arguments (also inside lists and tuples) up-cast to float32, so it
    computes and returns float32 under `--bf16` / `--fp16` mixed precision; gradients flow back through the up-cast
    in the callers' dtype. Under float32 (or float64) training nothing changes: the same tensors, the same ops."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        args, kwargs = _upcast(args), {name: _upcast(value) for name, value in kwargs.items()}
        reference = _first_tensor((*args, *kwargs.values()))
        with autocast_off(reference) if reference is not None else contextlib.nullcontext():
            return function(*args, **kwargs)

    return guarded


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce across ranks when running distributed; a no-op otherwise."""
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


# exp(x - max + offset): the offset keeps the largest value near e^50 (0 for fp16, whose range is small).
_EXP_OFFSET = {torch.float16: 0.0, torch.bfloat16: 50.0, torch.float32: 50.0, torch.float64: 50.0}

# The large (samples, prototypes) tensors are worked on one piece of about this size at a time, so that the several
# elementwise passes a piece needs run in cache and cost about one pass over memory (the per-element operations, and
# so the results, are those of whole-tensor operations).
_CHUNK_BYTES = 1 << 20


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    num_iterations: int = 3,
    eps: float = 1e-8,
    inplace: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Sinkhorn-Knopp as CAPI runs it on (..., samples, prototypes) scores / temperature, in float32 at least.

    The "column" step normalises over the sample axis (dim -2) summed over **all ranks**, the "row" step over
    prototypes, `num_iterations` times; the result's rows sum to 1. The max used for the stable exponential is also
    all-reduced, so every rank computes exactly what one process would on the global batch.

    `inplace=True` consumes `scores`: the assignments are computed in its memory and returned (no copy of the
    (samples, prototypes) tensor is made), so pass a tensor you own, e.g. a fresh `logits / temperature`. With the
    default `inplace=False`, `scores` is left untouched and one new tensor holds the result. `temperature` divides
    the scores first (as `scores / temperature` would, but without a separate full-size temporary): pass raw logits
    and CAPI's `target_temp`, or scores already divided and the default 1.

    Leading dimensions are independent problems (CAPI's position-wise Sinkhorn on (positions, batch, prototypes)).
    They are processed a few at a time (in one process: each group from start to end while it is in cache; across
    ranks: group by group within each iteration, with one all-reduce per iteration for all of them). Per element
    these are the operations of the whole-tensor algorithm, so the numbers are the same, only faster.

    Half-precision scores (CAPI's clustering logits under `--bf16`) are worked on as a float32 copy, with autocast
    off, and the assignments are float32: in bfloat16, `scores / temperature - max + 50` is rounded to steps of 0.25
    near 50, so the exponentials (and the targets) would be off by up to 13 %. Such a `scores` is never consumed.
    """
    if scores.element_size() < 4:  # the up-cast copy is ours to work on in place
        scores, inplace = at_least_float32(scores), True
    with autocast_off(scores):
        return _sinkhorn_knopp(scores, num_iterations, eps, inplace, temperature)


def _sinkhorn_knopp(
    scores: torch.Tensor, num_iterations: int, eps: float, inplace: bool, temperature: float
) -> torch.Tensor:
    grouped = scores.ndim >= 3 and scores.is_contiguous() and not torch.compiler.is_compiling()
    if grouped and not _distributed():
        assignments = scores if inplace else torch.empty_like(scores)
        sources, targets = _problem_groups(scores), _problem_groups(assignments)
        for source, group in zip(sources, targets):
            if temperature != 1:
                source = torch.div(source, temperature, out=group)
            torch.add(source, _EXP_OFFSET[scores.dtype] - source.amax(dim=-2, keepdim=True), out=group).exp_()
            for _ in range(num_iterations):
                group /= group.sum(dim=-2, keepdim=True) + eps
                group /= group.sum(dim=-1, keepdim=True) + eps
        return assignments
    if temperature != 1:
        scores, inplace = (scores.div_(temperature) if inplace else scores / temperature), True
    shift = scores.amax(dim=-2, keepdim=True)
    all_reduce_(shift, dist.ReduceOp.MAX)
    shift = _EXP_OFFSET[scores.dtype] - shift
    assignments = scores.add_(shift) if inplace else scores + shift
    if not grouped or not assignments.is_contiguous():
        assignments.exp_()
        for _ in range(num_iterations):
            assignments /= all_reduce_(assignments.sum(dim=-2, keepdim=True)) + eps
            assignments /= assignments.sum(dim=-1, keepdim=True) + eps
        return assignments
    groups = _problem_groups(assignments)
    columns = assignments.new_empty(*assignments.shape[:-2], 1, assignments.shape[-1])  # every problem's sums
    column_groups = _problem_groups(columns, per_group=groups[0].shape[0])
    for group, column in zip(groups, column_groups):
        torch.sum(group.exp_(), dim=-2, keepdim=True, out=column)
    for iteration in range(num_iterations):
        all_reduce_(columns)  # one all-reduce per iteration for all problems, as for the whole tensor
        columns += eps
        for group, column in zip(groups, column_groups):
            group /= column
            group /= group.sum(dim=-1, keepdim=True) + eps
            if iteration + 1 < num_iterations:
                torch.sum(group, dim=-2, keepdim=True, out=column)
    return assignments


def _problem_groups(tensor: torch.Tensor, per_group: int | None = None) -> tuple[torch.Tensor, ...]:
    """A contiguous (..., n, k) tensor as (problems, n, k) views of about _CHUNK_BYTES each (at least one problem)."""
    problems = tensor.view(-1, *tensor.shape[-2:])
    if per_group is None:
        per_group = max(1, _CHUNK_BYTES // (problems[0].numel() * problems.element_size()))
    return problems.split(per_group)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _soft_cross_entropy_reference(targets: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.to(_compute_dtype(logits.dtype))
    return -(targets.to(logits.dtype) * torch.log_softmax(logits / temperature, dim=-1)).sum(dim=-1)


class _SoftCrossEntropy(torch.autograd.Function):
    """Row-chunked -sum_k q_k log softmax(z / T)_k on 2-D (rows, K) inputs; gradient to the logits only.

    Forward: per chunk of rows, the same operations as `_soft_cross_entropy_reference` (so the same numbers) without
    its three (rows, K) temporaries. Backward: dz = (softmax(z / T) * sum_k q_k - q) * g / T, recomputed per chunk
    from the saved logits, so nothing (rows, K) but the gradient itself is allocated.
    """

    @staticmethod
    def forward(ctx, targets, logits, temperature):
        compute = _compute_dtype(logits.dtype)
        losses = torch.empty(logits.shape[0], dtype=compute, device=logits.device)
        rows = max(1, _CHUNK_BYTES // (logits.shape[-1] * torch.finfo(compute).bits // 8))
        for start in range(0, logits.shape[0], rows):
            z = logits[start : start + rows].to(compute)
            q = targets[start : start + rows].to(compute)
            torch.sum(torch.log_softmax(z / temperature, dim=-1).mul_(q), dim=-1, out=losses[start : start + rows])
        losses.neg_()
        ctx.save_for_backward(targets, logits)
        ctx.temperature, ctx.rows = temperature, rows
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        targets, logits = ctx.saved_tensors
        compute = _compute_dtype(logits.dtype)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        scale = grad_losses.to(compute).unsqueeze(-1) / ctx.temperature  # (rows, 1)
        rows = ctx.rows
        for start in range(0, logits.shape[0], rows):
            z = logits[start : start + rows].to(compute)
            q = targets[start : start + rows].to(compute)
            g = scale[start : start + rows]
            probabilities = torch.softmax(z / ctx.temperature, dim=-1)
            if grad.dtype == compute:  # straight into the gradient
                chunk = torch.mul(probabilities, q.sum(dim=-1, keepdim=True) * g, out=grad[start : start + rows])
                chunk.addcmul_(q, g, value=-1)
            else:
                probabilities.mul_(q.sum(dim=-1, keepdim=True) * g).addcmul_(q, g, value=-1)
                grad[start : start + rows] = probabilities
        return None, grad, None


def soft_cross_entropy(targets: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row -sum_k q_k log softmax(logits / T)_k, computed in float32 at least, with autocast off.

    The targets are constants (CAPI's Sinkhorn assignments): the gradient flows to `logits` only, and the large
    (rows, K) work runs in row chunks (the same values as the plain formula, without its full-size temporaries).
    Half-precision logits are up-cast chunk by chunk (no float32 copy of the whole (rows, K) tensor is kept).
    Targets that require grad (or tracing under torch.compile) take the plain autograd formula.
    """
    with autocast_off(logits):
        if (targets.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            return _soft_cross_entropy_reference(targets, logits, temperature)
        shape = logits.shape[:-1]
        targets = targets.expand_as(logits).reshape(-1, logits.shape[-1])
        losses = _SoftCrossEntropy.apply(targets, logits.reshape(-1, logits.shape[-1]), temperature)
        return losses.reshape(shape)


def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the normalised singular values) of centred (n, d) features: d for isotropic, 1 for collapse."""
    features = features.float()
    features = features - features.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(features)
    p = singular / singular.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
