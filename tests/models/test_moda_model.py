"""MoDA causal LM: fused depth buffer vs explicit depth lists, padding/packing, cache, save/load, TRL, converter."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

from trl_mars.models.moda import MoDAForCausalLM, convert_to_moda
from trl_mars.models.moda.convert import moda_config_from
from trl_mars.ops.moda import naive_moda
from trl_mars.testing import tiny_config

# Measured on the tiny Qwen2 of trl_mars.testing (64-dim, 2 layers, 24 random tokens x 4 rows, seed 0):
# KL(original || converted) = 3.8e-4 nats per token (attention-KV-only: 3.2e-4), top-1 agreement 100%; for scale,
# this random model is itself only 0.014 nats from uniform, so the bound checks "close", not "identical".
CONVERTER_KL_BOUND = 2e-3


def tiny_moda(tokenizer, seed: int = 0, **overrides) -> MoDAForCausalLM:
    """The shared tiny Llama architecture with 6 query / 2 KV heads (G = 3), as MoDA (on the CPU path by default)."""
    torch.manual_seed(seed)
    llama = tiny_config("llama", tokenizer, hidden_size=96, num_attention_heads=6, head_dim=16)
    return MoDAForCausalLM(moda_config_from(llama, **{"moda_backend": "cpu", **overrides})).eval()


def explicit_logits(model: MoDAForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """The MoDA forward written out with per-layer depth lists, stacked and passed to the naive oracle."""
    base, config = model.model, model.config
    B, T = input_ids.shape
    h = base.embed_tokens(input_ids)
    cos, sin = base.rotary_emb(h, torch.arange(T)[None])
    depth_k, depth_v = [], []
    for layer in base.layers:

        def attention(x, attn=layer.self_attn):
            q, k, v = (proj(x).view(B, T, -1, config.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
            stacked = [torch.stack(d, 2) if d else None for d in (depth_k, depth_v)]
            o, _ = naive_moda(q, k, v, *stacked, len(depth_k), depth_gain=attn.depth_gain())
            depth_k.append(k)
            depth_v.append(v)
            return attn.o_proj(o.reshape(B, T, -1))

        if config.norm_placement == "post":
            h = layer.input_layernorm(h + attention(h))
            x = h
        else:
            h = h + attention(layer.input_layernorm(h))
            x = layer.post_attention_layernorm(h)
        if layer.ffn_kv is not None:
            k = layer.ffn_kv.k_proj(x).view(B, T, -1, config.head_dim)
            depth_k.append(k * cos[:, :, None] + rotate_half(k) * sin[:, :, None])
            depth_v.append(layer.ffn_kv.v_proj(x).view(B, T, -1, config.head_dim))
        h = h + layer.mlp(x)
        if config.norm_placement == "post":
            h = layer.post_attention_layernorm(h)
    return model.lm_head(base.norm(h))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"depth_kv": "attn"},
        {"norm_placement": "post"},
        {"num_hidden_layers": 3, "qkv_bias": True},
        {"depth_gate": True},
    ],
    ids=["attn_ffn-pre", "attn-pre", "attn_ffn-post", "3layers-bias", "gate"],
)
def test_fused_depth_buffer_matches_explicit_depth_lists(tiny_tokenizer, overrides):
    model = tiny_moda(tiny_tokenizer, **overrides)
    if overrides.get("depth_gate"):
        with torch.no_grad():  # gates away from 1, one at 0
            gate = model.model.layers[1].self_attn.depth_gate
            gate.copy_(torch.rand(gate.shape, generator=torch.Generator().manual_seed(5)) * 2)
            gate[0] = 0.0
    input_ids = torch.randint(3, 200, (2, 13), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids).logits
    logits_ref = explicit_logits(model, input_ids)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5)

    grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
    grads_ref = torch.autograd.grad(logits_ref.square().mean(), list(model.parameters()))
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_padding_and_packing_match_separate_rows(tiny_tokenizer):
    """Left/right-padded rows and padding-free packed rows give each sequence its unpadded logits."""
    model = tiny_moda(tiny_tokenizer)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 200, (1, 9), generator=gen), torch.randint(3, 1000, (1, 5), generator=gen)
    alone = [model(x).logits[0] for x in (a, b)]

    pad = torch.zeros(1, 4, dtype=torch.long)
    for padded_b, valid in [(torch.cat([pad, b], 1), slice(4, None)), (torch.cat([b, pad], 1), slice(0, 5))]:
        mask = (padded_b != 0).long()
        logits = model(torch.cat([a, padded_b]), attention_mask=torch.cat([torch.ones_like(a), mask])).logits
        torch.testing.assert_close(logits[0], alone[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits[1, valid], alone[1], rtol=1e-4, atol=1e-5)

    packed = model(torch.cat([a, b], 1), position_ids=torch.cat([torch.arange(9), torch.arange(5)])[None]).logits
    torch.testing.assert_close(packed[0], torch.cat(alone), rtol=1e-4, atol=1e-5)


def loss_grads(model, input_ids) -> list[torch.Tensor]:
    model.zero_grad()
    model(input_ids, labels=input_ids).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_keeps_gradients(tiny_tokenizer, use_reentrant):
    model = tiny_moda(tiny_tokenizer, num_hidden_layers=3).train()
    input_ids = torch.randint(3, 200, (2, 11), generator=torch.Generator().manual_seed(2))
    grads = loss_grads(model, input_ids)
    model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
    for g_ckpt, g in zip(loss_grads(model, input_ids), grads):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-4, atol=1e-7)


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, the interpreter on CPU


@pytest.mark.parametrize("layout", ["plain", "left_padded", "packed"])
def test_triton_backend_matches_cpu_path(tiny_tokenizer, layout):
    """The model on the Triton kernels gives the CPU path's logits and loss gradients (fp32), padded and packed."""
    reference = tiny_moda(tiny_tokenizer)
    on_kernels = tiny_moda(tiny_tokenizer, moda_backend="triton").to(KERNEL_DEVICE)
    on_kernels.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 200, (2, 12), generator=gen)
    kwargs = {
        "plain": {},
        "left_padded": {"attention_mask": torch.tensor([[1] * 12, [0] * 5 + [1] * 7])},
        "packed": {"position_ids": torch.cat([torch.arange(7), torch.arange(5)]).expand(2, -1)},
    }[layout]
    results = []
    for model, device in ((reference, "cpu"), (on_kernels, KERNEL_DEVICE)):
        model.zero_grad()
        out = model(input_ids.to(device), labels=input_ids.to(device), **{k: v.to(device) for k, v in kwargs.items()})
        out.loss.backward()
        results.append([out.logits.detach().cpu()] + [p.grad.cpu() for p in model.parameters()])
    names = ["logits"] + [name for name, _ in reference.named_parameters()]
    for name, ref, got in zip(names, *results):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("overrides", [{}, {"depth_kv": "attn"}], ids=["attn_ffn", "attn"])
