"""The MARS² configuration space, end to end: every configuration the docs or a shipped YAML name trains.

Each in-process run calls ``MultiAgentTreeTrainer.train()`` for 2 steps of one tiny tree and asserts that the
weights of every trainable agent move, those of a frozen agent do not, and the logged metrics are present and
finite. Independent options share runs; every value appears in at least one:

| option | values (run) |
|---|---|
| agent_mode | heterogeneous (A, C, E, F), homogeneous (B, D) |
| posterior | beta (A, D), gaussian (B, C) |
| selection_order | node_then_agent (A, C), agent_then_node (B, D) |
| importance_sampling_level | token (A, D), sequence (B, C) |
| loss_type | grpo (A), bnpo (B), dapo (C), dr_grpo (D) |
| agents | full (A, B), LoRA (C, D), frozen (C) |
| tplus | on (B), off (A, C, D) |
| reward_shaping / node_reward / feedback | tree_consistent (A, B, D), none (C) / pass, pass_fraction (B) / summary, detailed (B) |
| generation | transformers (A-E), vLLM colocate with sleep mode (F, fake engine: ``vllm_fakes.FakeEngine``) |
| other | cosine schedule (A), clip-higher + overlong penalty + problem-less refinements (C), no TIS + beta 0 + GEN only (D), filter_uniform_trees + per-agent learning_rate and loss_weight + real credit (E) |

Every ``recipes/configs/mars2_*.yaml`` is parsed by the recipe's own parser, its hub ids replaced by the tiny
models, and trained for one step (generation capped at a few tokens, as a real-scale budget would take hours on a
random tiny model), so a shipped config that cannot start fails CI. The two-process runs (``torchrun``) and
kill -9 + resume runs take both agent modes: homogeneous here, heterogeneous in ``test_mars2_distributed.py`` and
``test_mars2_resume.py`` (not repeated here, to keep CI short).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from trl import ScriptArguments

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search import SamplingConfig
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer
from trl_mars.utils.recipes import parse_recipe_args

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import check_kill_and_resume, force_advantages, run_ddp_worker, tiny_mars2_config  # noqa: E402
from vllm_fakes import FakeEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
SOLVER, DEBUGGER = "You write Python.", "You fix Python code."

RUNS = {
    "A-heter-beta-node_then_agent-token-grpo-full": dict(
        agents=[{"name": "qwen", "model": "qwen2"}, {"name": "llama", "model": "llama"}],
        posterior="beta",
        selection_order="node_then_agent",
        importance_sampling_level="token",
        loss_type="grpo",
        lr_scheduler_type="cosine",
    ),
    "B-homo-gaussian-agent_then_node-sequence-bnpo-tplus": dict(
        agents=[
            {"name": "solver", "model": "qwen2", "system_prompt": SOLVER},
            {"name": "debugger", "system_prompt": DEBUGGER},
        ],
        agent_mode="homogeneous",
        posterior="gaussian",
        selection_order="agent_then_node",
        importance_sampling_level="sequence",
        loss_type="bnpo",
        tplus=True,
        node_reward="pass_fraction",
        feedback="detailed",
    ),
    "C-heter-gaussian-sequence-dapo-lora-frozen": dict(
        agents=[
            {"name": "qwen", "model": "qwen2", "lora": LORA},
            {"name": "llama", "model": "llama", "trainable": False},
        ],
        posterior="gaussian",
        selection_order="node_then_agent",
        importance_sampling_level="sequence",
        loss_type="dapo",
        reward_shaping="none",
        epsilon_high=0.28,
        overlong_buffer=4,
        include_problem_in_refinement=False,
    ),
    "D-homo-beta-agent_then_node-token-dr_grpo-lora": dict(
        agents=[
            {"name": "solver", "model": "llama", "lora": LORA, "system_prompt": SOLVER},
            {"name": "debugger", "system_prompt": DEBUGGER},
        ],
        agent_mode="homogeneous",
        posterior="beta",
        selection_order="agent_then_node",
        importance_sampling_level="token",
        loss_type="dr_grpo",
        tis_cap=None,
        beta=0.0,
        max_depth=1,
    ),
    "E-heter-real-credit-filter-uniform-trees": dict(
        agents=[
            {"name": "qwen", "model": "qwen2", "learning_rate": 3e-3, "loss_weight": 2.0},
            {"name": "llama", "model": "llama"},
        ],
        filter_uniform_trees=True,
        lr_scheduler_type="constant",
    ),
    "F-heter-colocate-sleep-lora": dict(
        agents=[{"name": "qwen", "model": "qwen2", "lora": LORA}, {"name": "llama", "model": "llama"}],
        use_vllm=True,
        vllm_mode="colocate",
        vllm_enable_sleep_mode=True,
        vllm_gpu_memory_utilization=0.45,
    ),
}
REAL_CREDIT = {"E-heter-real-credit-filter-uniform-trees"}
"""Runs credited by the trainer itself: node rewards planted by node id (1, 0, 1 in a 3-node tree), so no tree is
uniform and the real shaped, tree-normalised advantages move the weights (the other runs force advantages, as a
random tiny model never passes a test)."""


def trainable_state(policy) -> dict[str, torch.Tensor]:
    model = getattr(policy.model, "module", policy.model)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("run", list(RUNS))
def test_configuration_trains(run, tmp_path, tiny_qwen2_path, tiny_llama_path, monkeypatch):
    fields = dict(RUNS[run])
    if fields.get("vllm_mode") == "colocate":  # no vLLM here: the fake engine over the same tiny checkpoint
        monkeypatch.setattr(MultiAgentTreeTrainer, "vllm_engine_factory", staticmethod(lambda **kw: FakeEngine(**kw)))
    paths = {"qwen2": tiny_qwen2_path, "llama": tiny_llama_path}
    agents = [{**a, "model": paths[a["model"]]} if "model" in a else a for a in fields.pop("agents")]
    args = tiny_mars2_config(
        tmp_path, agents, max_nodes=3, max_steps=2, max_completion_length=8, logging_steps=1, **fields
    )
    train, _ = code_task_splits(4, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    homogeneous = args.agent_mode == "homogeneous"
    assert len(trainer.policies) == (1 if homogeneous else 2)
    assert trainer.search.config.tplus == args.tplus and trainer.search.config.dist == args.posterior
    assert trainer.search.config.order == args.selection_order
    if run in REAL_CREDIT:
        trainer.node_reward = lambda node: float(node.node_id % 2)
    else:
        force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)  # random tiny models never pass a test
    before = {p.name: trainable_state(p) for p in trainer.policies}
    trainer.train()
    trainer.sandbox.close()
    if args.use_vllm:  # every agent generated on its colocated engine, asleep now that training is over
        engines = [b.engine for b in trainer.vllm_backends.values()]
        assert len(engines) == len(trainer.policies) and all(b.asleep for b in trainer.vllm_backends.values())
        assert all(any(e == "generate" for _, e in engine.events) for engine in engines)

    for policy in trainer.policies:
        after = dict(getattr(policy.model, "module", policy.model).named_parameters())
        moved = [k for k, v in before[policy.name].items() if not torch.equal(after[k].detach(), v)]
        if policy.trainable:
            assert policy.updates > 0 and moved, f"{policy.name} did not train"
            assert all(after[k].requires_grad for k in moved)  # LoRA: only the adapter moves
            if policy.is_peft:
                assert all("lora_" in k for k in moved)
        else:
            assert not moved and policy.optimizer is None and policy.updates == 0
    logs = [row for row in trainer.state.log_history if "reward" in row]
    assert len(logs) == 2
    for row in logs:
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        assert all(math.isfinite(v) for v in numbers.values()), numbers
        for key in ("reward", "search/pass@1", "search/pass@1(mcts)", "search/depth", "search/width"):
            assert key in row, (key, sorted(row))
    logged = set().union(*logs)
    for policy in trainer.policies:
        keys = {f"agents/{policy.name}/{k}" for k in ("loss", "learning_rate", "updates")}
        assert keys <= logged if policy.trainable else not keys & logged, (policy.name, sorted(logged))
    assert {k.split("/")[1] for k in logged if k.endswith("/share")} <= {s.name for s in trainer.specs}
    nodes = [n for t in trainer.last_trees for n in t.solutions]
    for spec in trainer.specs:
        if spec.learning_rate is not None:
            key = f"agents/{spec.name}/learning_rate"
            assert {row[key] for row in logs if key in row} == {spec.learning_rate}
    if run in REAL_CREDIT:
        assert all(row["reward"] == pytest.approx(2 / 3) for row in logs)  # the planted rewards were credited
    if args.max_depth == 1:
        assert all(n.depth == 1 for n in nodes)
    if homogeneous:
        prompts = {s.name: s.system_prompt for s in trainer.specs}
        assert all(n.prompt[0] == {"role": "system", "content": prompts[n.agent]} for n in nodes)


# ---------------------------------------------------------------------------------------------- shipped configs
HUB_SUBSTITUTES = {
    "Qwen/Qwen3-8B": "qwen3-like",
    "inclusionAI/AReaL-boba-2-8B": "llama",
    "trl-mars/smollm2-135m-instruct": "llama",  # the real one runs in the slow SmolLM2 tests and the RL run
}
"""Tiny stand-ins for the hub ids of the shipped configs; a config naming another id fails until it is added."""
NO_THINK = "<think>\n\n</think>\n\n"
QWEN3_GENERATION_PROMPT = (
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '" + NO_THINK.replace("\n", "\\n") + "' -}}"
    "{%- endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def qwen3_like(tmp_path_factory, tiny_qwen2_path) -> str:
    """The tiny Qwen2 with Qwen3's ``enable_thinking`` switch in its chat template (an empty think block when off)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen3_like") / "model"
    shutil.copytree(tiny_qwen2_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    template = tok.chat_template
    head = template[: template.index("{%- if add_generation_prompt")]
    tok.chat_template = head + QWEN3_GENERATION_PROMPT
    tok.save_pretrained(folder)
    return str(folder)


def recipe_module():
    spec = importlib.util.spec_from_file_location("recipe_mars2_matrix", ROOT / "recipes" / "mars2.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes" / "configs").glob("mars2_*.yaml")))
def test_shipped_config_starts(config, tmp_path, qwen3_like, tiny_llama_path, monkeypatch):
    recipe = recipe_module()
    path = ROOT / "recipes" / "configs" / config
    stand_ins = {"qwen3-like": qwen3_like, "llama": tiny_llama_path}
    agents = []
    for agent in yaml.safe_load(path.read_text())["agents"]:
        model = agent.get("model")
        if model in HUB_SUBSTITUTES or model and not model.startswith("trl-mars/"):
            assert model in HUB_SUBSTITUTES, f"{config}: add a tiny stand-in for {model!r} to HUB_SUBSTITUTES"
            agent = {**agent, "model": stand_ins[HUB_SUBSTITUTES[model]]}
        agents.append(agent)
    argv = ["--config", str(path), "--agents", json.dumps(agents), "--output_dir", str(tmp_path / "out")]
    argv += ["--report_to", "none", "--max_steps", "1", "--save_strategy", "no"]
    parsers = (ScriptArguments, MultiAgentTreeConfig, recipe.Mars2RecipeArguments)
    _, args, recipe_args = parse_recipe_args(parsers, recipe.DEFAULT_CONFIG, argv)
    recipe_args.warmup_steps_sft = 0  # the tiny default's 300 SFT steps are the recipe test's job
    train, _ = code_task_splits(args.trees_per_step, 0, seed=0)
    recipe.prepare_agents(args, recipe_args, train)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    real_scale = "qwen3" in config
    if real_scale:  # the authors ran Qwen3 in no-think mode (is_reasoning_model: false)
        assert args.chat_template_kwargs == {"enable_thinking": False}
    few_tokens = SamplingConfig(max_new_tokens=4, temperature=args.temperature, top_p=args.top_p)
    monkeypatch.setattr(trainer, "sampling_config", lambda: few_tokens)
    trainer.train()
    nodes = [n for t in trainer.last_trees for n in t.solutions]
    assert len(nodes) == args.trees_per_step * args.max_nodes
    if real_scale:
        tok = trainer.policies[0].tokenizer
        qwen3_nodes = [n for n in nodes if trainer.policy_of[n.agent] is trainer.policies[0]]
        assert qwen3_nodes and all(tok.decode(n.prompt_ids).endswith(NO_THINK) for n in qwen3_nodes)
    logs = [row for row in trainer.state.log_history if "reward" in row]
    assert logs and all(math.isfinite(v) for v in logs[0].values() if isinstance(v, float))
    bench = recipe.benchmark_split(recipe_args)  # a shipped eval_benchmark loads and is searched
    if bench is not None:
        assert len(bench) == recipe_args.eval_benchmark_limit
        assert 0 <= trainer.evaluate_search(bench.select([0]), max_nodes=1)["pass@n"] <= 1
    trainer.sandbox.close()


# ---------------------------------------------------------------------------------------------- processes
@pytest.mark.distributed
def test_two_processes_homogeneous(tmp_path, tiny_qwen2_path, tiny_llama_path):
    """torchrun, 2 CPU processes: one shared policy, DDP-wrapped, trained by both agents' nodes on both ranks,
    replicas equal; the held-out evaluation is sharded and gathered."""
    first, second = run_ddp_worker(tmp_path, tiny_qwen2_path, tiny_llama_path, "homogeneous")
    for rank in (first, second):
        assert list(rank["agents"]) == ["qwen"] and rank["agents"]["qwen"]["ddp"]
    assert set(first["nodes_by_agent"]) | set(second["nodes_by_agent"]) == {"qwen", "llama"}
    a, b = first["agents"]["qwen"], second["agents"]["qwen"]
    assert a["updates"] == b["updates"] >= 1
    assert a["checksum"] != pytest.approx(a["checksum_before"], rel=1e-9)
    assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-12, abs=0.0)
    assert first["eval_metrics"] == second["eval_metrics"]
    assert len(set(first["eval_problems"] + second["eval_problems"])) == 3


@pytest.mark.slow
def test_kill_and_resume_homogeneous(tmp_path, tiny_cache):
    check_kill_and_resume(tmp_path, tiny_cache, "homogeneous")
