"""The offline tiny models load by path like hub models, chat, generate, and train with stock TRL."""

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_mars.testing import TINY_ARCHS, build_tiny_tokenizer, tiny_model_path


def test_tokenizer_is_deterministic_and_roundtrips(tiny_tokenizer):
    again = build_tiny_tokenizer()
    text = "def add_3(x: int) -> int:\n    return x + 3\n"
    assert tiny_tokenizer(text).input_ids == again(text).input_ids
    assert tiny_tokenizer.decode(tiny_tokenizer(text).input_ids) == text
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token == "<|endoftext|>"
    assert tiny_tokenizer.padding_side == "left"


def test_models_load_by_path_and_generate(tiny_qwen2_path, tiny_llama_path):
    expected_types = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
    for arch, path in zip(TINY_ARCHS, (tiny_qwen2_path, tiny_llama_path), strict=True):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert type(model).__name__ == expected_types[arch]
        text = tok.apply_chat_template(
            [{"role": "user", "content": "Write add_1."}], tokenize=False, add_generation_prompt=True
        )
        assert text == "<|im_start|>user\nWrite add_1.<|im_end|>\n<|im_start|>assistant\n"
        batch = tok([text, "short"], return_tensors="pt", padding=True)
        assert batch.input_ids[1, 0].item() == tok.pad_token_id  # left padding
        torch.manual_seed(0)
        out = model.generate(**batch, max_new_tokens=5, do_sample=True)
        assert batch.input_ids.shape[1] < out.shape[1] <= batch.input_ids.shape[1] + 5


def test_cache_is_reused(tiny_cache, tiny_qwen2_path):
    assert tiny_model_path("qwen2", cache_dir=tiny_cache) == tiny_qwen2_path
    assert tiny_model_path("qwen2", cache_dir=tiny_cache, hidden_size=32) != tiny_qwen2_path


def test_one_grpo_step_with_stock_trainer(tiny_qwen2_path, tmp_path):
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Say {i}"}] for i in range(4)]})

    def reward_len(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=0.1,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(model=tiny_qwen2_path, reward_funcs=reward_len, args=args, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "GRPO step did not update any parameter"
    assert trainer.state.log_history[-1]["train_loss"] is not None
