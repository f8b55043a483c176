"""The routed layers: SparseMoE, HierarchicalMoE, HyperRouterMoE and GShardMoE (TopAnyMoE is in
moe.dynmoe). Options are keyword arguments with the names of the C++ options (docs/python.md lists
them); the defaults are the C++ defaults."""
import torch

from . import _C
from ._module import CppModule, MoEOutput


class RoutedLayer(CppModule):
    """A routed layer: forward(x [..., d_model]) -> MoEOutput(output, aux_loss, stats, routing)."""

    def forward(self, x: torch.Tensor) -> MoEOutput:
        out = self._cpp.forward(x)
        return MoEOutput(out.output, out.aux_loss, out.stats, out.routing)

    @property
    def top_k(self) -> int:
        return self._cpp.top_k()

    def set_top_k(self, k: int) -> None:
        """Changes k (1 <= k <= E) of a top-k router from now on."""
        self._cpp.set_top_k(k)

    @property
    def num_experts(self) -> int:
        return self._cpp.global_experts()

    def reset_parameters(self) -> None:
        self._cpp.reset_parameters()


class SparseMoE(RoutedLayer):
    """A router (router="softmax_topk", "noisy_topk", "switch", "smoe_dropout" or "hyper") and
    num_experts experts. Parameters: router.weight [E, d] (and router.noise_weight, router.bias),
    experts.w1 [E, d, h], experts.w2 [E, h, d] (and w3, b1, b2)."""

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(_C.SparseMoE(d_model, num_experts, options))


class HierarchicalMoE(RoutedLayer):
    """Shazeer et al.'s two-level noisy gate: groups × experts_per_group experts."""

    def __init__(self, d_model: int, groups: int, experts_per_group: int, **options):
        super().__init__(_C.HierarchicalMoE(d_model, groups, experts_per_group, options))


class HyperRouterMoE(RoutedLayer):
    """HyperRouter (router="hyper"), SMoE-Dropout (router="smoe_dropout") or its router trained
    (router="smoe"), with an optional k schedule k_schedule=(mode, k_min, k_max, total_steps)."""

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(_C.HyperRouterMoE(d_model, num_experts, options))

    def set_inference_top_k(self, k) -> None:
        """The k of evaluation forwards (None: the training k)."""
        self._cpp.set_inference_top_k(k)

    @property
    def step(self) -> int:
        return self._cpp.step()

    def set_step(self, step: int) -> None:
        self._cpp.set_step(step)


class GShardMoE(RoutedLayer):
    """GShard / Mesh-TF top-2 gating with group capacity and a second-expert policy, over experts=[E]
    or two levels experts=[E_outer, E_inner]. A [b, n, d] input is routed in groups of n tokens."""

    def __init__(self, d_model: int, experts, **options):
        experts = [experts] if isinstance(experts, int) else list(experts)
        super().__init__(_C.GShardMoE(d_model, experts, options))

    def route(self, x: torch.Tensor):
        """(expert_index [T, K], gate [T, K], aux_loss) without running the experts."""
        return self._cpp.route(x)

    def capacity(self, group_tokens: int, experts: int) -> int:
        """Places per expert for groups of group_tokens tokens in the current mode."""
        return self._cpp.capacity(group_tokens, experts)
