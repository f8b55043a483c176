"""moe: Mixture-of-Experts layers on LibTorch, from PyTorch (docs/python.md).

Every layer is a torch.nn.Module over the library's C++ module: its parameters are the C++ tensors
themselves (ordinary torch.nn.Parameter objects), autograd flows through the C++ engine, and
state_dict() uses the C++ parameter names, so that moe.io reads and writes the files C++ programs
and `moe train` use.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401
from ._module import CppModule, MoEOutput
from .layers import GShardMoE, HierarchicalMoE, HyperRouterMoE, SparseMoE
from .dynmoe import TopAnyMoE, apply_expert_updates
from .multitask import MMoE, PLE, MultiTaskOutput, SharedBottom
from . import io  # noqa: F401
from . import compat  # noqa: F401

__all__ = [
    "CppModule", "MoEOutput", "SparseMoE", "HierarchicalMoE", "HyperRouterMoE", "GShardMoE",
    "TopAnyMoE", "apply_expert_updates", "MMoE", "PLE", "SharedBottom", "MultiTaskOutput",
    "io", "compat",
]
