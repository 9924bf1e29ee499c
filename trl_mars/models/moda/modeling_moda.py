"""MoDA causal LM: a Llama-style decoder whose attention reads the depth KV written by earlier layers.

One forward pass preallocates a token-major depth buffer [B, T, Lmax, H, d] (`DepthKVBuffer`). Layer l reads
its first `depth_slot` slots inside its attention softmax, then writes its own attention K/V (and, in the
default variant, the FFN K/V of its FFN input) into the next slots. Padded batches (left or right padding)
and padding-free packed batches run as variable-length sequences over the flattened tokens, so no dense
mask is built. With a KV cache, only the sequence K/V is cached: the depth KV of a decoding step belongs to
the step's own tokens and is rebuilt from scratch each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    rotate_half,
)
from transformers.utils.deprecation import deprecate_kwarg

from trl_mars.models.moda.configuration_moda import MoDAConfig
from trl_mars.ops.moda import DepthKVBuffer, masked_moda_attention, moda_attention


@dataclass
class MoDAForwardState:
    """Per-forward context shared by the layers.

    Attributes:
        depth: the depth KV buffer of this forward (None when the model has no depth slots).
        cu_seqlens: boundaries of the independent sequences over the flattened B * T tokens (padded rows split
            into their pad and token runs, packed rows at position resets), or None for plain [B, T] batches.
        visible: [B, T, past + T] sequence mask when attending to a KV cache, else None.
        batch_shape: (B, T) of the inputs; hidden states are [1, B * T, D] when cu_seqlens is set.
    """

    depth: DepthKVBuffer | None
    cu_seqlens: torch.Tensor | None
    visible: torch.Tensor | None
    batch_shape: tuple[int, int]


def packed_segments(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor, batch_shape: tuple[int, int]
) -> torch.Tensor | None:
    """cu_seqlens of the runs that attend among themselves over the flattened tokens, or None if rows suffice.

    A run starts at each row start, where the attention mask flips (padding) and where positions do not
    increase by one (padding-free packing). The valid tokens of a row must be contiguous.
    """
    B, T = batch_shape
    starts = torch.zeros(B, T, dtype=torch.bool, device=position_ids.device)
    starts[:, 0] = True
    if attention_mask is not None:
        mask = attention_mask.bool()
        if ((mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0] > 1).any():
            raise ValueError("MoDA needs the unmasked tokens of each row to be contiguous (left or right padding)")
        starts[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    positions = position_ids.expand(B, T)
    starts[:, 1:] |= positions[:, 1:] != positions[:, :-1] + 1
    if int(starts.sum()) == B:
        return None
    bounds = torch.cat([starts.flatten().nonzero().flatten(), torch.tensor([B * T], device=starts.device)])
    return bounds.to(torch.int32)


def cache_visibility(attention_mask: torch.Tensor | None, past: int, batch_shape: tuple[int, int]) -> torch.Tensor:
    """[B, T, past + T] mask of the new tokens over cache + new keys: causal, unpadded, always including self."""
    B, T = batch_shape
    device = attention_mask.device if attention_mask is not None else None
    key_pos = torch.arange(past + T, device=device)
    query_pos = past + torch.arange(T, device=device)
    visible = key_pos[None, :] <= query_pos[:, None]
    if attention_mask is not None:
        visible = visible & attention_mask[:, None, : past + T].bool()
    return (visible | (key_pos[None, :] == query_pos[:, None])).expand(B, T, past + T)


class MoDAAttention(nn.Module):
    """GQA self-attention whose softmax also covers the depth slots [0, depth_slot) of each token."""

    def __init__(self, config: MoDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.depth_slot = layer_idx * config.depth_slots_per_layer
        self.writes_depth = layer_idx < config.num_hidden_layers - 1
        q_dim, kv_dim = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=config.o_bias)
        # lambda_h = max(g_h, 0) scales head h's depth terms e^{z~}; clamp passes the gradient at g = 0
        has_gate = config.depth_gate and self.depth_slot > 0
        self.depth_gate = nn.Parameter(torch.ones(config.num_attention_heads)) if has_gate else None

    def depth_gain(self) -> torch.Tensor | None:
        """Per-query-head gains lambda_h = max(g_h, 0) of the depth terms (None: no gate, lambda = 1)."""
        return None if self.depth_gate is None else self.depth_gate.clamp(min=0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        state: MoDAForwardState,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        lead = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states).view(*lead, -1, self.head_dim)
        k = self.k_proj(hidden_states).view(*lead, -1, self.head_dim)
        v = self.v_proj(hidden_states).view(*lead, -1, self.head_dim)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        q, k = q.to(v.dtype), k.to(v.dtype)  # RoPE tables may be fp32 under autocast
        if cache is not None:
            to_cache = [x.reshape(*state.batch_shape, *x.shape[2:]).transpose(1, 2) for x in (k, v)]
            k_all, v_all = (x.transpose(1, 2) for x in cache.update(*to_cache, self.layer_idx))
        n_depth = self.depth_slot
        depth = state.depth
        gain = self.depth_gain()
        if state.visible is not None:
            depth_k, depth_v = (None, None) if depth is None else (depth.k, depth.v)
            o = masked_moda_attention(
                q, k_all, v_all, depth_k, depth_v, n_depth, state.visible, self.scaling, depth_gain=gain
            )
        elif depth is not None:
            backend = self.config.moda_backend
            o = depth.attend(q, k, v, n_depth, state.cu_seqlens, scale=self.scaling, backend=backend, depth_gain=gain)
        else:
            o, _ = moda_attention(
                q, k, v, cu_seqlens=state.cu_seqlens, scale=self.scaling, backend=self.config.moda_backend
            )
        if depth is not None and self.writes_depth:
            o = depth.write(o, n_depth, k, v)
        return self.o_proj(o.reshape(*lead, -1))


class MoDAFFNKV(nn.Module):
    """Depth K/V of the FFN input x: (RoPE_t(x W_k), x W_v) with W_k, W_v in R^{D x (D / G)}."""

    def __init__(self, config: MoDAConfig, slot: int) -> None:
        super().__init__()
        self.slot = slot
        self.head_dim = config.head_dim
        kv_dim = config.num_key_value_heads * config.head_dim
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)

    def forward(
        self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], depth: DepthKVBuffer
    ) -> torch.Tensor:
        """Write the slot and return x (through which the slot's gradient flows back)."""
        lead = x.shape[:-1]
        k = self.k_proj(x).view(*lead, -1, self.head_dim)
        v = self.v_proj(x).view(*lead, -1, self.head_dim)
        cos, sin = (t.unsqueeze(2) for t in position_embeddings)
        return depth.write(x, self.slot, k * cos + rotate_half(k) * sin, v)


class MoDADecoderLayer(GradientCheckpointingLayer):
    """Attention then SwiGLU FFN, pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x)))."""

    def __init__(self, config: MoDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MoDAAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_norm = config.norm_placement == "post"
        has_ffn_kv = config.depth_kv == "attn_ffn" and self.self_attn.writes_depth
        self.ffn_kv = MoDAFFNKV(config, self.self_attn.depth_slot + 1) if has_ffn_kv else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        state: MoDAForwardState,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.post_norm:
            hidden_states = self.input_layernorm(
                hidden_states + self.self_attn(hidden_states, position_embeddings, state, cache)
            )
            ffn_input = hidden_states
        else:
            hidden_states = hidden_states + self.self_attn(
                self.input_layernorm(hidden_states), position_embeddings, state, cache
            )
            ffn_input = self.post_attention_layernorm(hidden_states)
        if self.ffn_kv is not None and state.depth is not None:
            ffn_input = self.ffn_kv(ffn_input, position_embeddings, state.depth)
        hidden_states = hidden_states + self.mlp(ffn_input)
        return self.post_attention_layernorm(hidden_states) if self.post_norm else hidden_states


class MoDAPreTrainedModel(PreTrainedModel):
    config_class = MoDAConfig
    config: MoDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoDADecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MoDAAttention) and module.depth_gate is not None:
            nn.init.ones_(module.depth_gate)  # lambda = 1: the paper's MoDA


class MoDAModel(MoDAPreTrainedModel):
    """The MoDA decoder stack; returns the final-norm hidden states [B, T, D]."""

    def __init__(self, config: MoDAConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MoDADecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _forward_state(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past: int,
    ) -> MoDAForwardState:
        batch_shape = tuple(hidden_states.shape[:2])
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("MoDA takes a 2D [batch, keys] attention mask (padding), not a 4D one")
        if past > 0:
            cu_seqlens, visible = None, cache_visibility(attention_mask, past, batch_shape)
        else:
            cu_seqlens, visible = packed_segments(attention_mask, position_ids, batch_shape), None
        depth = None
        if self.config.num_depth_slots > 0:
            B, T = batch_shape
            device = hidden_states.device
            # under autocast the K/V written into the buffer come out of the projections in the autocast dtype
            autocast = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if autocast else hidden_states.dtype
            depth = DepthKVBuffer(
                *((1, B * T) if cu_seqlens is not None else batch_shape),
                self.config.num_depth_slots,
                self.config.num_key_value_heads,
                self.config.head_dim,
                dtype,
                device,
            )
        return MoDAForwardState(depth, cu_seqlens, visible, batch_shape)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Final-norm hidden states [B, T, D]; with output_hidden_states also the embeddings and every layer's
        output (the last entry after the final norm, as in transformers' Llama)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if output_attentions:
            raise ValueError("output_attentions is not supported by MoDA (its kernels never form the attention map)")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None]
        state = self._forward_state(inputs_embeds, attention_mask, position_ids, past)

        hidden_states = inputs_embeds
        if state.cu_seqlens is not None:
            hidden_states = hidden_states.reshape(1, B * T, -1)
            position_ids = position_ids.expand(B, T).reshape(1, B * T)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states.view(B, T, -1))
            hidden_states = layer(hidden_states, position_embeddings, state, cache=cache)
        hidden_states = self.norm(hidden_states).view(B, T, -1)
        all_hidden = (*all_hidden, hidden_states) if output_hidden_states else None
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden)


class MoDAForCausalLM(MoDAPreTrainedModel, GenerationMixin):
    """MoDA decoder with a language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MoDAConfig) -> None:
        super().__init__(config)
        self.model = MoDAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )
