"""Calibration engine: capture the inputs of block 0, then run one block at a time.

Only the current block is on the compute device; the calibration activations of the pruned path (and,
for two-path methods, the dense path) are the only other thing kept. Statistics are gathered with
forward hooks into running float64 sums (:mod:`reprune.stats`), never by storing all rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from reprune.adapters import Depth2Module, Experts, ModelAdapter, ModuleKind, block_output
from reprune.stats import TWO_PATH_STATISTICS, CrossMoments, Moments, ModuleStats, head_divergence_sum


class _StopForward(Exception):
    """Raised from a hook once everything needed was captured, to skip the rest of the forward."""


@dataclass
class Activations:
    """Per-batch hidden states entering a block, with the keyword arguments the model passed to it.

    Models whose layers take their own positional inputs (sliding and full attention layers with their own
    masks or rotary tables, ``config.layer_types``) keep each type's arguments in ``layer_kwargs``;
    :meth:`at_block` picks the ones of a block.
    """

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    layer_types: tuple[str, ...] = ()  # per block, when the model has more than one layer type
    layer_kwargs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per layer type, per batch

    def with_hidden(self, hidden: list[torch.Tensor]) -> Activations:
        """The same block arguments with other hidden states (a block's or a branch's outputs)."""
        return replace(self, hidden=hidden)

    def clone(self) -> Activations:
        return self.with_hidden([h.clone() for h in self.hidden])

    def first(self, samples: int) -> Activations:
        """The leading whole batches that hold at least ``samples`` rows (all of them if fewer)."""
        taken, rows = 0, 0
        while taken < len(self.hidden) and rows < samples:
            rows += self.hidden[taken].shape[0]
            taken += 1
        return replace(self, hidden=self.hidden[:taken], kwargs=self.kwargs[:taken],
                       layer_kwargs={name: batches[:taken] for name, batches in self.layer_kwargs.items()})

    def at_block(self, index: int) -> Activations:
        """These hidden states with the arguments block ``index`` receives from the model."""
        if not self.layer_types:
            return self
        return replace(self, kwargs=self.layer_kwargs[self.layer_types[index]])


def layer_types(model: nn.Module) -> tuple[str, ...]:
    """``config.layer_types`` when the model's layers are of several types (each with its own mask or
    rotary table), else ()."""
    types = tuple(getattr(model.config.get_text_config(), "layer_types", None) or ())
    return types if len(set(types)) > 1 else ()


@dataclass
class ResidualTail:
    """Per batch, the residual stream a pre-norm branch (attention or FFN) adds its output to, and the
    branch's level-2 input.

    Kept by the module's statistics pass (see :meth:`ModelAdapter.attention_residual` and
    :meth:`ModelAdapter.ffn_residual`) so that, once the module is pruned, the stream after the branch is
    ``residual + post_branch(level2(level-2 input[..., kept]))``: the branch is not run again. Costs the
    memory of the level-2 inputs of the calibration set.
    """

    locate_residual: Callable[[], nn.Module]  # read afresh at each pass: a recovery may replace that module
    post_branch: nn.Module | None = None  # applied to the branch output before the add (Gemma 2/3's post-norms)
    residual: list[torch.Tensor] = field(default_factory=list)
    level2_in: list[torch.Tensor] = field(default_factory=list)

    @property
    def residual_module(self) -> nn.Module:
        return self.locate_residual()

    def reset(self) -> None:
        self.residual.clear()
        self.level2_in.clear()

    @torch.inference_mode()
    def outputs(self, level2: nn.Module, kept: torch.Tensor | None, inputs: Activations) -> Activations:
        """The stream after the branch: ``level2`` is the (pruned) projection, ``kept`` its input columns
        (None: all); ``inputs`` are the branch's inputs, whose shapes and block arguments are kept."""
        hidden = []
        for residual, level2_in, block_in in zip(self.residual, self.level2_in, inputs.hidden):
            x = level2_in if kept is None else level2_in[..., kept.to(level2_in.device)]
            branch = level2(x) if self.post_branch is None else self.post_branch(level2(x))
            hidden.append((residual + branch).reshape(block_in.shape))
        return inputs.with_hidden(hidden)


