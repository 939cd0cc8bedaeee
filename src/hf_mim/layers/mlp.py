"""The feed-forward block of every ViT here."""

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