def test_generate_with_cache_matches_without(tiny_tokenizer, overrides):
    """Greedy generation of a left-padded batch: cached decoding (SDPA over the cache, depth merged through the
    lse) gives the tokens and scores of full recomputation."""
    model = tiny_moda(tiny_tokenizer, **overrides)
    batch = tiny_tokenizer(["def add(a, b):", "The quick brown fox jumps"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**batch, use_cache=True, **kwargs)
    uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=1e-4, atol=1e-5)


def test_cached_chunk_matches_full_forward(tiny_tokenizer):
    """A 3-token chunk against a KV cache of a left-padded batch gives the full forward's logits."""
    model = tiny_moda(tiny_tokenizer, depth_gate=True)
    with torch.no_grad():
        model.model.layers[1].self_attn.depth_gate.uniform_(0, 2, generator=torch.Generator().manual_seed(4))
    input_ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(input_ids)
    mask[1, :4] = 0
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask).logits
        prefix = model(input_ids[:, :9], attention_mask=mask[:, :9], use_cache=True)
        chunk = model(input_ids[:, 9:], attention_mask=mask, cache=prefix.cache, use_cache=True).logits
    torch.testing.assert_close(chunk, full[:, 9:], rtol=1e-4, atol=1e-5)


def test_save_and_load_through_auto_classes(tiny_tokenizer, tmp_path):
    model = tiny_moda(tiny_tokenizer, norm_placement="post", depth_kv="attn")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MoDAForCausalLM) and loaded.config.norm_placement == "post"
    input_ids = torch.randint(3, 200, (1, 7))
    torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits)


def next_token_kl(source, converted, input_ids) -> tuple[float, float]:
    with torch.no_grad():
        p, q = (m(input_ids).logits.log_softmax(-1) for m in (source, converted))
    return (p.exp() * (p - q)).sum(-1).mean().item(), (p.argmax(-1) == q.argmax(-1)).float().mean().item()


