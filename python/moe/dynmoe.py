"""DynMoE from a Python training loop: TopAnyMoE and apply_expert_updates with a torch optimizer.

The C++ updates carry a C++ optimizer's state; a torch.optim optimizer lives in Python, so its state
is moved here, the same way: in resize mode the rows of the surviving experts keep their moments
and an added expert starts from zeros; in pool mode an expert re-initialised by
new_expert_init="reinit" gets zeroed moments.
"""
from typing import List, Optional

import torch

from . import _C
from .layers import RoutedLayer


class TopAnyMoE(RoutedLayer):
    """Top-any gating with a self-tuning set of experts (Guo et al. 2024). Options: initial_experts,
    storage ("pool" or "resize"), schedule ("manual", "every_step", ("window", record, period),
    ("epoch_fraction", forwards_per_epoch, begin, end)), new_expert_init ("keep" or "reinit"),
    temperature, fallback, the loss switches, and the expert options.

    Loop: out = layer(x); (loss + out.aux_loss).backward(); opt.step();
          moe.apply_expert_updates(model, opt)   # required in resize mode
    """

    def __init__(self, d_model: int, max_experts: int, **options):
        super().__init__(_C.TopAnyMoE(d_model, max_experts, options))
        self._reinit = options.get("new_expert_init", "keep") == "reinit"

    def begin_recording(self) -> None:
        self._cpp.begin_recording()

    def finish_recording(self) -> "_C.RoutingRecords":
        return self._cpp.finish_recording()

    def resume_recording(self, records: "_C.RoutingRecords") -> None:
        self._cpp.resume_recording(records)

    @property
    def recording(self) -> bool:
        return self._cpp.recording()

    def records(self) -> "_C.RoutingRecords":
        return self._cpp.records()

    @property
    def update_pending(self) -> bool:
        return self._cpp.update_pending()

    @property
    def num_experts(self) -> int:
        return self._cpp.num_experts()

    @property
    def num_active_experts(self) -> int:
        return self._cpp.num_active_experts()

    @property
    def forward_count(self) -> int:
        return self._cpp.forward_count()

    def update_experts(self, records: "_C.RoutingRecords",
                       optimizer: Optional[torch.optim.Optimizer] = None) -> "_C.ExpertUpdate":
        """Removes the active experts that records saw no token for, then adds at most one."""
        return self._updating(lambda: self._cpp.update_experts(records), optimizer)

    def apply_pending_update(self, optimizer: Optional[torch.optim.Optimizer] = None):
        """Applies the update a schedule has made due (None without one)."""
        if not self._cpp.update_pending():
            return None
        return self._updating(self._cpp.apply_pending_update, optimizer)

    def resize_experts(self, n: int) -> None:
        """Resize mode: n experts from now on (e.g. before loading a state_dict of n experts)."""
        self._cpp.resize_experts(n)
        self._sync()

    def _updating(self, update, optimizer):
        experts_before = self._cpp.num_experts()
        result = update()
        self._sync()
        if optimizer is not None and result.changed():
            # The tensors with a row per expert (the ones an update resizes or re-initialises).
            resize = self._cpp.resize_mode()
            # Resize mode resizes the experts' and the router's rows; a re-initialisation in pool
            # mode renews the expert's weights only (DynamicExpertSet::reinit_expert).
            per_expert = [p for name, p in self.named_parameters()
                          if name.startswith("experts.") or (resize and name in _ROUTER_ROWS)]
            _move_optimizer_state(optimizer, per_expert, experts_before, result, resize,
                                  self._reinit)
        return result


_ROUTER_ROWS = ("router.weight", "router.threshold")


def _move_optimizer_state(optimizer, per_expert, experts_before, update, resize, reinit):
    removed = set(update.removed)
    keep = [e for e in range(experts_before) if e not in removed]
    for p in per_expert:
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, value in list(state.items()):
            if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != experts_before:
                continue  # a step count, or not a per-entry moment
            if resize:  # the survivors' rows in their order, then zeros for an added expert
                rows = value.index_select(0, torch.tensor(keep, dtype=torch.long, device=value.device))
                extra = p.shape[0] - rows.shape[0]
                if extra > 0:
                    rows = torch.cat([rows, rows.new_zeros((extra,) + tuple(rows.shape[1:]))])
                state[key] = rows
            elif reinit and update.added >= 0:
                with torch.no_grad():
                    value[update.added].zero_()


def apply_expert_updates(model: torch.nn.Module,
                         optimizer: Optional[torch.optim.Optimizer] = None) -> List:
    """Applies the pending update of every TopAnyMoE in model (call after optimizer.step()) and
    returns the updates applied, in module order."""
    updates = []
    for module in model.modules():
        if isinstance(module, TopAnyMoE):
            update = module.apply_pending_update(optimizer)
            if update is not None:
                updates.append(update)
    return updates
