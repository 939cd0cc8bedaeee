"""LARS (You et al. 2017) as VICReg / VICRegL / Barlow Twins train ResNets with it.

Why not `timm.optim.Lars`: its exclusions match (a group with weight decay 0 is neither decayed nor adapted), but its
trust ratio is `eta * ||w|| / (||g|| + wd * ||w|| + eps)`, while VICRegL's is `eta * ||w|| / ||g + wd * w||`; the two
differ whenever weight decay is on, so training would not follow the original step for step.

Per parameter p with gradient g, in a group with `weight_decay` wd, `momentum` m, `eta` and `lars_adaptation`:
    u = g + wd * p                                  (skipped when wd == 0)
    u = u * eta * ||p|| / ||u||                     (when lars_adaptation and both norms > 0; else u unchanged)
    mu = m * mu + u;  p = p - lr * mu               (mu starts at 0)
"""

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 1e-3,
                 lars_adaptation: bool = True):  # fmt: skip
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(
                f"Invalid LARS settings: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, eta={eta}"
            )
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars_adaptation=lars_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"] != 0:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(
                        param_norm > 0, torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one), one
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
