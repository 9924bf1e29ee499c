"""Turn a pretrained Qwen2 / Llama causal LM into a MoDA model that starts close to it."""

from __future__ import annotations

import os

from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from trl_mars.models.moda.configuration_moda import MoDAConfig
from trl_mars.models.moda.modeling_moda import MoDAForCausalLM

_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_parameters",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def moda_config_from(config: PretrainedConfig, **overrides) -> MoDAConfig:
    """MoDAConfig with the architecture of a Qwen2 / Llama config (biases included); `overrides` win."""
    if config.model_type == "qwen2":
        if getattr(config, "use_sliding_window", False):
            raise ValueError("sliding-window Qwen2 checkpoints are not supported by MoDA")
        biases = {"qkv_bias": True, "o_bias": False, "mlp_bias": False}
    elif config.model_type == "llama":
        biases = {"qkv_bias": config.attention_bias, "o_bias": config.attention_bias, "mlp_bias": config.mlp_bias}
    else:
        raise ValueError(f"can convert Qwen2 and Llama checkpoints, got model_type {config.model_type!r}")
    fields = {name: getattr(config, name) for name in _SHARED_FIELDS}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return MoDAConfig(**{**fields, **biases, "head_dim": head_dim, **overrides})


def convert_to_moda(
    source: PreTrainedModel | str | os.PathLike, near_identity: bool = True, **config_overrides
) -> MoDAForCausalLM:
    """MoDA version of a Qwen2 / Llama checkpoint (a model or a path), keeping every existing weight.

    The attention-KV depth slots reuse the layers' own K/V (no parameters); the new FFN-KV projections start at
    zero. With `near_identity` (default) the model gets a depth gate (`MoDAConfig.depth_gate`) initialised to 0:
    every head's depth terms enter the softmax as lambda_h e^{z~} with lambda_h = 0, so the converted model
    computes exactly the source's function, while d loss / d lambda_h = sum_{t,i} e^{z~ - lse} (dP~ - delta)
    (the first-order gain of letting head h read depth) is non-zero, so training opens the gate where depth
    helps; lambda = 1 is the paper's MoDA. Without it (the paper's formulation from the start), every depth
    slot is read at once and the function drifts. `config_overrides` set MoDA options such as depth_kv="attn"
    or moda_backend; norm_placement must stay "pre" to match the source.
    """
    model = source if isinstance(source, PreTrainedModel) else AutoModelForCausalLM.from_pretrained(source)
    config = moda_config_from(model.config, **{"depth_gate": near_identity, **config_overrides})
    if config.norm_placement != "pre":
        raise ValueError("Qwen2 / Llama are pre-norm; a converted model must keep norm_placement='pre'")
    moda = MoDAForCausalLM(config).to(dtype=model.dtype, device=model.device)
    missing, unexpected = moda.load_state_dict(model.state_dict(), strict=False)
    new = [n for n in missing if ".ffn_kv." not in n and not n.endswith(".depth_gate") and n != "lm_head.weight"]
    if new or unexpected:
        raise ValueError(f"checkpoint does not map onto MoDA: missing {new}, unexpected {unexpected}")
    for layer in moda.model.layers:
        if layer.ffn_kv is not None:
            layer.ffn_kv.k_proj.weight.data.zero_()
            layer.ffn_kv.v_proj.weight.data.zero_()
        if layer.self_attn.depth_gate is not None and near_identity:
            layer.self_attn.depth_gate.data.zero_()
    moda.tie_weights()
    moda.generation_config = model.generation_config
    return moda
