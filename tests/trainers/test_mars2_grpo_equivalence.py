"""A degenerate MARS² configuration (1 agent, budget = num_generations, GEN only, no shaping) gives the same
advantages and the same loss as stock ``trl.GRPOTrainer`` on the same completions."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from trl_mars.rewards.code import make_code_reward
from trl_mars.search import ScriptedBackend, SearchConfig, TreeSearch
from trl_mars.search.problems import from_row
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

G = 4
ROWS = [
    {
        "prompt": [{"role": "user", "content": "Write `add_2(x)` returning x plus 2."}],
        "tests": ["assert add_2(1) == 3"],
    },
    {"prompt": [{"role": "user", "content": "Write `neg(x)` returning -x."}], "tests": ["assert neg(2) == -2"]},
]
ANSWERS = [
    [
        "```python\ndef add_2(x):\n    return x + 2\n```",
        "```python\ndef add_2(x):\n    return x\n```",
        "no code",
        "```python\ndef add_2(x):\n    return 2 + x\n```",
    ],
    [
        "```python\ndef neg(x):\n    return x\n```",
        "```python\ndef neg(x):\n    return -x\n```",
        "```python\ndef neg(x):\n    return 0\n```",
        "```python\ndef neg(x):\n    return x\n```",
    ],
]


@pytest.mark.parametrize(("loss_type", "level"), [("grpo", "sequence"), ("dapo", "token")])
def test_degenerate_mars2_equals_grpo(tmp_path, tiny_qwen2_path, loss_type, level):
    common = dict(
        report_to="none",
        beta=0.04,
        loss_type=loss_type,
        importance_sampling_level=level,
        per_device_train_batch_size=G,
        max_completion_length=64,
        gradient_checkpointing=False,
        seed=0,
    )
    dataset = Dataset.from_list(ROWS)
    ours = MultiAgentTreeTrainer(
        args=MultiAgentTreeConfig(
            output_dir=str(tmp_path / "ours"),
            agents=[{"name": "solo", "model": tiny_qwen2_path}],
            max_nodes=G,
            max_depth=1,
            reward_shaping="none",
            tis_cap=None,
            **common,
        ),
        train_dataset=dataset,
    )
    policy, tok = ours.policies[0], ours.policies[0].tokenizer
    problems = [from_row(r, i) for i, r in enumerate(ROWS)]
    calls = {0: 0, 1: 0}

    def respond(messages):
        i = 0 if "add_2" in messages[-1]["content"] else 1
        calls[i] += 1
        return ANSWERS[i][calls[i] - 1]

    trees = TreeSearch(
        {"solo": ScriptedBackend(respond)}, ours.search.verifier, SearchConfig(max_nodes=G, max_depth=1)
    ).run(problems)
    for tree in trees:
        for node in tree.solutions:  # the token ids a model would have produced for these texts
            node.prompt_ids = tok.apply_chat_template(
                node.prompt, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            node.completion_ids = tok(node.completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert all(n.parent_id == 0 for t in trees for n in t.solutions)  # GEN only
    samples = ours.credit(trees)

    def rollout(prompts, trainer):
        nodes = [n for t in trees for n in t.solutions]
        assert len(prompts) == len(nodes)
        return {
            "prompt_ids": [n.prompt_ids for n in nodes],
            "completion_ids": [n.completion_ids for n in nodes],
            "logprobs": [[0.0] * len(n.completion_ids) for n in nodes],
        }

    stock = GRPOTrainer(
        model=tiny_qwen2_path,
        reward_funcs=make_code_reward("binary", ours.sandbox),
        args=GRPOConfig(output_dir=str(tmp_path / "stock"), num_generations=G, **common),
        train_dataset=dataset,
        rollout_func=rollout,
    )
    batch = stock._generate_and_score_completions([r for r in ROWS for _ in range(G)])
    rewards = [s["reward"] for s in samples]
    assert rewards == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(torch.tensor([s["advantage"] for s in samples]), batch["advantages"].float())
    inputs = ours.collate(policy, samples)
    assert torch.equal(inputs["completion_ids"], batch["completion_ids"])
    num_items = float(inputs["completion_mask"].sum())
    stock.model.train()
    stock.current_gradient_accumulation_steps = 1  # set by the Trainer loop, which we do not run here
    stock_loss = stock._compute_loss(stock.model, batch)
    stock_loss.backward()
    stock_grads = {n: p.grad.clone() for n, p in stock.model.named_parameters() if p.grad is not None}
    # fresh nodes (old policy = current one, as TRL's detach), then with their old log-probs recorded (trust region)
    for recorded in (False, True):
        if recorded:
            ours.record_old_logps(policy, samples, samples)
            inputs = ours.collate(policy, samples)
            assert not inputs["fresh"].any()
        ours_loss, stats = ours.policy_micro_loss(policy, inputs, num_items)
        torch.testing.assert_close(ours_loss, stock_loss, rtol=1e-5, atol=1e-6)
        assert float(stats["clip_ratio"]) == 0.0
        policy.model.zero_grad(set_to_none=True)
        ours_loss.backward()
        grads = {n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None}
        assert grads.keys() == stock_grads.keys()
        for name, grad in grads.items():  # the KL's importance correction included (use_bias_correction_kl)
            torch.testing.assert_close(grad, stock_grads[name], rtol=1e-4, atol=1e-6, msg=name)
