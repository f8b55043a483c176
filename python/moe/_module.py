"""CppModule: a torch.nn.Module whose parameters, buffers and children are those of a C++ module."""
import copy as copylib
from typing import NamedTuple

import torch

from . import _C


class MoEOutput(NamedTuple):
    """What a routed layer returns: the output (same shape as the input), the auxiliary loss (0-dim,
    already weighted; add it to the task loss), the routing statistics (moe._C.RoutingStats: tensors
    and the methods cv_importance(), dropped_fraction(), ...) and the routing (expert_index and gate,
    [tokens, K], -1 for an unused choice)."""
    output: torch.Tensor
    aux_loss: torch.Tensor
    stats: "_C.RoutingStats"
    routing: "_C.Routing"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class CppModule(torch.nn.Module):
    """A torch.nn.Module over a moe._C module (a C++ torch::nn::Module).

    The C++ tensors are put into _parameters and _buffers as they are (the same tensor objects, a
    parameter's class set to torch.nn.Parameter), so any torch optimizer updates the C++ layer, and
    gradients computed by the C++ autograd functions land in their .grad. Children are wrapped the
    same way, so state_dict() has the C++ names ("router.weight", "experts.w1", ...).
    """

    def __init__(self, handle):
        super().__init__()
        object.__setattr__(self, "_cpp", handle)
        self._sync()

    @property
    def cpp(self):
        """The C++ module (moe._C)."""
        return self._cpp

    def _sync(self):
        """Mirrors the C++ module's tensors and children again (after they were replaced: a DynMoE
        resize, a checkpoint load, a dtype change)."""
        self._parameters.clear()
        for name, tensor in self._cpp.local_parameters():
            if type(tensor) is not torch.nn.Parameter:
                # The same tensor object becomes a Parameter; torch.nn.Parameter(t) would make a
                # new tensor that the C++ module never sees.
                tensor.__class__ = torch.nn.Parameter
            self._parameters[name] = tensor
        self._buffers.clear()
        for name, tensor in self._cpp.local_buffers():
            self._buffers[name] = tensor
        children = self._cpp.children()
        names = {name for name, _ in children}
        for name in [n for n, m in self._modules.items()
                     if n not in names and isinstance(m, CppModule)]:
            del self._modules[name]
        for name, child in children:
            old = self._modules.get(name)
            if old is not None and not isinstance(old, CppModule):
                continue  # a Python module put under this name replaces the C++ one
            if isinstance(old, CppModule) and old._cpp.is_same(child):
                old._sync()
            else:
                self._modules[name] = CppModule(child)

    def train(self, mode: bool = True):
        self._cpp.train(mode)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # A conversion (to, float, double, bfloat16, cuda, cpu) goes to the C++ module, which
        # keeps a routed layer's router in float32 for bfloat16 experts (docs/reliability.md);
        # anything else (share_memory, ...) acts on the tensors as torch.nn.Module does.
        current = _C_DTYPES[self._cpp.value_dtype()]
        device = next(iter(self.parameters()), torch.empty(0)).device
        probe = fn(torch.zeros((), dtype=current, device=device))
        if probe.dtype == current and probe.device == device:
            return super()._apply(fn)  # every torch version's _apply(fn) recurses
        self._cpp.to(str(probe.device), _dtype_name(probe.dtype))
        self._sync()
        for module in self._modules.values():  # Python modules a subclass added
            if not isinstance(module, CppModule):
                module._apply(fn)
        return self

    def __deepcopy__(self, memo):
        copy = type(self).__new__(type(self))
        memo[id(self)] = copy
        torch.nn.Module.__init__(copy)
        for key, value in self.__dict__.items():  # hooks, flags, a subclass's attributes
            if key not in ("_parameters", "_buffers", "_modules", "_cpp"):
                copy.__dict__[key] = copylib.deepcopy(value, memo)
        object.__setattr__(copy, "_cpp", self._cpp.clone())
        for name, module in self._modules.items():  # Python modules hiding C++ children
            if not isinstance(module, CppModule):
                copy._modules[name] = copylib.deepcopy(module, memo)
        copy._sync()
        copy.train(self.training)
        return copy

    def extra_repr(self) -> str:
        return repr(self._cpp)

    def _get_name(self):
        return type(self).__name__ if type(self) is not CppModule else self._cpp.type_name()


# c10 names of the dtypes (ScalarType's toString) for value_dtype().
_C_DTYPES = {"Float": torch.float32, "Double": torch.float64, "BFloat16": torch.bfloat16,
             "Half": torch.float16}
