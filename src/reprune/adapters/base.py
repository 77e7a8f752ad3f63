"""Model adapters: each names a family's blocks, depth-2 modules and projections (as SliceGPT's do).

Everything downstream (calibration, criteria, reconstruction, surgery) works on these descriptions
only, so a new architecture is one adapter file.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reprune.remote_code.modeling_reprune import EXPERT_BIAS, expert_bias, set_attributes

ModuleKind = Literal["attention", "ffn"]


@dataclass
class Projection:
    """One weight matrix, seen as ``nn.Linear`` stores it: weight (out, in) and an optional bias.

    GPT-2's ``Conv1D`` keeps the transpose; this class hides the difference.
    """

    parent: nn.Module
    name: str

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.name)

    @property
    def is_conv1d(self) -> bool:
        return isinstance(self.module, Conv1D)

    def weight(self) -> torch.Tensor:
        w = self.module.weight
        return w.T if self.is_conv1d else w

    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    @property
    def out_features(self) -> int:
        return self.weight().shape[0]

    @property
    def in_features(self) -> int:
        return self.weight().shape[1]

    @property
    def key(self) -> Any:
        """Identifies the stored matrix: the fused parts of one projection share it."""
        return id(self.module)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def as_target(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight as (in, out) and bias (or None), float64: this layer as a regression target."""
        bias = self.bias()
        return self.weight().detach().T.to(torch.float64), None if bias is None else bias.detach().to(torch.float64)

    def replace(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Swap in a module of the new shape (weight given as (out, in)), same type, dtype and device."""
        old = self.module
        dtype, device = old.weight.dtype, old.weight.device
        out_features, in_features = weight.shape
        if self.is_conv1d:
            new: nn.Module = Conv1D(out_features, in_features)
            new.weight.data = weight.T.contiguous().to(dtype=dtype, device=device)
            new.bias.data = (bias if bias is not None else torch.zeros(out_features)).to(dtype=dtype, device=device)
        else:
            new = nn.Linear(in_features, out_features, bias=bias is not None, device=device, dtype=dtype)
            new.weight.data = weight.contiguous().to(dtype=dtype, device=device)
            if bias is not None:
                new.bias.data = bias.to(dtype=dtype, device=device)
        new.requires_grad_(False)
        setattr(self.parent, self.name, new)


@dataclass
class ExpertProjection(Projection):
    """Expert ``expert``'s matrix in the 3-D parameter ``parent.<name>`` of shape (experts, out, in)
    (``transposed``: (experts, in, out), used as ``x @ W``, GPT-OSS): a mixture keeps all its experts in one
    tensor. Its bias is row ``expert`` of ``parent.<bias_name>`` (experts, out), if the layer has one; level 2
    of a mixture without one names :data:`EXPERT_BIAS`, created when a reconstruction adds a bias.

    ``module`` is the experts module, so hooks see the routing it is called with. :meth:`replace` keeps the
    shape (a re-fit); :func:`reprune.surgery.shrink_experts` narrows all experts of a layer at once.
    """

    expert: int = 0
    bias_name: str | None = None
    transposed: bool = False

    @property
    def module(self) -> nn.Module:
        return self.parent

    @property
    def is_conv1d(self) -> bool:
        return False

    @property
    def key(self) -> Any:
        return (id(self.parent), self.name, self.expert)

    def parameter(self) -> nn.Parameter:
        return getattr(self.parent, self.name)

    def weight(self) -> torch.Tensor:
        weight = self.parameter()[self.expert]
        return weight.T if self.transposed else weight

    def stored(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """Per-expert (out, in) weights as the 3-D parameter stores them."""
        return torch.stack([w.T if self.transposed else w for w in weights])

    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.parent, self.bias_name, None) if self.bias_name else None
        return None if bias is None else bias[self.expert]

    def num_parameters(self) -> int:
        bias = self.bias()
        return self.weight().numel() + (0 if bias is None else bias.numel())

    def replace(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Write this expert's weight (out, in) and bias in place: a mixture's experts share one width."""
        param = self.parameter()
        if tuple(weight.shape) != tuple(self.weight().shape):
            raise ValueError(f"{self.name}[{self.expert}] is {tuple(self.weight().shape)}, cannot take "
                             f"{tuple(weight.shape)}: narrow a mixture's experts together with "
                             "reprune.surgery.shrink_experts")
        param.data[self.expert] = self.stored([weight])[0].to(param.dtype)
        if bias is not None:
            if self.bias_name is None:
                raise ValueError(f"{self.name} of {type(self.parent).__name__} has no bias to write")
            self.bias_tensor(torch.Size((param.shape[0], weight.shape[0]))).data[self.expert] = bias.to(param.dtype)

    def bias_tensor(self, shape: torch.Size) -> nn.Parameter:
        """The (experts, out) bias parameter, created (zero, with its forward hook) if it is reprune's own."""
        if self.bias_name == EXPERT_BIAS:
            return expert_bias(self.parent, shape)
        existing = getattr(self.parent, self.bias_name or "", None)
        if existing is None:
            raise ValueError(f"{type(self.parent).__name__} has no bias parameter {self.bias_name!r} for {self.name}")
        return existing


@dataclass
class Level1Part:
    """A slice of a level-1 projection's output rows that feeds the module's inner channels.

    Channel ``c`` of unit (or KV head) ``u`` is row ``offset + u * stride + c``. ``offset`` is non-zero
    inside fused projections laid out in sections (GPT-2's and Phi-3's [q|k|v], Phi-3's [gate|up]);
    ``stride`` (None: the unit width, contiguous units) is larger where units interleave (GPT-NeoX's
    per-head [q|k|v] rows: stride 3 * head_dim). ``per_kv_head`` marks key/value rows, laid out per KV head
    rather than per query head (GQA). ``keeps_removed_rows`` marks rows that also feed a statistic over every
    unit (OLMo-2's q/k RMSNorm spans all heads): surgery keeps a removed unit's rows, moved behind the kept
    units' rows (the units are the first rows), and the adapter's :meth:`ModelAdapter.remove_heads` makes the
    module use only those; such a part must be its projection's only part.
    """

    projection: Projection
    offset: int = 0
    per_kv_head: bool = False
    stride: int | None = None
    keeps_removed_rows: bool = False


@dataclass
class Depth2Module:
    """One prunable module of a block: level-1 rows and level-2 input columns share inner channels.

    Units are query heads (``unit_width = head_dim``) or FFN neurons (``unit_width = 1``). ``moe`` describes a
    mixture-of-experts FFN (its experts, pruned one by one to a common width; see :class:`Experts`).
    """

    kind: ModuleKind
    block: int
    parent: nn.Module
    level1: list[Level1Part]
    level2: Projection
    num_units: int
    unit_width: int
    num_kv_heads: int = 0
    gated: bool = False
    moe: Experts | None = None

    @property
    def name(self) -> str:
        return f"block {self.block} {self.kind}"

    @property
    def heads_per_kv(self) -> int:
        return self.num_units // self.num_kv_heads if self.num_kv_heads else 1

    def unit_channels(self, units: torch.Tensor | list[int]) -> torch.Tensor:
        """Level-2 input columns (inner channels) of the given units, in order."""
        units_t = torch.as_tensor(units, dtype=torch.long)
        offsets = torch.arange(self.unit_width)
        return (units_t[:, None] * self.unit_width + offsets[None, :]).reshape(-1)

    def part_rows(self, part: Level1Part, groups: torch.Tensor | list[int]) -> torch.Tensor:
        """Output rows of ``part`` for the given units, or KV heads if ``part`` is per KV head, in order."""
        groups_t = torch.as_tensor(groups, dtype=torch.long)
        stride = self.unit_width if part.stride is None else part.stride
        offsets = torch.arange(self.unit_width)
        return (part.offset + groups_t[:, None] * stride + offsets[None, :]).reshape(-1)

    def level1_rows(self, part: Level1Part, units: torch.Tensor | list[int]) -> torch.Tensor:
        """Output rows of ``part`` that belong to the given query heads / neurons (KV rows deduplicated)."""
        units_t = torch.as_tensor(units, dtype=torch.long)
        if part.per_kv_head:
            units_t = torch.unique(units_t // self.heads_per_kv)
        return self.part_rows(part, units_t)

    def surgery_rows(self, part: Level1Part, units: torch.Tensor | list[int]) -> torch.Tensor:
        """The rows of ``part``'s projection that surgery keeps for the given units, in their new order: the
        units' rows, then (``keeps_removed_rows``) every other row of the projection, in its current order."""
        rows = self.level1_rows(part, torch.as_tensor(units, dtype=torch.long).sort().values)
        if not part.keeps_removed_rows:
            return rows
        rest = torch.ones(part.projection.out_features, dtype=torch.bool)
        rest[rows] = False
        return torch.cat([rows, torch.nonzero(rest).reshape(-1)])


@dataclass
class Experts:
    """The experts of a mixture-of-experts FFN, each a :class:`Depth2Module` of :class:`ExpertProjection` s.

    ``module`` is called as ``module(hidden (T, d), top_k_index (T, k), top_k_weights (T, k))``: a forward
    pre-hook reads which tokens each expert gets and their gate values. ``level2_input(expert, rows)`` is
    what the expert's level 2 multiplies for those token rows, before the gate value scales it. The router
    is not described: pruning leaves it alone. All experts have one width (one tensor), kept in
    multiples of ``width_step`` (grouped_mm needs rows of a multiple of 16 bytes) and of ``multiple_of``.
    """

    module: nn.Module
    experts: list[Depth2Module]
    level2_input: Callable[[Depth2Module, torch.Tensor], torch.Tensor]
    width_step: int = 1


@dataclass(frozen=True)
class LayerShape:
    """One block's attention and FFN sizes, as they are now (the report's and the checkpoint's view)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


class ModelAdapter(ABC):
    """How reprune sees one architecture family: its blocks, their depth-2 modules and projections.

    To add a family, write one new file in ``src/reprune/adapters/`` with a subclass; it registers itself
    for its ``model_types`` and the contract tests (tests/test_contract.py) pick it up. A subclass sets:

    Required
      - ``model_types``: the ``config.model_type`` values it serves.
      - :meth:`blocks`, :meth:`modules_of`, :meth:`attention_attributes`.
    Optional (defaults in brackets)
      - ``causal`` [True]: False for encoders (bidirectional attention, no generation).
      - ``ffn_config_key`` [""]: config key of the FFN width, so a uniform FFN-only pruning saves as
        plain transformers; override :meth:`plain_config_updates` when heads can be stated too.
      - :meth:`attention_residual`, :meth:`ffn_residual`, :meth:`after_attention`, :meth:`post_branch`
        [None]: pre-norm shortcuts that let calibration propagate a block without running it again. They
        must be exact: return None where branches run in parallel (Cohere, GPT-NeoX) or something other
        than a module follows a branch (Granite's multiplier); :meth:`post_branch` covers post-norms.
      - :meth:`remove_heads` [sets :meth:`attention_attributes`]: extend it for per-head parameters outside
        the projections (per-head q/k norms, a shared relative position bias).
      - :meth:`bias_config_updates`, :meth:`materialise_bias_partners` [nothing]: for configs whose bias
        flags cover several projections (LLaMA's ``attention_bias``/``mlp_bias``).
      - ``tiny_config`` [{}]: per model type, the config keys a tiny random model of it needs beyond
        hidden size 32, 4 heads (2 KV heads), FFN 48 and 2 blocks (e.g. ``head_dim``), for the contract tests.

    Helpers for :meth:`modules_of`: :func:`qkv_attention`, :func:`plain_ffn`, :func:`gated_ffn`,
    :func:`gated_experts` / :func:`mixture` (a mixture of experts: the pipeline opens no residual tail for
    it, the block runs again past it); fused
    projections are several :class:`Level1Part` of one :class:`Projection` (``offset``, ``stride``); rows
    that also feed a statistic over all units (a norm over all heads) set ``keeps_removed_rows``.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    causal: ClassVar[bool] = True
    ffn_config_key: ClassVar[str] = ""
    tiny_config: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.model_types:
            raise TypeError(f"{cls.__name__} must name the config.model_type values it serves in model_types")
        for model_type in cls.model_types:
            if model_type in ADAPTER_CLASSES:
                raise TypeError(f"model_type {model_type!r} is claimed by both "
                                f"{ADAPTER_CLASSES[model_type].__name__} and {cls.__name__}")
            ADAPTER_CLASSES[model_type] = cls

    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The model's transformer blocks, in order."""

    @abstractmethod
    def modules_of(self, block: nn.Module, block_index: int) -> list[Depth2Module]:
        """The attention and FFN modules of ``block`` (a block of this model, or a copy of one), in that order."""

    @abstractmethod
    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        """Attributes of the attention module that its forward reads and that change with the head count
        (``config.<key>``: a key of the module's own view of the config, see ``LayerConfig``)."""

    def depth2_modules(self, block_index: int) -> list[Depth2Module]:
        """The modules of the model's block ``block_index`` in forward order (attention first)."""
        return self.modules_of(self.blocks()[block_index], block_index)

    def layer_shapes(self) -> list[LayerShape]:
        """Per block: query heads, KV heads, head size and FFN width, as they are now."""
        shapes = []
        for index in range(len(self.blocks())):
            attention, ffn = self.depth2_modules(index)
            shapes.append(LayerShape(attention.num_units, attention.num_kv_heads, attention.unit_width, ffn.num_units))
        return shapes

    def ffn_residual(self, block: nn.Module) -> nn.Module | None:
        """The module whose input is the residual stream that the FFN output is added to as the block's
        last step (a pre-norm block's FFN norm), or None when something follows that addition (post-norm).

        Lets the pipeline propagate a block whose FFN it just pruned from what the FFN's statistics pass
        saw (residual + new level 2 of the level-2 input) instead of running the whole block again.
        """
        return None

    def attention_residual(self, block: nn.Module) -> nn.Module | None:
        """The module whose input is the residual stream the attention output is added to (a pre-norm
        block's input norm, whose input is the block's input), or None for post-norm blocks.

        With :meth:`after_attention`, lets the pipeline feed a block's FFN from what the attention's
        statistics pass saw (residual + new level 2 of the level-2 input) instead of running attention again.
        """
        return None

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module | None:
        """What the block applies to the ``kind`` branch's output before adding it to the residual stream
        (Gemma 2/3's post-norms), or None; the shortcuts apply it too."""
        return None

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output given the residual stream after its attention: ``hidden + ffn(norm(hidden))``.

        Needed only by adapters whose :meth:`attention_residual` is not None.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot run a block from its post-attention stream")

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """Update the attention module after surgery kept ``kept_heads`` (query) and ``kept_kv_heads``: its
        head-count attributes; a family with per-head parameters outside the projections (per-head norms,
        a shared position bias) extends this and calls it."""
        counts = self.attention_attributes(len(kept_heads), len(kept_kv_heads), module.unit_width)
        set_attributes(module.parent, counts)

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        """Config keys that describe a uniformly pruned model to plain transformers, or None if impossible.

        By default only the FFN width can be stated: the head size is hidden_size / num_heads, so any
        head pruning needs the manifest.
        """
        first = shapes[0]
        if any(shape != first for shape in shapes) or not self.ffn_config_key:
            return None
        if first.num_heads * first.head_dim != self.model.config.hidden_size:
            return None
        return {self.ffn_config_key: first.intermediate_size}

    def bias_config_updates(self) -> dict[str, Any]:
        """Config keys that make plain transformers build the biases that reconstruction added."""
        return {}

    def materialise_bias_partners(self, module: Depth2Module) -> None:
        """Give sibling projections zero biases when the config's bias flag covers them too (LLaMA)."""


# config.model_type -> adapter class, filled by ModelAdapter.__init_subclass__
ADAPTER_CLASSES: dict[str, type[ModelAdapter]] = {}


def qkv_attention(parent: nn.Module, names: tuple[str, str, str], level2: Projection, block_index: int,
                  head_dim: int) -> Depth2Module:
    """Attention with separate q/k/v projections (KV heads read off the k projection's width)."""
    q, k, v = names
    return Depth2Module(
        kind="attention",
        block=block_index,
        parent=parent,
        level1=[
            Level1Part(Projection(parent, q)),
            Level1Part(Projection(parent, k), per_kv_head=True),
            Level1Part(Projection(parent, v), per_kv_head=True),
        ],
        level2=level2,
        num_units=getattr(parent, q).out_features // head_dim,
        unit_width=head_dim,
        num_kv_heads=getattr(parent, k).out_features // head_dim,
    )


def plain_ffn(parent: nn.Module, level1: Projection, level2: Projection, block_index: int) -> Depth2Module:
    """FFN ``level2(act(level1(x)))``: one neuron per level-1 row."""
    return Depth2Module(kind="ffn", block=block_index, parent=parent, level1=[Level1Part(level1)], level2=level2,
                        num_units=level2.in_features, unit_width=1)


def gated_ffn(parent: nn.Module, names: tuple[str, str, str], block_index: int) -> Depth2Module:
    """Gated FFN ``down(act(gate(x)) * up(x))`` with separate gate/up/down projections of ``parent``."""
    gate, up, down = names
    return Depth2Module(kind="ffn", block=block_index, parent=parent,
                        level1=[Level1Part(Projection(parent, gate)), Level1Part(Projection(parent, up))],
                        level2=Projection(parent, down), num_units=getattr(parent, down).in_features, unit_width=1,
                        gated=True)


def gated_experts(parent: nn.Module, experts: nn.Module, names: tuple[str, str], block_index: int,
                  bias_names: tuple[str | None, str | None] = (None, EXPERT_BIAS)) -> Depth2Module:
    """A mixture's FFN whose experts compute ``down_e(act(gate_e(x)) * up_e(x))`` from 3-D parameters
    ``gate_up`` (experts, [gate|up], d) and ``down`` (experts, d, width) of ``experts`` (Mixtral, Qwen3-MoE)."""
    gate_up, down = names
    width = getattr(experts, down).shape[2]
    members = [Depth2Module(kind="ffn", block=block_index, parent=experts,
                            level1=[Level1Part(ExpertProjection(experts, gate_up, e, bias_names[0])),
                                    Level1Part(ExpertProjection(experts, gate_up, e, bias_names[0]), offset=width)],
                            level2=ExpertProjection(experts, down, e, bias_names[1]), num_units=width,
                            unit_width=1, gated=True) for e in range(getattr(experts, down).shape[0])]

    def level2_input(expert: Depth2Module, rows: torch.Tensor) -> torch.Tensor:
        gate, up = nn.functional.linear(rows, expert.level1[0].projection.weight()).chunk(2, dim=-1)
        return experts.act_fn(gate) * up

    return mixture(parent, Experts(experts, members, level2_input, grouped_mm_step(getattr(experts, down))))


def grouped_mm_step(parameter: torch.Tensor) -> int:
    """Neurons per step of an experts' width: grouped_mm needs each row to be a multiple of 16 bytes."""
    return max(1, 16 // parameter.element_size())


def mixture(parent: nn.Module, moe: Experts) -> Depth2Module:
    """The FFN module of a mixture: its own ``level1``/``level2`` are expert 0's (every expert has their
    shapes); ``moe`` holds all experts."""
    first = moe.experts[0]
    return Depth2Module(kind="ffn", block=first.block, parent=parent, level1=first.level1, level2=first.level2,
                        num_units=first.num_units, unit_width=1, gated=True, moe=moe)


def _output_attentions(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: ask for the attention probabilities, whether the flag came positionally or not."""
    position = list(inspect.signature(module.forward).parameters).index("output_attentions")
    if position < len(args):
        return args[:position] + (True,) + args[position + 1 :], kwargs
    return args, {**kwargs, "output_attentions": True}


def expose_attention_probabilities(attention: nn.Module, config: Any) -> None:
    """Let calibration read the probabilities of an attention module outside transformers' attention
    interface (MPNet, DeBERTa-v2): it gets the config that calibration switches to eager, and always
    returns its probabilities (computed anyway) as the second output, as head-similarity needs."""
    if not hasattr(attention, "config"):
        attention.config = config
    if _output_attentions not in attention._forward_pre_hooks.values():
        attention.register_forward_pre_hook(_output_attentions, with_kwargs=True)


def block_output(output: Any) -> torch.Tensor:
    """Blocks return a tensor (transformers 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output
