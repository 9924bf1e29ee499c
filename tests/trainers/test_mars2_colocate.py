"""``vllm_mode='colocate'``: each agent's vLLM engine in the training process, asleep while the agents train.

The engine is ``vllm_fakes.FakeEngine`` (a tiny transformers model with vLLM's sleep / wake_up / load_weights
semantics: sleeping at level 2 discards its weights), injected through ``MultiAgentTreeTrainer.vllm_engine_factory``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search.backends import SamplingConfig
from trl_mars.search.vllm_colocate import VLLMColocateBackend
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402
from vllm_fakes import FakeEngine  # noqa: E402

COLOCATE = dict(
    use_vllm=True,
    vllm_mode="colocate",
    vllm_enable_sleep_mode=True,
    vllm_gpu_memory_utilization=0.4,
    vllm_max_model_length=128,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_qwen2_path, tiny_llama_path):
    events: list = []
    engines: dict[str, FakeEngine] = {}
    names = {tiny_qwen2_path: "qwen", tiny_llama_path: "llama"}

    def factory(**kwargs):
        engine = FakeEngine(events, **kwargs)
        engine.name = names[kwargs["model"]]
        engines[engine.name] = engine
        return engine

    patch = pytest.MonkeyPatch()
    patch.setattr(MultiAgentTreeTrainer, "vllm_engine_factory", staticmethod(factory))
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path, "lora": {"r": 4}},
        {"name": "llama", "model": tiny_llama_path},
    ]
    args = tiny_mars2_config(tmp_path_factory.mktemp("colocate"), agents, max_steps=2, beta=0.0, **COLOCATE)
    train, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)
    trained: dict[str, list[dict]] = {"qwen": [], "llama": []}  # the llama weights after each of its updates
    update = trainer._update

    def logged_update(policy, samples):
        loss = update(policy, samples)
        events.append((policy.name, "train"))
        model = trainer.accelerator.unwrap_model(policy.model)
        trained[policy.name].append({n: p.detach().clone() for n, p in model.named_parameters()})
        return loss

    trainer._update = logged_update
    original_q = trainer.accelerator.unwrap_model(trainer.policies[0].model).base_model.model.model.layers[0]
    original_q = original_q.self_attn.q_proj.base_layer.weight.detach().clone()
    trainer.train()
    trainer.run_search(trainer.problems([train[0]]))  # generating again loads the last update first
    yield trainer, events, engines, trained, original_q
    trainer.sandbox.close()
    patch.undo()


def test_engines_built_from_the_colocate_fields(run, tiny_qwen2_path, tiny_llama_path):
    _, _, engines, _, _ = run
    for name, path in (("qwen", tiny_qwen2_path), ("llama", tiny_llama_path)):
        kwargs = engines[name].kwargs
        assert kwargs["model"] == path
        assert (kwargs["gpu_memory_utilization"], kwargs["enable_sleep_mode"], kwargs["max_model_len"]) == (
            0.4,
            True,
            128,
        )
        assert (kwargs["model_impl"], kwargs["dtype"], kwargs["seed"]) == ("vllm", "float32", 0)
        assert (kwargs["rank"], kwargs["local_rank"], kwargs["world_size"]) == (0, 0, 1)


def test_nodes_are_the_engines_generations(run):
    trainer, events, _, _, _ = run
    nodes = [n for t in trainer.last_trees for n in t.solutions]
    assert nodes and any(e == "generate" for _, e in events)
    for node in nodes:
        tok = trainer.policy_of[node.agent].tokenizer
        text = tok.apply_chat_template(node.prompt, tokenize=False, add_generation_prompt=True)
        assert node.prompt_ids == tok(text, add_special_tokens=False).input_ids
        assert len(node.logprobs) == len(node.completion_ids) > 0
        assert all(lp <= 0 for lp in node.logprobs)


def test_engines_sleep_while_agents_train_and_wake_before_generating(run):
    """Each engine sleeps once built; every search wakes its weights, loads them, wakes its KV cache, generates,
    then sleeps again; every update happens with every engine asleep."""
    _, events, engines, _, _ = run
    asleep = dict.fromkeys(engines, False)
    sequences = {name: [] for name in engines}
    for name, event in events:
        if event == "train":
            assert all(asleep.values()), "an agent trained while an engine was awake"
            continue
        sequences[name].append(event)
        if event in ("sleep", "wake_up:kv_cache"):
            asleep[name] = event == "sleep"
    searches = 3  # 2 training rounds + the search after train()
    cycle = ["wake_up:weights", "load_weights", "wake_up:kv_cache"]
    assert sum(e == "train" for _, e in events) >= 2
    for name, seq in sequences.items():
        assert seq[0] == "sleep"
        rounds = [seq[i:] for i, e in enumerate(seq) if e == "wake_up:weights"]
        assert len(rounds) == searches, (name, seq)
        for rest in rounds:
            assert rest[:3] == cycle, (name, rest)
            after = rest[3:]
            end = after.index("sleep")
            assert set(after[:end]) <= {"generate"}, (name, rest)


def test_loaded_weights_equal_the_trained_ones(run):
    """llama (full fine-tuning): each load after an update holds exactly that update's weights; qwen (LoRA): the
    last load holds W + ΔW under the base names, the training model never merged."""
    trainer, events, engines, trained, original_q = run
    llama = engines["llama"]
    seq = [e for n, e in events if n == "llama"]
    loads_after_updates = []
    updates_seen = 0
    for event in seq:
        if event == "train":
            updates_seen += 1
        elif event == "load_weights":
            loads_after_updates.append(updates_seen)
    assert updates_seen == len(trained["llama"]) >= 1
    for load, after in zip(llama.loads, loads_after_updates, strict=True):
        if after:
            expected = trained["llama"][after - 1]
            assert set(load) == set(expected)
            assert all(torch.equal(load[n], expected[n]) for n in expected)
    assert loads_after_updates[-1] == updates_seen  # the last load has the last update

    qwen = trainer.accelerator.unwrap_model(trainer.policies[0].model)
    q_proj = qwen.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(q_proj.base_layer.weight, original_q)
    delta = q_proj.get_delta_weight("default")
    assert delta.abs().max() > 0, "the adapter did not train"
    last = engines["qwen"].loads[-1]
    torch.testing.assert_close(last["model.layers.0.self_attn.q_proj.weight"], original_q + delta)
    base = dict(AutoModelForCausalLM.from_pretrained(engines["qwen"].kwargs["model"]).named_parameters())
    assert set(last) == set(base)


def test_without_sleep_mode_weights_load_only_after_updates(tiny_qwen2_path):
    """An awake engine (no sleep mode) keeps its weights: ``wake_up`` loads them only when the agent changed."""
    events: list = []
    engine = FakeEngine(events, model=tiny_qwen2_path, enable_sleep_mode=False)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    backend = VLLMColocateBackend(engine, tok, SamplingConfig(max_new_tokens=4), sleep_mode=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    assert backend.wake_up(model, stale=True) and backend.wake_up(model, stale=False) is False
    backend.sleep()  # no sleep mode: nothing
    out = backend.generate([[{"role": "user", "content": "hi"}]])
    assert len(out) == 1 and len(out[0].completion_ids) == len(out[0].logprobs) <= 4
    assert [e for _, e in events] == ["load_weights", "generate"]
    assert torch.equal(engine.params["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_sleeping_engine_refuses_to_generate(tiny_qwen2_path):
    engine = FakeEngine(model=tiny_qwen2_path, enable_sleep_mode=True)
    backend = VLLMColocateBackend(engine, AutoTokenizer.from_pretrained(tiny_qwen2_path), sleep_mode=True)
    assert backend.asleep and [e for _, e in engine.events] == ["sleep"]
    with pytest.raises(RuntimeError, match="asleep: call wake_up"):
        backend.generate([[{"role": "user", "content": "hi"}]])


def config(tmp_path, **kw) -> MultiAgentTreeConfig:
    return MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kw)


TWO = [{"name": "a", "model": "trl-mars/tiny-qwen2"}, {"name": "b", "model": "trl-mars/tiny-llama"}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vllm_tensor_parallel_size": 2}, r"vllm_tensor_parallel_size=2: colocated engines run with tensor "),
        ({"vllm_gpu_memory_utilization": 0.6}, r"vllm_gpu_memory_utilization=0.6: 2 colocated engines .* 1.20"),
        ({"vllm_gpu_memory_utilization": 0.0}, r"vllm_gpu_memory_utilization must be in \(0, 1\]"),
        ({"vllm_group_port": 52000}, r"vllm_group_port=52000 only applies with use_vllm=True and vllm_mode='server'"),
        (
            {"agents": [{**TWO[0], "vllm_server_base_url": "http://h:8000"}, TWO[1]]},
            r"agents\[0\]\.vllm_server_base_url: agents have no server with vllm_mode='colocate'",
        ),
    ],
)
def test_colocate_fields_checked_by_name(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{"use_vllm": True, "vllm_mode": "colocate", "agents": TWO, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vllm_enable_sleep_mode": True, "use_vllm": False},
        {"vllm_max_model_length": 256, "use_vllm": False},
        {"vllm_model_impl": "transformers", "use_vllm": True, "vllm_mode": "server"},
        {"vllm_gpu_memory_utilization": 0.5, "use_vllm": True, "vllm_mode": "server"},
    ],
)
def test_colocate_fields_refused_outside_colocate_mode(tmp_path, kwargs):
    name = next(k for k in kwargs if k.startswith("vllm_") and k != "vllm_mode")
    agents = [{**a, "vllm_server_base_url": f"http://h:800{i}"} for i, a in enumerate(TWO)]
    with pytest.raises(ValueError, match=rf"MultiAgentTreeConfig\.{name}=.* only applies with use_vllm=True and "):
        config(tmp_path, agents=agents, **kwargs)


def test_colocate_config_accepted(tmp_path):
    args = config(tmp_path, agents=TWO, **COLOCATE)
    assert args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode and args.vllm_max_model_length == 128
    with pytest.raises(ValueError, match="vllm_mode must be 'server' or 'colocate', got 'remote'"):
        config(tmp_path, use_vllm=True, vllm_mode="remote", agents=TWO)


def test_recipe_runs_colocated(tmp_path, monkeypatch, capsys):
    """``recipes/mars2.py`` as docs/mars2.md runs it colocated (the GPU check's command, shortened, with the fake
    engine): held-out search before and after training, both agents on their engines, asleep at the end."""
    engines = []

    def factory(**kwargs):
        engines.append(FakeEngine(**kwargs))
        return engines[-1]

    monkeypatch.setattr(MultiAgentTreeTrainer, "vllm_engine_factory", staticmethod(factory))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mars2.py"
    spec = importlib.util.spec_from_file_location("recipe_mars2_colocate", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = (
        "--warmup_steps_sft 0 --num_train_problems 2 --num_eval_problems 2 --eval_repeats 1 --eval_max_nodes 2 "
        "--max_nodes 2 --trees_per_step 1 --per_device_train_batch_size 1 --max_steps 1 --max_completion_length 8 "
        "--save_strategy no --use_vllm true --vllm_mode colocate --vllm_enable_sleep_mode true "
        f"--vllm_gpu_memory_utilization 0.2 --output_dir {tmp_path}"
    )
    monkeypatch.setattr(sys, "argv", ["mars2.py", *argv.split()])
    module.main()
    assert "Held-out problems: 2" in capsys.readouterr().out
    assert len(engines) == 2 and all(e.kwargs["gpu_memory_utilization"] == 0.2 for e in engines)
    for engine in engines:
        events = [e for _, e in engine.events]
        assert events[0] == events[-1] == "sleep" and "generate" in events
        assert events.count("wake_up:weights") == events.count("load_weights") == events.count("sleep") - 1 >= 3
