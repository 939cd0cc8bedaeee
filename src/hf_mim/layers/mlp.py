"""Feed-forward blocks."""

import torch
from torch import nn
from transformers.activations import ACT2FN


class Mlp(nn.Module):
    """fc1 -> activation -> fc2. `hidden_act="gelu"` is the exact (erf) GELU, as in every method here."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.activation = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: fc2(silu(w1 x) * w2 x), with the two input projections fused in `weights_in`."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = True):
        super().__init__()
        self.weights_in = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, value = self.weights_in(hidden_states).chunk(2, dim=-1)
        return self.fc2(nn.functional.silu(gate) * value)


def build_mlp(kind: str, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu", bias: bool = True):
    if kind == "mlp":
        return Mlp(hidden_size, intermediate_size, hidden_act, bias)
    if kind == "swiglu":
        return SwiGLU(hidden_size, intermediate_size, bias)
    raise ValueError(f"Unknown mlp type {kind!r}; expected 'mlp' or 'swiglu'.")
