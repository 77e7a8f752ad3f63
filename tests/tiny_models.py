"""Tiny randomly initialised models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

VOCAB = 128


def tiny_config(family: str) -> transformers.PretrainedConfig:
    if family == "llama":  # GQA: 4 query heads over 2 KV heads
        return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=False)
    if family == "llama-mha":
        return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    if family == "mistral":
        return transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen2":
        return transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "bert":
        return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=64)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=64)
    if family == "opt":
        return transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)
    raise ValueError(family)


MODEL_CLASSES = {
    "llama": transformers.LlamaForCausalLM,
    "llama-mha": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "bert": transformers.BertModel,
    "gpt2": transformers.GPT2LMHeadModel,
    "opt": transformers.OPTForCausalLM,
}
FAMILIES = list(MODEL_CLASSES)


def _randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # random biases, so bias handling is exercised
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.02)
    return model.eval()


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomised(MODEL_CLASSES[family](tiny_config(family)))


# sizes every contract model shares; an adapter's ``tiny_config`` adds what its model type needs
CONTRACT_SIZES = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 48, "max_position_embeddings": 64}


def contract_model(model_type: str, seed: int = 0, auto: type | None = None, sizes: dict | None = None,
                   **overrides) -> nn.Module:
    """A tiny random model of any model type an adapter serves: GQA (2 KV heads) wherever the config has them.

    ``overrides`` are config keys on top of the adapter's ``tiny_config`` (another variant of the family);
    ``auto`` the transformers auto class to build (default: causal LM, or the bare encoder); ``sizes``
    replaces :data:`CONTRACT_SIZES` (a larger model, e.g. one a serving engine accepts)."""
    from reprune.adapters import ADAPTER_CLASSES

    adapter = ADAPTER_CLASSES[model_type]
    extra = {**adapter.tiny_config.get(model_type, {}), **overrides}
    sizes = sizes or CONTRACT_SIZES
    config = transformers.AutoConfig.for_model(model_type, **{**sizes, **extra})
    if hasattr(config, "num_key_value_heads") and "num_key_value_heads" not in extra:
        config.num_key_value_heads = 2
    if adapter.ffn_config_key:
        setattr(config, adapter.ffn_config_key, sizes["intermediate_size"])
    auto = auto or (transformers.AutoModelForCausalLM if adapter.causal else transformers.AutoModel)
    torch.manual_seed(seed)
    return _randomised(auto.from_config(config))


def tiny_llama_for(tokenizer, max_positions: int) -> transformers.LlamaForCausalLM:
    """A tiny GQA LLaMA over a real tokenizer's vocabulary (for evaluation code that tokenizes text)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return transformers.LlamaForCausalLM(config).eval()


def calibration_batch(num_samples: int = 16, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (num_samples, seq_len), generator=generator)


def model_output(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def entered_path(adapter, acts, index: int):
    """A calibration path standing at block ``index`` with block inputs ``acts`` (single-path statistics)."""
    from reprune.calibration import CalibrationPath

    path = CalibrationPath(adapter, acts)
    path.enter(adapter.blocks()[index], index)
    return path


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-character table: one token per byte, so any text tokenises without merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = 32, ffn: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2) -> Path:
    """A tiny random LLaMA as a GGUF file (float32 tensors, a byte-level BPE vocabulary of 259 tokens), the way
    llama.cpp lays it out, so transformers reads it with ``from_pretrained(dir, gguf_file=...)``."""
    import gguf
    import numpy as np

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_tokens(), "Ġt", "Ġa", "he"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t", "Ġ a", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def tensor(name: str, *shape: int) -> None:
        values = rng.standard_normal(shape) * 0.05 if len(shape) > 1 else 1 + 0.1 * rng.standard_normal(shape)
        writer.add_tensor(name, values.astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output_norm.weight", hidden)
    for block in range(layers):
        for name, shape in (("attn_norm", (hidden,)), ("ffn_norm", (hidden,)), ("attn_q", (hidden, hidden)),
                            ("attn_k", (kv_heads * head_dim, hidden)), ("attn_v", (kv_heads * head_dim, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            tensor(f"blk.{block}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
