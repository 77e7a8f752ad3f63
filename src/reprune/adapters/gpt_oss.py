"""GPT-OSS: LLaMA-named attention with a learned sink logit per head, and a mixture of experts whose
3-D parameters are used as ``x @ W`` with biases, gate and up interleaved.

Experts: ``gate_up = x @ gate_up_proj[e] + gate_up_proj_bias[e]`` (experts, d, 2 width), gate = even
columns, up = odd; ``out = (act(gate, up) @ down_proj[e] + down_proj_bias[e]) * gate value``. The native
``down_proj_bias`` is scaled by the gate value, so it is left out of level 2 (pruning does not change it);
a reconstruction's bias goes to reprune's routed bias like Mixtral's.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import (EXPERT_BIAS, Depth2Module, ExpertProjection, Experts, Level1Part, grouped_mm_step,
                                   mixture)
from reprune.adapters.mixtral import MixtralAdapter


class GptOssAdapter(MixtralAdapter):
    """``model.layers[i].self_attn`` (+ ``sinks``) and ``mlp.experts`` (``mlp.router`` untouched)."""

    model_types = ("gpt_oss",)
    tiny_config = {"gpt_oss": {"head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 2,
                               "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}}

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        experts = layer.mlp.experts
        width = experts.down_proj.shape[1]

        def member(e: int) -> Depth2Module:
            gate_up = ExpertProjection(experts, "gate_up_proj", e, "gate_up_proj_bias", transposed=True)
            return Depth2Module(kind="ffn", block=block_index, parent=experts,
                                level1=[Level1Part(gate_up, stride=2), Level1Part(gate_up, offset=1, stride=2)],
                                level2=ExpertProjection(experts, "down_proj", e, EXPERT_BIAS, transposed=True),
                                num_units=width, unit_width=1, gated=True)

        def level2_input(expert: Depth2Module, rows: torch.Tensor) -> torch.Tensor:
            gate_up = expert.level1[0].projection
            return experts._apply_gate(nn.functional.linear(rows, gate_up.weight(), gate_up.bias()))

        return mixture(layer.mlp, Experts(experts, [member(e) for e in range(experts.num_experts)], level2_input,
                                          grouped_mm_step(experts.down_proj)))

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.post_attention_layernorm(hidden))[0]  # the MLP also returns router scores

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        super().remove_heads(module, kept_heads, kept_kv_heads)
        sinks = module.parent.sinks
        module.parent.sinks = nn.Parameter(sinks.detach()[kept_heads.to(sinks.device)].clone(), requires_grad=False)