def test_converter_is_exactly_the_source_model(tiny_qwen2_path, tiny_llama_path):
    """Converted with the depth gate at 0, the MoDA model's logits are the source's (padded batch included)."""
    for path in (tiny_qwen2_path, tiny_llama_path):
        source = AutoModelForCausalLM.from_pretrained(path).eval()
        converted = convert_to_moda(source).eval()
        assert converted.config.depth_gate
        input_ids = torch.randint(0, source.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
        padding = torch.ones_like(input_ids)
        padding[1, :5] = 0
        with torch.no_grad():
            for mask in (torch.ones_like(input_ids), padding):
                expected, got = (m(input_ids, attention_mask=mask).logits for m in (source, converted))
                torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=2e-6)


def test_hidden_states_are_those_of_the_source(tiny_qwen2_path):
    """output_hidden_states gives the embeddings, every layer's output and the final-norm states, as transformers
    does (equal to the source's for a near-identity conversion); output_attentions is rejected."""
    source = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path).eval()
    converted = convert_to_moda(source).eval()
    input_ids = torch.randint(0, source.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = source(input_ids, output_hidden_states=True).hidden_states
        got = converted(input_ids, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == source.config.num_hidden_layers + 1
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=2e-6)
    assert converted(input_ids).hidden_states is None
    with pytest.raises(ValueError, match="output_attentions"):
        converted(input_ids, output_attentions=True)


def test_converted_model_can_train_depth_on(tiny_qwen2_path):
    """At the gate's zero the loss still has a gradient in every gate; one SGD step opens gates, after which the
    FFN-KV projections (whose gradient is proportional to the depth probabilities) get gradients too."""
    source = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    converted = convert_to_moda(source, moda_backend="cpu").train()
    input_ids = torch.randint(0, source.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    converted(input_ids, labels=input_ids).loss.backward()
    gates = [layer.self_attn.depth_gate for layer in converted.model.layers if layer.self_attn.depth_gate is not None]
    assert gates and all(g.grad is not None and g.grad.abs().min() > 0 for g in gates)
    ffn_kv = [p for n, p in converted.named_parameters() if ".ffn_kv." in n]
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in ffn_kv)  # P~ = 0 at the start
    with torch.no_grad():
        for g in gates:
            g -= 10.0 * g.grad  # plain SGD; heads whose gradient asks for depth open (the others stay at 0)
    assert any((g > 0).any() for g in gates)
    converted.zero_grad()
    converted(input_ids, labels=input_ids).loss.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in ffn_kv)


def test_converter_without_near_identity_keeps_next_token_predictions(tiny_qwen2_path, tiny_llama_path):
    """The paper's formulation from the start (near_identity=False): every depth slot is read, a small drift."""
    source = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path).eval()
    converted = convert_to_moda(source, near_identity=False).eval()
    assert converted.config.qkv_bias and not converted.config.o_bias and not converted.config.depth_gate
    input_ids = torch.randint(0, source.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    kl, top1 = next_token_kl(source, converted, input_ids)
    assert 0 < kl < CONVERTER_KL_BOUND and top1 >= 0.95, (kl, top1)
    llama = convert_to_moda(tiny_llama_path, depth_kv="attn")
    assert llama.config.num_depth_slots == llama.config.num_hidden_layers - 1


@pytest.fixture(scope="module")
def moda_path(tmp_path_factory, tiny_qwen2_path, tiny_tokenizer):
    path = tmp_path_factory.mktemp("moda")
    convert_to_moda(tiny_qwen2_path).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def _changed(before: dict[str, torch.Tensor], model) -> bool:
    return any(not torch.equal(before[n], p.detach().cpu()) for n, p in model.named_parameters() if n in before)


def test_trains_with_sft(moda_path, tmp_path):
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({"text": ["def add(a, b):\n    return a + b", "The quick brown fox jumps over."] * 4})
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_length=32,
    )  # fmt: skip
    trainer = SFTTrainer(model=moda_path, args=args, train_dataset=dataset)
    before = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert _changed(before, trainer.model)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)


def test_trains_with_grpo(moda_path, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_dict({"prompt": ["def add(a, b):", "The quick brown", "Fix the code", "Think step"]})

    def reward_length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=6, learning_rate=1e-2, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no",
    )  # fmt: skip
    trainer = GRPOTrainer(model=moda_path, reward_funcs=reward_length, args=args, train_dataset=dataset)
    before = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert _changed(before, trainer.model)
