"""Drop-in replacements for lucidrains/mixture-of-experts (v0.2.3): MoE and HeirarchicalMoE.

    from moe.compat import MoE            # instead of: from mixture_of_experts import MoE
    moe = MoE(dim=512, num_experts=16)
    out, aux_loss = moe(inputs)           # inputs [b, n, dim]; aux_loss is a 0-dim tensor

The same constructor arguments and defaults, the same GShard top-2 gating (each sequence a group,
capacity ⌊n·cf/E⌋ but at least 4, first choices before second choices, the second-expert policies,
the balance loss computed in training and evaluation), N(0, 1) gating weights and experts
initialised as that package does; the gate and the experts run on the library's C++ engine
(GShardMoE). One difference, a fix: the two-level layer tells a group's first choice from its
second by the choice, not by its weight being > 0.5 (docs/python.md).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from . import _C
from ._module import CppModule

MIN_EXPERT_CAPACITY = 4  # the package's module constant (not a constructor argument)

_ACTIVATIONS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu"}


class Experts(nn.Module):
    """Experts in the package's layout, for activations the engine does not have and as the
    `experts` of one's own: w1 [*num_experts, dim, hidden], w2 [*num_experts, hidden, dim], no
    biases, U(±1/sqrt(last dim)); forward(x [*num_experts, rows, dim])."""

    def __init__(self, dim: int, num_experts=16, hidden_dim: Optional[int] = None,
                 activation=nn.GELU):
        super().__init__()
        hidden_dim = hidden_dim or dim * 4
        shape = tuple(num_experts) if isinstance(num_experts, (tuple, list)) else (num_experts,)
        self.w1 = nn.Parameter(_uniform_by_last_dim(torch.empty(*shape, dim, hidden_dim)))
        self.w2 = nn.Parameter(_uniform_by_last_dim(torch.empty(*shape, hidden_dim, dim)))
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.act(torch.matmul(x, self.w1)), self.w2)


def _uniform_by_last_dim(t: torch.Tensor) -> torch.Tensor:
    bound = t.shape[-1] ** -0.5
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class _GShardCompat(CppModule):
    def __init__(self, dim, experts: Sequence[int], hidden_dim, activation, second_policy_train,
                 second_policy_eval, second_threshold_train, second_threshold_eval,
                 capacity_factor_train, capacity_factor_eval, loss_coef, custom_experts):
        who = type(self).__name__
        for name, value in (("second_threshold_train", second_threshold_train),
                            ("second_threshold_eval", second_threshold_eval),
                            ("capacity_factor_train", capacity_factor_train),
                            ("capacity_factor_eval", capacity_factor_eval),
                            ("loss_coef", loss_coef)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{who}: {name} must be a number, got {value!r}")
        hidden_dim = hidden_dim or dim * 4
        engine_activation = _ACTIVATIONS.get(activation)
        python_experts = custom_experts is not None or engine_activation is None
        handle = _C.GShardMoE(dim, list(experts), dict(
            hidden_size=1 if python_experts else hidden_dim,
            activation=engine_activation or "relu",
            second_policy_train=second_policy_train, second_policy_eval=second_policy_eval,
            second_threshold_train=float(second_threshold_train),
            second_threshold_eval=float(second_threshold_eval),
            capacity_factor_train=float(capacity_factor_train),
            capacity_factor_eval=float(capacity_factor_eval),
            min_capacity=MIN_EXPERT_CAPACITY, loss_coef=float(loss_coef), router_init_std=1.0))
        super().__init__(handle)
        self._levels = list(experts)
        if python_experts:
            # A Python module under the name "experts" hides the engine's (CppModule._sync).
            self.experts = custom_experts if custom_experts is not None else Experts(
                dim, tuple(experts) if len(experts) > 1 else experts[0], hidden_dim, activation)
        else:
            w1, w2 = self._modules["experts"].w1, self._modules["experts"].w2
            _uniform_by_last_dim(w1.data)
            _uniform_by_last_dim(w2.data)

    def capacity(self, group_tokens: int, experts: int) -> int:
        """Places per expert for groups of group_tokens tokens in the current mode."""
        return self._cpp.capacity(group_tokens, experts)

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 3:
            raise ValueError(f"{type(self).__name__}: inputs must be [batch, sequence, dim], got "
                             f"shape {tuple(inputs.shape)}")
        if not isinstance(self.experts, CppModule):
            return self._forward_python_experts(inputs)
        out = self._cpp.forward(inputs)
        return out.output, out.aux_loss

    def _forward_python_experts(self, x):
        b, n, d = x.shape
        index, gate, aux_loss = self._cpp.route(x)
        T, K = index.shape
        E = math.prod(self._levels)
        # Capacity rows per expert, as the package lays them out: b·C (one level), b·C_inner.
        capacity = self._cpp.capacity(n, self._levels[0])
        if len(self._levels) == 2:
            capacity = self._cpp.capacity(capacity, self._levels[1])
        rows = b * capacity
        flat = index.reshape(-1)
        used = flat >= 0
        expert = flat[used]
        token = torch.arange(T, device=x.device).repeat_interleave(K)[used]
        weight = gate.reshape(-1)[used]
        expert, order = torch.sort(expert, stable=True)
        token, weight = token[order], weight[order]
        counts = torch.bincount(expert, minlength=E)
        rank = torch.arange(expert.numel(), device=x.device) - (counts.cumsum(0) - counts)[expert]
        tokens = x.reshape(T, d)
        buffer = tokens.new_zeros(E, rows, d).index_put((expert, rank), tokens[token])
        out = self.experts(buffer.view(*self._levels, rows, d)).reshape(E, rows, d)
        y = tokens.new_zeros(T, d).index_add(
            0, token, out[expert, rank] * weight.to(out.dtype).unsqueeze(1))
        return y.view(b, n, d), aux_loss


class MoE(_GShardCompat):
    """lucidrains' MoE: GShard top-2 gating over num_experts experts."""

    def __init__(self, dim: int, num_experts: int = 16, hidden_dim: Optional[int] = None,
                 activation=nn.ReLU, second_policy_train: str = "random",
                 second_policy_eval: str = "random", second_threshold_train: float = 0.2,
                 second_threshold_eval: float = 0.2, capacity_factor_train: float = 1.25,
                 capacity_factor_eval: float = 2.0, loss_coef: float = 1e-2,
                 experts: Optional[nn.Module] = None):
        super().__init__(dim, [num_experts], hidden_dim, activation, second_policy_train,
                         second_policy_eval, second_threshold_train, second_threshold_eval,
                         capacity_factor_train, capacity_factor_eval, loss_coef, experts)


class HeirarchicalMoE(_GShardCompat):
    """lucidrains' HeirarchicalMoE (the package's spelling): an outer GShard gate over
    num_experts[0] groups, an inner one over num_experts[1] experts in each."""

    def __init__(self, dim: int, num_experts: Tuple[int, int] = (4, 4),
                 hidden_dim: Optional[int] = None, activation=nn.ReLU,
                 second_policy_train: str = "random", second_policy_eval: str = "random",
                 second_threshold_train: float = 0.2, second_threshold_eval: float = 0.2,
                 capacity_factor_train: float = 1.25, capacity_factor_eval: float = 2.0,
                 loss_coef: float = 1e-2, experts: Optional[nn.Module] = None):
        if not isinstance(num_experts, (tuple, list)) or len(num_experts) != 2:
            raise ValueError("HeirarchicalMoE: num_experts must be (outer, inner), got "
                             f"{num_experts!r}")
        super().__init__(dim, list(num_experts), hidden_dim, activation, second_policy_train,
                         second_policy_eval, second_threshold_train, second_threshold_eval,
                         capacity_factor_train, capacity_factor_eval, loss_coef, experts)


HierarchicalMoE = HeirarchicalMoE  # the spelling of this library
