"""The multi-task models: MMoE (one_gate=True: OMoE), PLE (levels=1: CGC) and Shared-Bottom."""
from typing import List, NamedTuple

import torch

from . import _C
from ._module import CppModule


class MultiTaskOutput(NamedTuple):
    """One [T, task_output_dim] output per task (logits), the auxiliary loss (sparse gates'
    balance loss, else 0) and gate_mass[level][gate]: the mean gate weight per expert."""
    outputs: List[torch.Tensor]
    aux_loss: torch.Tensor
    gate_mass: List[List[torch.Tensor]]


class _MultiTask(CppModule):
    def forward(self, x: torch.Tensor) -> MultiTaskOutput:
        out = self._cpp.forward(x)
        return MultiTaskOutput(list(out.outputs), out.aux_loss, [list(g) for g in out.gate_mass])


class MMoE(_MultiTask):
    """Ma et al. 2018. Options: expert_hidden, tower_hidden, towers, task_output_dim, one_gate,
    gate={"top_k": ..., "bias": ..., "hidden": [...], "bias_init": ..., "balance_coef": ...}."""

    def __init__(self, d_in: int, num_experts: int, num_tasks: int, **options):
        super().__init__(_C.MMoE(d_in, num_experts, num_tasks, options))


class PLE(_MultiTask):
    """Tang et al. 2020. Options: levels, specific_experts, shared_experts, expert_hidden,
    tower_hidden, towers, task_output_dim, gate={...}."""

    def __init__(self, d_in: int, num_tasks: int, **options):
        super().__init__(_C.PLE(d_in, num_tasks, options))


class SharedBottom(_MultiTask):
    """The multi-task baseline. Options: bottom_hidden, tower_hidden, towers, task_output_dim."""

    def __init__(self, d_in: int, num_tasks: int, **options):
        super().__init__(_C.SharedBottom(d_in, num_tasks, options))