class AfterAttention:
    """The part of a pre-norm block after its attention, called like the block on the post-attention
    stream (the block's other arguments are ignored): statistics and propagation of its FFN without
    running attention again."""

    def __init__(self, adapter: ModelAdapter, block: nn.Module) -> None:
        self.adapter, self.block = adapter, block

    def __call__(self, hidden: torch.Tensor, **_block_kwargs: Any) -> torch.Tensor:
        return self.adapter.after_attention(self.block, hidden)


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


@contextmanager
def on_device(block: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``block`` on ``device`` for the duration, then back where its parameters were (one block at a time)."""
    home = next(block.parameters()).device
    block.to(device)
    try:
        yield block
    finally:
        block.to(home)


@contextmanager
def attention_implementation(config: Any, implementation: str | None) -> Iterator[None]:
    """Temporarily set a transformers config's attention implementation (``None``: leave it alone).

    Attention modules and mask builders read ``config._attn_implementation`` at every call, so this
    switches a loaded model (e.g. to ``"eager"``, the only one returning attention probabilities).
    """
    if implementation is None:
        yield
        return
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    attn_implementation: str | None = None,
) -> Activations:
    """Run the model's embedding part over the calibration samples and keep block 0's inputs.

    For a model with several layer types the forward goes on to the first block of each type, whose
    arguments are kept too (those blocks visit the device meanwhile).
    ``attn_implementation="eager"`` makes the model build explicit additive attention masks, which
    both eager and SDPA attention accept; SDPA alone may pass no mask (implicitly causal), which
    eager attention would read as "attend everywhere".
    """
    blocks = adapter.blocks()
    move_outside_blocks(model, blocks, device)
    types = layer_types(model)
    first_of_type = {kind: types.index(kind) for kind in dict.fromkeys(types)}
    last = max(first_of_type.values(), default=0)
    captured = Activations([], [], types, {kind: [] for kind in first_of_type})
    # GPT-2 and BERT pass the attention mask positionally: keep positional arguments by name
    names = list(inspect.signature(blocks[0].forward).parameters)

    def grabber(index: int) -> Callable[[nn.Module, tuple, dict], None]:
        def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            named = {**dict(zip(names, args)), **kwargs}
            hidden = named.pop(names[0]) if args else named.pop("hidden_states")
            named = {k: _to_device(v, device) for k, v in named.items()}
            if index == 0:
                captured.hidden.append(hidden.detach())
                captured.kwargs.append(named)
            for kind, first in first_of_type.items():
                if first == index:
                    captured.layer_kwargs[kind].append(named)
            if index == last:
                raise _StopForward

        return grab

    handles = [blocks[i].register_forward_pre_hook(grabber(i), with_kwargs=True) for i in {0, last}
               | set(first_of_type.values())]
    homes = [next(blocks[i].parameters()).device for i in range(last)]
    try:
        for i in range(last):
            blocks[i].to(device)
        with attention_implementation(model.config, attn_implementation):
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start : start + batch_size].to(device)
                try:
                    model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
        for i, home in enumerate(homes):
            blocks[i].to(home)
    return captured


@torch.inference_mode()
def run_block(block: nn.Module | AfterAttention, acts: Activations) -> Activations:
    """Propagate activations through one block."""
    outputs = [block_output(block(h, **kw)) for h, kw in zip(acts.hidden, acts.kwargs)]
    return acts.with_hidden(outputs)


def _attention_probabilities(module: Depth2Module, output: Any) -> torch.Tensor:
    """Attention modules return (attn_output, attn_weights); the weights are probabilities under eager."""
    if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
        raise RuntimeError(f"{module.name}: the attention module returned no attention probabilities; "
                           "it must follow transformers' attention interface and run eagerly")
    return output[1].detach()


def _hook_module_inputs(module: Depth2Module, seen: dict[str, torch.Tensor], want_level1: bool,
                        want_attention: bool, after_capture: Callable[[], None] = lambda: None
                        ) -> list[RemovableHandle]:
    """Hooks that store the module's level-2 input (``level2_in``), optionally its first level-1 input
    (``level1_in``) and the attention probabilities (``attention_probs``) in ``seen``; ``after_capture``
    runs after each level-2 or attention capture (to stop the forward early)."""

    def level2_hook(_m: nn.Module, args: tuple) -> None:
        seen["level2_in"] = args[0].detach()
        after_capture()

    def level1_hook(_m: nn.Module, args: tuple) -> None:
        seen.setdefault("level1_in", args[0].detach())

    def attention_hook(_m: nn.Module, _args: tuple, output: Any) -> None:
        seen["attention_probs"] = _attention_probabilities(module, output)
        after_capture()

    handles = [module.level2.module.register_forward_pre_hook(level2_hook)]
    if want_level1:
        handles.append(module.level1[0].projection.module.register_forward_pre_hook(level1_hook))
    if want_attention:  # parent may contain level 2 (LLaMA o_proj) or precede it (BERT)
        handles.append(module.parent.register_forward_hook(attention_hook))
    return handles


class _DivergenceMean:
    """Running mean of the (H, H) head-divergence matrix; each batch's probabilities are reduced at once."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.rows = 0

    def add(self, probs: torch.Tensor) -> None:
        self.total = self.total + head_divergence_sum(probs)
        self.rows += probs.shape[0] * probs.shape[2]

    def mean(self) -> torch.Tensor:
        return self.total / self.rows


@torch.inference_mode()
def _capture(block: nn.Module | AfterAttention, module: Depth2Module, hidden: torch.Tensor, kwargs: dict,
             want_level1: bool, want_attention: bool = False, residual_module: nn.Module | None = None
             ) -> dict[str, Any]:
    """One forward of ``block`` stopping once the module's level-2 input (and, with ``want_attention``,
    the attention module's probabilities, ``attention_probs``) were seen; returns them, with the input
    of ``residual_module`` as ``residual`` when one is given."""
    found: dict[str, Any] = {}
    wanted = {"level2_in", "attention_probs"} if want_attention else {"level2_in"}

    def stop_when_done() -> None:
        if wanted <= found.keys():
            raise _StopForward

    def residual_hook(_m: nn.Module, args: tuple) -> None:
        found["residual"] = args[0].detach()

    handles = _hook_module_inputs(module, found, want_level1, want_attention, stop_when_done)
    if residual_module is not None:
        handles.append(residual_module.register_forward_pre_hook(residual_hook))
    try:
        block(hidden, **kwargs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if residual_module is not None:
        wanted = wanted | {"residual"}
    if not wanted <= found.keys():
        raise RuntimeError(f"{module.name}: {sorted(wanted - found.keys())} never captured; "
                           "the adapter does not match the model")
    return found


class CalibrationPath:
    """One path of calibration activations (the pruned model's, or the dense model's) through the model,
    one block at a time: the activations entering the current stage, what runs that stage, and the
    residual tail of the module being pruned.

    A stage is the whole block until a pre-norm attention is pruned; then the rest of the block
    (:class:`AfterAttention`) runs on the post-attention stream rebuilt from that attention's tail. A
    pruned pre-norm FFN's tail gives the block's output directly. Either way no branch runs twice.
    """

    def __init__(self, adapter: ModelAdapter, acts: Activations, shortcuts: bool = True) -> None:
        self.adapter, self.acts, self.shortcuts = adapter, acts, shortcuts
        self.block: nn.Module | None = None
        self.index = -1
        self.runner: nn.Module | AfterAttention | None = None
        self.tail: ResidualTail | None = None
        self.output: Activations | None = None

    def enter(self, block: nn.Module, index: int) -> None:
        """Start block ``index``; ``block`` is this path's copy of it (on the compute device)."""
        self.block, self.index, self.runner, self.output = block, index, block, None
        self.acts = self.acts.at_block(index)

    def module(self, kind: ModuleKind) -> Depth2Module:
        """This path's ``kind`` module of the current block, read afresh (surgery replaces projections)."""
        return self.adapter.modules_of(self.block, self.index)[0 if kind == "attention" else 1]

    def open_tail(self, kind: ModuleKind) -> None:
        """Before the ``kind`` module's statistics: keep its residual stream if the block allows a shortcut."""
        residual_of = self.adapter.attention_residual if kind == "attention" else self.adapter.ffn_residual
        block = self.block
        if not self.shortcuts or residual_of(block) is None:
            self.tail = None
            return
        self.tail = ResidualTail(lambda: residual_of(block), self.adapter.post_branch(block, kind))

    def close_tail(self, kind: ModuleKind, kept: torch.Tensor | None) -> None:
        """After the ``kind`` module was pruned (``kept``: its kept level-2 input channels, None: unchanged),
        move the path past the branch from the tail a statistics pass filled; otherwise leave it be."""
        tail, self.tail = self.tail, None
        if tail is None or not tail.level2_in:
            return
        after = tail.outputs(self.module(kind).level2.module, kept, self.acts)
        if kind == "attention":
            self.runner, self.acts = AfterAttention(self.adapter, self.block), after
        else:  # the FFN is the block's last step
            self.output = after

    def leave(self) -> None:
        """Finish the block: its outputs become the next block's inputs."""
        self.acts = self.output if self.output is not None else run_block(self.runner, self.acts)
        self.block = self.runner = self.tail = self.output = None


@dataclass
class RowSet:
    """A set of calibration rows carried through the model block by block: its pruned path and, where a
    method reads the dense model's activations on these rows, its dense path."""

    pruned: CalibrationPath
    dense: CalibrationPath | None = None

    @property
    def paths(self) -> list[CalibrationPath]:
        return [self.pruned] if self.dense is None else [self.pruned, self.dense]

    def dense_module(self, kind: ModuleKind) -> Depth2Module | None:
        """The dense path's ``kind`` module of the current block (None without a dense path)."""
        return None if self.dense is None else self.dense.module(kind)

    def stats(self, module: Depth2Module, needs: frozenset[str]) -> ModuleStats:
        """One pass over these rows gathering ``needs`` for ``module`` (see :func:`collect_module_stats`)."""
        return collect_module_stats(module, needs, self.pruned, self.dense)


def _empty_stats(needs: frozenset[str]) -> ModuleStats:
    """The moments that ``needs`` asks for, before any row; cross moments share the pruned path's, and
    ``level2_folds`` makes the level-2 input's moments keep their folds too."""
    stats = ModuleStats(level2_in=Moments.folded() if "level2_folds" in needs else Moments())
    if {"level1_in", "level1_cross"} & needs:
        stats.level1_in = Moments()
    if "level2_cross" in needs:
        stats.level2_cross = CrossMoments(pruned=stats.level2_in)
    if "level1_cross" in needs:
        stats.level1_cross = CrossMoments(pruned=stats.level1_in)
    return stats


Routing = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # hidden (T, d), top-k expert indices and gate values (T, k)


def _routing_hook(moe: Experts, seen: dict[str, Routing], stop: bool) -> RemovableHandle:
    """A pre-hook keeping the experts module's inputs in ``seen["routing"]`` (then stopping the forward)."""

    def hook(_m: nn.Module, args: tuple) -> None:
        seen["routing"] = tuple(a.detach() for a in args[:3])
        if stop:
            raise _StopForward

    return moe.module.register_forward_pre_hook(hook)


def _routed_rows(moe: Experts, expert: int, routing: Routing, tokens: tuple[torch.Tensor, torch.Tensor],
                 want_level1: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expert ``expert``'s level-2 input on the routed ``tokens`` (token, top-k slot) of ``routing``, each row
    scaled by the token's gate value (the expert's share of the output: level 2 is linear), and with
    ``want_level1`` its input rows, unscaled (level 1 sees them so, and a fitted intercept stays exact)."""
    hidden, _, gates = routing
    token, slot = tokens
    rows = hidden[token]
    level2 = moe.level2_input(moe.experts[expert], rows) * gates[token, slot, None].to(hidden.dtype)
    return level2, rows if want_level1 else None


def update_expert_stats(moe: Experts, stats: dict[int, ModuleStats], routing: Routing,
                        dense_moe: Experts | None = None, dense_routing: Routing | None = None) -> None:
    """Add one batch to the statistics of each expert in ``stats`` (index -> its statistics), over the
    tokens the pruned path routes to it. Level-2 rows are scaled by the gate value, so an expert's
    calibration error is its part of the layer's output error.
    Two-path moments pair them with the dense path's expert on the same tokens and gate values."""
    for expert, expert_stats in stats.items():
        tokens = torch.where(routing[1] == expert)
        want_level1 = expert_stats.level1_in is not None
        level2, level1 = _routed_rows(moe, expert, routing, tokens, want_level1)
        if dense_moe is not None:
            dense = (dense_routing[0], routing[1], routing[2])  # the dense path's inputs, the pruned routing
            dense_level2, dense_level1 = _routed_rows(dense_moe, expert, dense, tokens, want_level1)
        if expert_stats.level2_cross is not None:
            expert_stats.level2_cross.update(level2, dense_level2)
        else:
            expert_stats.level2_in.update(level2)
        if expert_stats.level1_cross is not None:
            expert_stats.level1_cross.update(level1, dense_level1)
        elif want_level1:
            expert_stats.level1_in.update(level1)


@torch.inference_mode()
def collect_expert_stats(module: Depth2Module, needs: frozenset[str], pruned: CalibrationPath,
                         dense: CalibrationPath | None = None, experts: list[int] | None = None) -> list[ModuleStats]:
    """Per expert of a mixture-of-experts FFN (``experts``: only these, in this order), the statistics
    ``needs`` asks for (as :func:`collect_module_stats`), over the tokens routed to it and weighted by their
    gate values (see :func:`update_expert_stats`). Each forward stops at the experts; a mixture keeps no
    residual tail."""
    two_path = bool(TWO_PATH_STATISTICS & needs)
    if two_path and dense is None:
        raise RuntimeError(f"{module.name}: a two-path statistic was requested without the dense path")
    dense_moe = dense.module(module.kind).moe if two_path else None
    chosen = range(len(module.moe.experts)) if experts is None else experts
    stats = {expert: _empty_stats(needs) for expert in chosen}
    for batch in range(len(pruned.acts.hidden)):
        routings = []
        for path, moe in [(pruned, module.moe)] + ([(dense, dense_moe)] if two_path else []):
            seen: dict[str, Routing] = {}
            handle = _routing_hook(moe, seen, stop=True)
            try:
                path.runner(path.acts.hidden[batch], **path.acts.kwargs[batch])
            except _StopForward:
                pass
            finally:
                handle.remove()
            if "routing" not in seen:
                raise RuntimeError(f"{module.name}: its experts were never called; "
                                   "the adapter does not match the model")
            routings.append(seen["routing"])
        update_expert_stats(module.moe, stats, routings[0], dense_moe, routings[1] if two_path else None)
    _check_routed(module, stats)
    return list(stats.values())


def _check_routed(module: Depth2Module, stats: dict[int, ModuleStats]) -> None:
    """An expert that no calibration token reaches has no statistics to score or reconstruct it from."""
    idle = [expert for expert, expert_stats in stats.items() if not expert_stats.level2_in.n]
    if idle:
        raise ValueError(f"{module.name}: no calibration token is routed to experts {idle}, so their neurons "
                         "cannot be scored or reconstructed; calibrate on more (or more varied) text")


def collect_module_stats(module: Depth2Module, needs: frozenset[str], pruned: CalibrationPath,
                         dense: CalibrationPath | None = None) -> ModuleStats:
    """Accumulate the statistics ``needs`` asks for over all calibration batches.

    Names in ``needs`` are those of :data:`reprune.stats.STATISTICS`; the two-path ones also run the
    ``dense`` path's copy of the module, and ``head_divergence`` runs the block with eager attention (its
    inputs must carry explicit masks: ``capture_block_inputs(..., attn_implementation="eager")``). Each
    path's open tail, if any, is emptied and then keeps this pass's residual stream and level-2 inputs
    (the dense one only when this pass runs the dense path).
    """
    if module.moe:
        raise ValueError(f"{module.name} is a mixture of experts: gather its statistics with collect_expert_stats")
    two_path = bool(TWO_PATH_STATISTICS & needs)
    if two_path and dense is None:
        raise RuntimeError(f"{module.name}: a two-path statistic was requested without the dense path")
    paths = [pruned, dense] if two_path else [pruned]
    modules = [module, dense.module(module.kind)] if two_path else [module]
    for path in paths:
        if path.tail is not None:
            path.tail.reset()
    stats = _empty_stats(needs)
    want_level1 = stats.level1_in is not None
    want_attention = "head_divergence" in needs
    if want_attention:
        _check_explicit_masks(module, pruned.acts)
    divergence = _DivergenceMean()
    for batch in range(len(pruned.acts.hidden)):
        got = []
        for path, path_module in zip(paths, modules):
            attention = want_attention and path is pruned
            with attention_implementation(module.parent.config, "eager") if attention else nullcontext():
                found = _capture(path.runner, path_module, path.acts.hidden[batch], path.acts.kwargs[batch],
                                 want_level1, attention, path.tail.residual_module if path.tail else None)
            if path.tail is not None:
                path.tail.residual.append(found["residual"])
                path.tail.level2_in.append(found["level2_in"])
            got.append(found)
        if want_attention:
            divergence.add(got[0].pop("attention_probs"))
        if stats.level2_cross is not None:
            stats.level2_cross.update(got[0]["level2_in"], got[1]["level2_in"])
        else:
            stats.level2_in.update(got[0]["level2_in"])
        if stats.level1_cross is not None:
            stats.level1_cross.update(got[0]["level1_in"], got[1]["level1_in"])
        elif stats.level1_in is not None:
            stats.level1_in.update(got[0]["level1_in"])
    if want_attention:
        stats.head_divergence = divergence.mean()
    return stats


@torch.inference_mode()
def collect_block_stats(block: nn.Module, modules: list[Depth2Module], needs: list[frozenset[str]],
                        acts: Activations) -> tuple[list[ModuleStats], Activations]:
    """Single-path statistics of several modules of one block and the block's outputs, from one forward
    per batch (the dense scoring pass of global allocation). ``needs`` per module, as for
    :func:`collect_module_stats` (no two-path names); without ``level2_in`` the level-2 input keeps
    per-channel moments only (``level2_diag``). A mixture's statistics are per expert (``experts``)."""
    def empty(wanted: frozenset[str]) -> ModuleStats:
        return ModuleStats(level2_in=Moments(diagonal_only="level2_in" not in wanted),
                           level1_in=Moments() if "level1_in" in wanted else None)

    stats = [ModuleStats(experts=[empty(wanted) for _ in module.moe.experts]) if module.moe else empty(wanted)
             for module, wanted in zip(modules, needs)]
    found: list[dict[str, torch.Tensor]] = [{} for _ in modules]
    handles: list[RemovableHandle] = []
    for module, wanted in zip(modules, needs):
        if "head_divergence" in wanted:
            _check_explicit_masks(module, acts)
    for module, wanted, seen in zip(modules, needs, found):
        if module.moe:
            handles.append(_routing_hook(module.moe, seen, stop=False))
        else:
            handles += _hook_module_inputs(module, seen, "level1_in" in wanted, "head_divergence" in wanted)
    attention = next((m.parent for m, wanted in zip(modules, needs) if "head_divergence" in wanted), None)
    divergences = [_DivergenceMean() for _ in modules]
    outputs = []
    try:
        for hidden, kwargs in zip(acts.hidden, acts.kwargs):
            for seen in found:
                seen.clear()
            with attention_implementation(attention.config, "eager") if attention is not None else nullcontext():
                outputs.append(block_output(block(hidden, **kwargs)))
            for i, (module, wanted, seen) in enumerate(zip(modules, needs, found)):
                if module.moe and "routing" in seen:
                    update_expert_stats(module.moe, dict(enumerate(stats[i].experts)), seen["routing"])
                    continue
                if "level2_in" not in seen:
                    raise RuntimeError(f"{module.name}: its level-2 input was never captured; "
                                       "the adapter does not match the model")
                stats[i].level2_in.update(seen["level2_in"])
                if stats[i].level1_in is not None:
                    stats[i].level1_in.update(seen["level1_in"])
                if "head_divergence" in wanted:
                    divergences[i].add(seen["attention_probs"])
    finally:
        for handle in handles:
            handle.remove()
    for i, (module, wanted) in enumerate(zip(modules, needs)):
        if "head_divergence" in wanted:
            stats[i].head_divergence = divergences[i].mean()
        if module.moe:
            _check_routed(module, dict(enumerate(stats[i].experts)))
    return stats, acts.with_hidden(outputs)


def _check_explicit_masks(module: Depth2Module, acts: Activations) -> None:
    """Eager attention is only causal through its mask: refuse inputs captured without one."""
    if getattr(module.parent, "is_causal", False) and any(kw.get("attention_mask") is None for kw in acts.kwargs):
        raise RuntimeError(
            f"{module.name}: attention probabilities need an explicit causal mask, but the block inputs were "
            "captured without one; capture them with capture_block_inputs(..., attn_implementation='eager')"
        )
