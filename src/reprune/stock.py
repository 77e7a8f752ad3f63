"""Stock architectures: describe a pruned model by a transformers config alone, so that plain
``from_pretrained`` (no remote code) rebuilds it exactly.

Reconstruction may give a bias-less level-2 layer (o_proj, down_proj) a bias. Some configs cannot state
it (Qwen2's and Mistral's have no flag for it); some of those architectures are exactly another one whose
config can: a Qwen2, Mistral or Ministral block with full attention *is* a LLaMA block (so is Phi-3's with
whole-head default RoPE, once its fused projections are split), and LlamaConfig's
``attention_bias`` (q, k, v, o) and ``mlp_bias`` (gate, up, down) state the added biases (zero where the
original had none). :data:`REEXPRESSIONS` is the table of such exact rewrites; :func:`stock_form` finds a
model's stock description, in its own architecture or in one of those; :func:`resolve_intercepts` decides
``intercept="auto"``: a reconstruction fits a bias only where the saved model stays stock.

Families checked and left out of the table (no stock config states their added biases exactly):
Qwen3, Qwen3-MoE, OLMo, OLMo-2, HunYuan, Gemma 1-3, Cohere (q/k norms, (1 + w) norms, embedding scale,
clipped q/k/v or a parallel block: not a LLaMA block; their ``attention_bias`` covers o_proj, but no flag
covers down_proj); Granite (multipliers, though its config states both biases itself); Ministral3 (LLaMA-4
query scaling); Helium (interleaved RoPE is a q/k row permutation away from LLaMA's, but its RMSNorm rounds
in another order in half precision, and its o_proj width is fixed: head pruning needs the manifest);
StableLM (LayerNorms, no head size in its config); StarCoder2 (plain FFN; ``use_bias`` states all biases);
Mixtral, GPT-OSS (the experts' biases are reprune's own).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from reprune.adapters import Depth2Module, ModelAdapter, ModuleKind, get_adapter
from reprune.adapters.llama import LlamaAdapter
from reprune.config import Plan
from reprune.manifest import manifest_against

# LlamaConfig's fields that a LLaMA-shaped source config carries under the same names (the bias flags and
# pretraining_tp, which v5's LLaMA ignores, are not copied)
LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
              "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
              "rope_parameters", "attention_dropout", "dtype")


StateMap = Callable[[dict[str, torch.Tensor], transformers.PretrainedConfig], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Reexpression:
    """An exact rewrite of architecture ``source`` (a ``model_type``) as ``target_prefix``'s classes.

    ``inexact`` says why a given (pruned) config would not be exact (None: it is); ``config`` builds the
    target config from the source's, with bias flags read off the model's projections; ``state`` maps the
    model's state dict to the target's (the same tensors, renamed or sliced; by default unchanged).
    """

    source: str
    source_prefix: str  # class-name prefix of the source family (Qwen2ForCausalLM -> "Qwen2")
    target_prefix: str
    inexact: Callable[[transformers.PretrainedConfig], str | None]
    config: Callable[[transformers.PretrainedConfig, LlamaAdapter], transformers.PretrainedConfig]
    state: StateMap = lambda state, config: state  # noqa: E731  (the same names and tensors)

    def target_class(self, model: nn.Module) -> type[nn.Module] | None:
        name = type(model).__name__
        if not name.startswith(self.source_prefix):
            return None
        return getattr(transformers, self.target_prefix + name[len(self.source_prefix):], None)


def full_attention_in_context(config: transformers.PretrainedConfig) -> str | None:
    """Every layer sees the whole context: no sliding layers, or a window no shorter than the context."""
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"])
    if types <= {"full_attention"} or window is None or window >= config.max_position_embeddings:
        return None
    return (f"sliding window {window} < max_position_embeddings {config.max_position_embeddings} "
            "(LLaMA attends to the whole context)")


def as_llama(config: transformers.PretrainedConfig, adapter: LlamaAdapter) -> transformers.LlamaConfig:
    """The LLaMA config of a LLaMA-shaped model; a flag is on when any projection it covers has a bias."""
    values = {key: getattr(config, key) for key in LLAMA_KEYS if getattr(config, key, None) is not None}
    return transformers.LlamaConfig(**values, attention_bias=adapter.any_bias("attention"),
                                    mlp_bias=adapter.any_bias("ffn"))


def phi3_inexact(config: transformers.PretrainedConfig) -> str | None:
    """Phi-3 is LLaMA with fused projections when RoPE turns whole heads the default way (Phi-4-mini's partial
    rotary factor 0.75 leaves a quarter of each head unrotated; long-RoPE tables are left out, unchecked)."""
    rope = config.rope_parameters or {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0 or rope.get("rope_type", "default") != "default":
        return f"RoPE {rope} is not LLaMA's default over whole heads"
    return full_attention_in_context(config)


def split_phi3(state: dict[str, torch.Tensor], config: transformers.PretrainedConfig) -> dict[str, torch.Tensor]:
    """Phi-3's fused ``qkv_proj`` rows [q|k|v] and ``gate_up_proj`` rows [gate|up] as LLaMA's separate projections."""
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    split: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, parameter = key.rpartition(".")
        parent, _, name = module.rpartition(".")
        if name == "qkv_proj":
            parts = zip(("q_proj", "k_proj", "v_proj"), tensor.split([q_rows, kv_rows, kv_rows]))
        elif name == "gate_up_proj":
            parts = zip(("gate_proj", "up_proj"), tensor.chunk(2))
        else:
            split[key] = tensor
            continue
        split |= {f"{parent}.{part_name}.{parameter}": part for part_name, part in parts}
    return split


REEXPRESSIONS: dict[str, Reexpression] = {
    entry.source: entry for entry in (
        Reexpression("qwen2", "Qwen2", "Llama", full_attention_in_context, as_llama),
        Reexpression("mistral", "Mistral", "Llama", full_attention_in_context, as_llama),
        Reexpression("ministral", "Ministral", "Llama", full_attention_in_context, as_llama),
        Reexpression("phi3", "Phi3", "Llama", phi3_inexact, as_llama, split_phi3),
    )
}


@dataclass
class StockForm:
    """A model's description by a transformers config alone: ``config`` for class ``model_class``; a
    re-expression may need zero biases the model lacks (``zero_biases``: their state-dict keys), where one
    target flag covers projections with and without a bias (Qwen2's q/k/v have one, its o_proj not)."""

    config: transformers.PretrainedConfig
    model_class: type[nn.Module]
    reexpression: Reexpression | None = None  # None: the model's own architecture
    zero_biases: tuple[str, ...] = ()

    @property
    def reexpressed(self) -> bool:
        return self.reexpression is not None

    def model_to_save(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or a ``model_class`` instance sharing its tensors (built without allocating)."""
        if self.reexpression is None:
            return model
        with torch.device("meta"):
            target = self.model_class._from_config(self.config)
        state = self.reexpression.state(model.state_dict(), self.config)
        target_shapes = shapes(target.state_dict())
        for key in self.zero_biases:
            weight = state[key.removesuffix("bias") + "weight"]
            state[key] = torch.zeros(target_shapes[key], dtype=weight.dtype, device=weight.device)
        target.load_state_dict(state, strict=True, assign=True)
        target.tie_weights()
        if getattr(model, "generation_config", None) is not None:
            target.generation_config = copy.deepcopy(model.generation_config)
        return target.eval()


def stock_form(model: nn.Module) -> StockForm | None:
    """How plain transformers rebuilds ``model`` exactly: its own architecture if its config states every
    size and bias, else its exact re-expression (:data:`REEXPRESSIONS`) if that config does; else None."""
    adapter = get_adapter(model)
    sized = sized_config(model, adapter)
    if sized is None:
        return None
    own = validated(adapter.bias_config_updates(), sized)
    if own is not None and not manifest_against(model, own, adapter):
        return StockForm(own, type(model))
    return reexpressed_form(model, adapter, sized)


def sized_config(model: nn.Module, adapter: ModelAdapter) -> transformers.PretrainedConfig | None:
    """The model's config (without reprune's loader keys) with its pruned sizes, if the config can state them."""
    updates = adapter.plain_config_updates(adapter.layer_shapes())
    if updates is None:
        return None
    sized = bare_config(model.config)
    for key, value in updates.items():
        setattr(sized, key, value)
    return sized


def validated(values: dict[str, Any], like: transformers.PretrainedConfig) -> transformers.PretrainedConfig | None:
    """A copy of ``like`` with ``values`` set, or None if the config class rejects them (e.g. LlamaConfig insists
    that hidden_size is a multiple of the head count)."""
    config = copy.deepcopy(like)
    for key, value in values.items():
        setattr(config, key, value)
    try:
        config.validate()
    except Exception:  # noqa: BLE001  (any validation failure means: not expressible)
        return None
    return config


def reexpressed_form(model: nn.Module, adapter: ModelAdapter, sized: transformers.PretrainedConfig) -> StockForm | None:
    """The model as its family's exact re-expression, if there is one for this config and the target's
    parameters are the model's, plus zero biases at most."""
    entry = REEXPRESSIONS.get(sized.model_type)
    target_class = entry.target_class(model) if entry is not None else None
    if target_class is None or entry.inexact(sized) is not None:
        return None
    config = validated({"architectures": [target_class.__name__]}, entry.config(sized, adapter))
    if config is None:
        return None
    with torch.device("meta"):
        reference = shapes(target_class._from_config(config).state_dict())
    own = shapes(entry.state(model.state_dict(), config))
    zero_biases = tuple(sorted(reference.keys() - own.keys()))
    if any(own[key] != reference.get(key) for key in own) or not all(
            key.endswith(".bias") and key.removesuffix("bias") + "weight" in own for key in zero_biases):
        return None
    return StockForm(config, target_class, entry, zero_biases)


def bare_config(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """A copy of ``config`` without reprune's loader keys."""
    bare = copy.deepcopy(config)
    for key in ("reprune_manifest", "auto_map"):
        if hasattr(bare, key):
            delattr(bare, key)
    return bare


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def resolve_intercepts(plan: Plan, model: nn.Module) -> Plan:
    """``plan`` with ``intercept="auto"`` decided per pruned module kind: a reconstruction may add level-2
    biases to the kinds of the largest set (attention first) whose biases keep the model stock, or to every
    kind if the model is not stock to begin with. Probed on meta-device copies, through the same
    :func:`stock_form` that saving uses."""
    if plan.config.intercept != "auto":
        return plan
    chosen = set(plan.kinds)
    if stock_form(meta_copy(model)) is not None:
        subsets = [set(plan.kinds)] + [{kind} for kind in plan.kinds if len(plan.kinds) > 1] + [set()]
        chosen = next(kinds for kinds in subsets if not kinds or stock_form(with_level2_biases(model, kinds)))
    return dataclasses.replace(plan, intercepts={kind: kind in chosen for kind in plan.kinds})


def complete_level2_biases(model: nn.Module, plan: Plan) -> None:
    """Zero level-2 biases (with the partners the config's flag implies) for every module of the kinds
    ``intercept="auto"`` allowed one but reconstruction left without (e.g. attention that lost no head), if
    that makes the pruned model the stock one :func:`resolve_intercepts` probed; otherwise (per-layer sizes,
    say) the model is left as it was. A zero bias changes no output."""
    kinds = {kind for kind, allowed in plan.intercepts.items() if allowed}
    if plan.config.intercept != "auto" or not kinds or stock_form(model) is not None:
        return
    adapter = get_adapter(model)
    modules = [module for index in range(len(adapter.blocks())) for module in adapter.depth2_modules(index)
               if module.kind in kinds and module.moe is None and module.level2.bias() is None]
    originals = [(proj.parent, proj.name, proj.module) for module in modules
                 for proj in [module.level2] + [part.projection for part in module.level1]]
    for module in modules:
        give_level2_bias(adapter, module)
    if stock_form(model) is None:
        for parent, name, original in originals:
            setattr(parent, name, original)


def with_level2_biases(model: nn.Module, kinds: set[ModuleKind]) -> nn.Module:
    """A meta-device copy of ``model`` whose level-2 layers of the given kinds have biases, as reconstruction
    would leave them."""
    probe = meta_copy(model)
    adapter = get_adapter(probe)
    for index in range(len(adapter.blocks())):
        for module in adapter.depth2_modules(index):
            if module.kind in kinds:
                give_level2_bias(adapter, module)
    return probe


def meta_copy(model: nn.Module) -> nn.Module:
    """The model's architecture with its current config on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def give_level2_bias(adapter: ModelAdapter, module: Depth2Module) -> None:
    """What a reconstruction's bias does to ``module``: level 2 (every expert's, in a mixture) gets a bias,
    and its partners the zero biases the config's flag implies."""
    if module.moe is not None:
        level2 = module.moe.experts[0].level2
        if level2.bias_name is not None:
            level2.bias_tensor(torch.Size((len(module.moe.experts), level2.out_features)))
        return
    weight = module.level2.weight()
    if module.level2.bias() is None:
        module.level2.replace(weight, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    adapter.materialise_bias_partners(module)
