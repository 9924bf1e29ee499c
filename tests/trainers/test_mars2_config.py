"""MultiAgentTreeTrainer fails on bad input before any model weight is loaded, naming the field."""

import pytest
from datasets import Dataset

from trl_mars.trainers import mars2_trainer
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer


def config(tmp_path, **kw):
    return MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", **kw)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_nodes": 0}, "max_nodes"),
        ({"trees_per_step": 0}, "trees_per_step"),
        ({"posterior": "uniform"}, "posterior"),
        ({"reward_shaping": "magic"}, "reward_shaping"),
        ({"node_reward": "partial"}, "node_reward"),
        ({"agents": [{"name": "a", "model": "/no/such/model"}]}, r"agents\[0\].model"),
        ({"agents": [{"name": "a", "model": "not a model id"}]}, r"agents\[0\].model"),
        ({"agents": [{"name": "a", "model": "trl-mars/tiny-qwen2", "loss_weight": -1}]}, r"agents\[0\].loss_weight"),
        ({"agents": [{"name": "a", "model": "trl-mars/tiny-qwen2", "lr": 1}]}, r"agents\[0\].lr: unknown key"),
        (
            {"agents": [{"name": "a", "model": "trl-mars/tiny-qwen2"}, {"name": "a", "model": "trl-mars/tiny-llama"}]},
            "duplicate",
        ),
        ({"agents": [{"name": "a", "model": "trl-mars/tiny-qwen2"}, {"name": "b"}]}, r"agents\[1\].model is required"),
        ({"agents": "[{broken json"}, "agents: not valid JSON"),
        ({"reward_weights": [-1.0]}, "reward_weights"),
        (
            {"use_vllm": True, "agents": [{"name": "a", "model": "trl-mars/tiny-qwen2"}]},
            r"agents\[0\].vllm_server_base_url is required",
        ),
        (
            {
                "use_vllm": True,
                "agents": [
                    {"name": "a", "model": "trl-mars/tiny-qwen2", "vllm_server_base_url": "http://h:8000"},
                    {"name": "b", "model": "trl-mars/tiny-llama", "vllm_server_base_url": "http://h:8000"},
                ],
            },
            r"agents\[1\].vllm_server_base_url: .* already serves agents\[0\]",
        ),
        (
            {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "agents": [{"name": "a", "model": "trl-mars/tiny-qwen2", "vllm_server_base_url": "http://h:8000"}],
            },
            r"agents\[0\].vllm_server_base_url: agents have no server with vllm_mode='colocate'",
        ),
        (
            {
                "use_vllm": True,
                "agents": [
                    {
                        "name": "a",
                        "model": "trl-mars/tiny-qwen2",
                        "load_in_4bit": True,
                        "lora": {"r": 4},
                        "vllm_server_base_url": "http://h:8000",
                    }
                ],
            },
            r"agents\[0\].load_in_4bit: QLoRA agents cannot push weights to vLLM",
        ),
        (
            {"use_vllm": True, "vllm_mode": "colocate", "search_mode": "async"},
            r"search_mode='async' needs use_vllm with vllm_mode='server'",
        ),
    ],
)
def test_bad_config_values_name_the_field(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)


def test_cli_json_agents_and_homogeneous_mode(tmp_path):
    c = config(
        tmp_path,
        agents='[{"name": "a", "model": "trl-mars/tiny-qwen2"}, {"name": "b", "system_prompt": "Be terse."}]',
        agent_mode="homogeneous",
    )
    assert [s.name for s in c.agent_specs] == ["a", "b"] and c.agent_specs[1].system_prompt == "Be terse."
    assert c.agents == [{"name": "a", "model": "trl-mars/tiny-qwen2"}, {"name": "b", "system_prompt": "Be terse."}]
    assert c.beta == 1e-3 and c.importance_sampling_level == "sequence"  # MARS²+ defaults


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load model weights fails the test: errors must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model weights were loaded before the input was validated")

    monkeypatch.setattr(mars2_trainer, "create_model_from_path", forbidden)


def test_missing_dataset_column_fails_before_loading(tmp_path, no_weights):
    args = config(tmp_path, agents=[{"name": "a", "model": "trl-mars/tiny-qwen2"}])
    bad = Dataset.from_dict({"prompt": ["Write add_1."], "solution": ["..."]})
    with pytest.raises(ValueError, match="train_dataset is missing the column 'tests'"):
        MultiAgentTreeTrainer(args=args, train_dataset=bad)
    empty = Dataset.from_dict({"prompt": ["Write add_1."], "tests": [[]]})
    with pytest.raises(ValueError, match=r"train_dataset row 0, column 'tests': no tests"):
        MultiAgentTreeTrainer(args=args, train_dataset=empty)
    no_assert = Dataset.from_dict({"prompt": ["a", "b"], "tests": [["assert add_1(1) == 2"], ["add_1(1) == 2"]]})
    with pytest.raises(
        ValueError, match=r"train_dataset row 1, column 'tests', test 0: 'add_1\(1\) == 2' has no assert"
    ):
        MultiAgentTreeTrainer(args=args, train_dataset=no_assert)


def test_agent_without_chat_template_fails_before_loading(tmp_path, tiny_qwen2_path, no_weights):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "no_template"
    shutil.copytree(tiny_qwen2_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = None
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    args = config(tmp_path / "out", agents=[{"name": "plain", "model": str(folder)}])
    data = Dataset.from_dict({"prompt": ["Write add_1."], "tests": [["assert add_1(1) == 2"]]})
    with pytest.raises(ValueError, match=r"agents\[0\] \(plain\).*no chat template"):
        MultiAgentTreeTrainer(args=args, train_dataset=data)
