"""OLMo-2 head removal on tiny random models: reprune's exact removal (the removed heads' q/k rows stay for the
q/k norms' RMS) against deleting those rows too, as plain transformers could load it, with and without
rescaling the kept norm weights by the calibration mean of the RMS change.

    python -m benchmarks.olmo2_heads       # prints a Markdown table (seconds)

Errors are relative logit errors ``||logits - masked||/||masked||`` on held-out ids, where ``masked`` is the
dense model with the removed heads' ``o_proj`` columns zeroed (what removing them must equal).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

from reprune.adapters import Projection, get_adapter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_architectures import remove_heads, zero_heads  # noqa: E402
from tiny_models import calibration_batch, contract_model, model_output  # noqa: E402

CALIBRATION, HELD_OUT = calibration_batch(16, 32, seed=0), calibration_batch(16, 32, seed=1)
# (variant, config overrides, heads removed per block)
CASES = [
    ("GQA 4/2, one head per KV group", {}, {0: [0, 2], 1: [1, 3]}),
    ("GQA 4/2, a whole KV group", {}, {0: [0, 1], 1: [2, 3]}),
    ("MHA 8 heads, half removed", {"num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 4},
     {0: [0, 2, 5, 7], 1: [1, 3, 4, 6]}),
]


def rms_ratios(model: nn.Module, projection: str, widths: list[int]) -> list[float]:
    """Per block: calibration mean over tokens of RMS(first ``widths[block]`` channels) / RMS(all channels) of
    the block's attention ``projection``: the kept heads' share of the norm's statistic."""
    ratios: list[list[torch.Tensor]] = [[] for _ in widths]
    hooks = []
    for index, (layer, width) in enumerate(zip(get_adapter(model).blocks(), widths)):
        def keep(_module, _args, out, index=index, width=width):
            out = out.detach().double()
            ratios[index].append((out[..., :width].pow(2).mean(-1) / out.pow(2).mean(-1)).sqrt().reshape(-1))
        hooks.append(getattr(layer.self_attn, projection).register_forward_hook(keep))
    model_output(model, CALIBRATION)
    for hook in hooks:
        hook.remove()
    return [float(torch.cat(r).mean()) for r in ratios]


def delete_norm_rows(model: nn.Module, compensate: bool) -> None:
    """Turn reprune's exact removal into the stock-loadable one: q/k rows of removed heads deleted, the
    norms over the kept heads only (weights rescaled by the calibration mean RMS change if ``compensate``)."""
    layers = get_adapter(model).blocks()
    for name in ("q", "k"):
        widths = [getattr(layer.self_attn, f"{name}_norm").reprune_output_width for layer in layers]
        scales = rms_ratios(model, f"{name}_proj", widths) if compensate else [1.0] * len(widths)
        for layer, width, scale in zip(layers, widths, scales):
            attn, projection = layer.self_attn, Projection(layer.self_attn, f"{name}_proj")
            bias = projection.bias()
            projection.replace(projection.weight()[:width].detach(), None if bias is None else bias[:width].detach())
            old = getattr(attn, f"{name}_norm")
            norm = Olmo2RMSNorm(width, old.variance_epsilon)
            norm.weight = nn.Parameter(old.weight.detach()[:width] * scale, requires_grad=False)
            setattr(attn, f"{name}_norm", norm)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).norm() / reference.norm())


def main() -> None:
    print("| model | removed heads | masking vs dense | exact (reprune) | rows deleted | rows deleted, rescaled |")
    print("|---|---|---|---|---|---|")
    for label, overrides, removed in CASES:
        dense, masked = contract_model("olmo2", **overrides), contract_model("olmo2", **overrides)
        zero_heads(masked, removed)
        reference = model_output(masked, HELD_OUT)
        errors = []
        for variant in ("exact", "deleted", "rescaled"):
            model = contract_model("olmo2", **overrides)
            remove_heads(model, removed)
            if variant != "exact":
                delete_norm_rows(model, compensate=variant == "rescaled")
            errors.append(relative_error(model_output(model, HELD_OUT), reference))
        change = relative_error(model_output(dense, HELD_OUT), reference)
        print(f"| {label} | {removed} | {change:.3f} | {errors[0]:.1e} | {errors[1]:.2e} | {errors[2]:.2e} |")


if __name__ == "__main__":
    main()
