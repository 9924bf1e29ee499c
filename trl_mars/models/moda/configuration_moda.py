"""Configuration of the MoDA decoder (Llama/OLMo2-like with mixture-of-depths attention)."""

from __future__ import annotations

from typing import ClassVar

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import RopeParameters

DEPTH_KV_VARIANTS = ("attn_ffn", "attn")
NORM_PLACEMENTS = ("pre", "post")


class MoDAConfig(PretrainedConfig):
    r"""Decoder with RMSNorm, SwiGLU, RoPE and GQA whose attention also reads the token's depth KV.

    Each layer l < L - 1 writes depth slots for every token t, read by all later layers at the same token:

    - ``depth_kv="attn_ffn"`` (the paper's default): its attention K/V after RoPE, and (K, V) = (RoPE_t(x W_k),
      x W_v) of its FFN input x, with two new D x (D / G) matrices; layer l reads 2l slots.
    - ``depth_kv="attn"``: its attention K/V only (no new parameters); layer l reads l slots.

    ``norm_placement`` is "pre" (x + f(norm(x))) or "post" (norm(x + f(x)), the paper's best setting).
    ``depth_gate``: each layer with depth slots gets a learnable gain g_h per query head, and head h's depth
    terms enter the softmax as max(g_h, 0) e^{z~} (a depth logit bias log g_h). It starts at 1 (the paper's
    MoDA) in a fresh model and at 0 (exactly the source model, with a non-zero gradient) in `convert_to_moda`.
    ``qkv_bias`` / ``o_bias`` put biases on the q, k, v / o projections (Qwen2: qkv only). ``moda_backend`` picks
    the attention kernels: "auto" (Triton on CUDA, the fused CPU path elsewhere), "triton" or "cpu".
    """

    model_type = "moda"
    keys_to_ignore_at_inference = ["cache"]
    # TRL's model loader reads `config.auto_map` for architectures it cannot find in transformers
    auto_map: ClassVar[dict[str, str]] = {}

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    depth_kv: str = "attn_ffn"
    depth_gate: bool = False
    norm_placement: str = "pre"
    moda_backend: str = "auto"

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.depth_kv not in DEPTH_KV_VARIANTS:
            raise ValueError(f"depth_kv must be one of {DEPTH_KV_VARIANTS}, got {self.depth_kv!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        super().__post_init__(**kwargs)

    @property
    def depth_slots_per_layer(self) -> int:
        """Depth slots each layer writes per token."""
        return 2 if self.depth_kv == "attn_ffn" else 1

    @property
    def num_depth_slots(self) -> int:
        """Slots of the depth buffer: the last layer's KV is never read, so it writes none."""
        return self.depth_slots_per_layer * (self.num_hidden_layers - 1)
