"""Calibration engine: capture the inputs of block 0, then run one block at a time.

Only the current block is on the compute device; the calibration activations of the pruned path (and,
for two-path methods, the dense path) are the only other thing kept. Statistics are gathered with
forward hooks into running float64 sums (:mod:`reprune.stats`), never by storing all rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reprune.adapters import Depth2Module, ModelAdapter, block_output
from reprune.stats import CrossMoments, Moments, ModuleStats


class _StopForward(Exception):
    """Raised from a hook once everything needed was captured, to skip the rest of the forward."""


@dataclass
class Activations:
    """Per-batch hidden states entering a block, with the keyword arguments the model passed to it."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    def clone(self) -> Activations:
        return Activations([h.clone() for h in self.hidden], self.kwargs)


def _params_outside(model: nn.Module, blocks: nn.ModuleList) -> list[nn.Module]:
    """Modules that are not inside the blocks (embeddings, final norm, rotary tables, heads)."""
    inside = {id(m) for m in blocks.modules()}
    return [m for m in model.modules() if id(m) not in inside]


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move only the non-block parameters and buffers, so a large model's blocks can stay on the CPU."""
    for module in _params_outside(model, blocks):
        for name, param in list(module.named_parameters(recurse=False)):
            param.data = param.data.to(device)
        for name, buf in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buf.to(device)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> Activations:
    """Run the model's embedding part over the calibration samples and keep block 0's inputs."""
    blocks = adapter.blocks()
    move_outside_blocks(model, blocks, device)
    captured = Activations([], [])

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: _to_device(v, device) for k, v in kwargs.items()})
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            try:
                model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


@torch.inference_mode()
def run_block(block: nn.Module, acts: Activations) -> Activations:
    """Propagate activations through one block."""
    outputs = [block_output(block(h, **kw)) for h, kw in zip(acts.hidden, acts.kwargs)]
    return Activations(outputs, acts.kwargs)


@torch.inference_mode()
def _capture(block: nn.Module, module: Depth2Module, hidden: torch.Tensor, kwargs: dict,
             want_level1: bool, extra_hooks: list[tuple[nn.Module, Callable]] | None = None) -> dict[str, Any]:
    """One forward of ``block`` stopping at the module's level-2 layer; returns its inputs."""
    found: dict[str, Any] = {}

    def level1_hook(_m: nn.Module, args: tuple) -> None:
        found.setdefault("level1_in", args[0].detach())

    def level2_hook(_m: nn.Module, args: tuple) -> None:
        found["level2_in"] = args[0].detach()
        raise _StopForward

    handles = [module.level2.module.register_forward_pre_hook(level2_hook)]
    if want_level1:
        handles.append(module.level1[0].projection.module.register_forward_pre_hook(level1_hook))
    for target, hook in extra_hooks or []:
        handles.append(target.register_forward_hook(lambda m, a, o, hook=hook: hook(found, o)))
    try:
        block(hidden, **kwargs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if "level2_in" not in found:
        raise RuntimeError(f"{module.name}: the level-2 layer was never called; the adapter does not match the model")
    return found


def collect_module_stats(
    block: nn.Module,
    module: Depth2Module,
    pruned: Activations,
    needs: frozenset[str],
    dense_block: nn.Module | None = None,
    dense_module: Depth2Module | None = None,
    dense: Activations | None = None,
    extra: Callable[[ModuleStats, dict, dict | None], None] | None = None,
    extra_hooks: Callable[[nn.Module, Depth2Module], list] | None = None,
) -> ModuleStats:
    """Accumulate the statistics ``needs`` asks for over all calibration batches.

    Names in ``needs``: ``level1_in``, ``level2_cross``, ``level1_cross`` (the last two need the dense
    path). ``extra``/``extra_hooks`` let a method capture more (e.g. attention probabilities).
    """
    two_path = bool({"level2_cross", "level1_cross"} & needs)
    if two_path and (dense_block is None or dense is None or dense_module is None):
        raise RuntimeError(f"{module.name}: a two-path statistic was requested without the dense path")
    stats = ModuleStats()
    want_level1 = bool({"level1_in", "level1_cross"} & needs)
    if "level1_in" in needs or "level1_cross" in needs:
        stats.level1_in = Moments()
    if "level2_cross" in needs:
        stats.level2_cross = CrossMoments(pruned=stats.level2_in)
    if "level1_cross" in needs:
        stats.level1_cross = CrossMoments(pruned=stats.level1_in)
    for i, (hidden, kwargs) in enumerate(zip(pruned.hidden, pruned.kwargs)):
        hooks = extra_hooks(block, module) if extra_hooks else None
        got = _capture(block, module, hidden, kwargs, want_level1, hooks)
        dense_got = None
        if two_path:
            dense_hooks = extra_hooks(dense_block, dense_module) if extra_hooks else None
            dense_got = _capture(dense_block, dense_module, dense.hidden[i], dense.kwargs[i], want_level1, dense_hooks)
        if stats.level2_cross is not None:
            stats.level2_cross.update(got["level2_in"], dense_got["level2_in"])
        else:
            stats.level2_in.update(got["level2_in"])
        if stats.level1_cross is not None:
            stats.level1_cross.update(got["level1_in"], dense_got["level1_in"])
        elif stats.level1_in is not None:
            stats.level1_in.update(got["level1_in"])
        if extra is not None:
            extra(stats, got, dense_got)
    return stats
