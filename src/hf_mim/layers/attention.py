"""Multi-head (self- or cross-) attention through transformers' attention-implementation switch."""

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention; the path that can return attention probabilities. Output is (B, n_q, H, d)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def matmul_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """softmax((q * scaling) k^T) v as two batched matmuls around a softmax, the query scaled first (the order of
    BEiT's and CAE's code): the math of SDPA, in the kernels that are faster for short sequences on CPU (see
    `Attention.attention_function`). Output is (B, n_q, H, d); no attention probabilities are returned."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


# torch's CPU flash-attention kernel (what SDPA runs on CPU) loops over (batch, head) pairs with small GEMMs. In training
# at short lengths and narrow heads, `matmul_attention` (one batched matmul each way) is faster. Measured forward +
# backward, float32, one thread, batch 16: 0.68-0.80x the flash kernel's time at 19-37 key tokens and heads 8-16 wide,
# 0.80-0.91x at 32 wide, 0.86-0.97x at 48 keys, 0.92-1.21x at 65; heads 64 wide 0.98-1.16x. Without gradients
# flash is about as fast or faster. A model opts in per layer through `Attention.matmul_max_kv_tokens`.
MATMUL_ATTENTION_MAX_HEAD_DIM = 32


class Attention(nn.Module):
    """Separate q/k/v/o projections; optional rotary embedding applied to q and k; self- or cross-attention
    (`forward`), or queries, keys and values projected from three inputs (`attend`, the public cross-attention API).

    `config` is only read for `_attn_implementation` ("eager", "sdpa", or any registered kernel), so every model's
    `attn_implementation=` switch reaches here. Asking for attention probabilities always uses the eager path.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        context_size: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        rope: nn.Module | None = None,
        key_bias: bool | None = None,
    ):
        """`key_bias=False` with `qkv_bias=True` gives BEiT-style attention (CAE): learned q and v biases, none on k
        (a key bias only shifts every score of a softmax row equally). Default: the key follows `qkv_bias`."""
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = attention_dropout
        self.is_causal = False
        context_size = context_size or hidden_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(context_size, hidden_size, bias=qkv_bias if key_bias is None else key_bias)
        self.v_proj = nn.Linear(context_size, hidden_size, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=proj_bias)
        self.rope = rope
        # "sdpa" runs `matmul_attention` at most this many keys (see `attention_function`); 0: never (the default)
        self.matmul_max_kv_tokens = 0
        # Self-attention computes q, k and v in one matmul with the three weights stacked (`_fused_qkv`); opt-in per
        # model, as the original CAE's single qkv Linear. The parameters stay three Linears (checkpoints unchanged).
        self.fuse_qkv = False

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).transpose(1, 2)

    def _can_fuse_qkv(self) -> bool:
        # only plain Linears without hooks: an adapter (e.g. PEFT's LoRA) or a hook on q/k/v must see its call
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return self.fuse_qkv and all(
            type(p) is nn.Linear and not (p._forward_hooks or p._forward_pre_hooks) for p in projections
        )

    def _fused_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of self-attention from one matmul against the stacked weights (and biases, zeros for an absent
        one): one larger GEMM each way instead of three small ones. In CAE v1's CPU step the three projections and
        their backward were 414 matmul calls against the original's 270 (its one qkv Linear), 225 ms against 188 ms."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = None
        if any(p.bias is not None for p in projections):
            bias = torch.cat(
                [p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections]
            )
        return nn.functional.linear(hidden_states, weight, bias).chunk(3, dim=-1)

    def attention_function(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> Callable:
        """The kernel for these (B, H, n, d) inputs: eager when attention probabilities are asked for, else the
        config's `_attn_implementation`, except that "sdpa" runs `matmul_attention` where that is faster (see
        `MATMUL_ATTENTION_MAX_HEAD_DIM`): at most `matmul_max_kv_tokens` keys, heads at most 32 wide, float32 on
        CPU, gradients needed, no mask, no dropout, not while compiling. The two compute the same attention; their
        results differ only by float32 rounding."""
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if (
            implementation == "sdpa"
            and key.shape[-2] <= self.matmul_max_kv_tokens
            and query.shape[-1] <= MATMUL_ATTENTION_MAX_HEAD_DIM
            and query.device.type == "cpu"
            and query.dtype == torch.float32
            and attention_mask is None
            and not (self.training and self.attention_dropout)
            and torch.is_grad_enabled()
            and (query.requires_grad or key.requires_grad or value.requires_grad)
            and not torch.compiler.is_compiling()
        ):
            return matmul_attention
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)

    def forward(
        self,
        hidden_states: torch.Tensor,
        coords: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_coords: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention of `hidden_states` (B, n, D), or cross-attention to `context` (B, m, context_size): keys and
        values both project the context. Returns ((B, n, D), attention probabilities when asked)."""
        if context is None and self._can_fuse_qkv():
            query, key, value = map(self._heads, self._fused_qkv(hidden_states))
            return self._attend(query, key, value, coords, coords, attention_mask, output_attentions)
        if context is None:
            context, context_coords = hidden_states, coords
        return self.attend(hidden_states, context, context, coords, context_coords, attention_mask, output_attentions)

    def attend(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        coords: torch.Tensor | None = None,
        key_coords: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention whose query, key and value projections each read their own input: (B, n, D) queries and
        (B, m, context_size) key and value inputs. `forward`'s cross-attention passes the context as both; CAE's
        regressor gives keys and values their own LayerNorms and adds positions to the keys only. The same kernels as
        `forward` (`attention_function`); rotary `coords` / `key_coords` when the layer has a `rope`."""
        query = self._heads(self.q_proj(query_states))
        key = self._heads(self.k_proj(key_states))
        value = self._heads(self.v_proj(value_states))
        return self._attend(query, key, value, coords, key_coords, attention_mask, output_attentions)

    def _attend(self, query, key, value, coords, key_coords, attention_mask, output_attentions):
        """Rotary positions on the (B, H, n, d) heads, the kernel `attention_function` picks, the output projection."""
        if self.rope is not None:
            if coords is None or key_coords is None:
                raise ValueError(
                    "This attention layer uses rotary positions: pass `coords` and the keys' coordinates."
                )
            query = self.rope(query, coords.unsqueeze(1))
            key = self.rope(key, key_coords.unsqueeze(1))
        attention_interface = self.attention_function(query, key, value, attention_mask, output_attentions)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        output = self.o_proj(output.reshape(*output.shape[:-2], -1))  # (B, n, H, d) -> (B, n, D)
        return output, (weights if output_attentions else None)
