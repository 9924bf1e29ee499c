"""``MultiAgentTreeTrainer``: MARS² multi-agent RL on a shared search tree, as a TRL trainer.

One training step is one search round. Each process takes ``trees_per_step`` problems; all agents grow one
AB-MCTS tree per problem together (``trl_mars.search``), every node is scored by the sandbox, credited with
tree-consistent reward shaping and the path-level group advantage (``trl_mars.rewards.tree_credit``), and filed
in the buffer of the trainable policy that wrote it. A policy updates when, on every process, its buffer holds
``per_device_train_batch_size * gradient_accumulation_steps`` nodes: ``num_iterations`` optimizer steps on them.
The loss clips against each node's old-policy log-probs (the trust region): computed with the training weights
before any update of the policy after the node was credited, so a node that waits in a buffer, or serves several
iterations, is clipped against the policy that wrote it; the sampler's own log-probs only weigh the sampler
mismatch (TIS). Agent 0 is ``self.model``, so the Trainer's logging, evaluation hooks and model card keep working;
every policy (agent 0 included) owns its optimizer, scheduler (stepped once per Trainer step, so it spans the run
whatever the policy's update count), reference model and update counter.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from torch.utils.data import RandomSampler, SequentialSampler
from transformers import get_scheduler
from transformers.trainer import SCHEDULER_NAME
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, disable_dropout_in_model, pad, use_adapter

import trl_mars.models.moda  # noqa: F401 - registers model_type "moda": MoDA checkpoints load by path
from trl_mars.losses.policy import PolicyLossConfig, policy_loss
from trl_mars.rewards.code import check_tests_column, make_code_reward
from trl_mars.rewards.tree_credit import overlong_penalty, tree_consistent_rewards, tree_group_advantages
from trl_mars.sandbox import Sandbox, SandboxConfig
from trl_mars.sandbox.remote import open_sandbox
from trl_mars.search import SandboxVerifier, SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.backends import SamplingConfig, TransformersBackend, VLLMServerBackend
from trl_mars.search.metrics import TieBreak, agent_shares, mean_metrics, tree_metrics
from trl_mars.search.problems import from_row
from trl_mars.search.prompts import PromptConfig
from trl_mars.search.reward_model import RewardModel, resolve_reward_model
from trl_mars.search.tree import ROOT, Node, SearchTree
from trl_mars.search.vllm_colocate import VLLMColocateBackend, VLLMEngine
from trl_mars.trainers.mars2_agents import (
    Policy,
    load_policy_weights,
    load_tokenizer,
    lora_config,
    model_init_kwargs,
    save_policy,
    unwrap,
)
from trl_mars.trainers.mars2_config import (
    AgentSpec,
    MultiAgentTreeConfig,
    check_colocate_memory,
    check_deepspeed_agents,
    sandbox_fusion_config,
)
from trl_mars.utils.checkpoint import MethodStateMixin
from trl_mars.utils.fsdp import load_optimizer, save_optimizer, wrap_own_layers
from trl_mars.utils.model_card import write_model_card
from trl_mars.utils.recipes import resolve_model_path

_LOGPS_PARAMS = {"model", "input_ids", "attention_mask", "logits_to_keep", "compute_entropy"}


def _check_trl_api() -> None:
    """The one private TRL method we call must still take the arguments we pass."""
    params = set(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    if not _LOGPS_PARAMS <= params:
        raise ImportError(
            f"trl {__import__('trl').__version__}: GRPOTrainer._get_per_token_logps_and_entropies lacks "
            f"{sorted(_LOGPS_PARAMS - params)}; trl-mars supports trl>=1.16,<1.17"
        )


def check_dataset(dataset: Dataset | None, tests_column: str, name: str) -> None:
    """Fail before any model is loaded when the dataset lacks what the search needs."""
    if dataset is None:
        return
    columns = set(dataset.column_names or [])
    for column in ("prompt", tests_column):
        if column not in columns:
            raise ValueError(f"{name} is missing the column {column!r} (columns: {sorted(columns)})")
    check_tests_column(dataset, tests_column, name)
    if "private_tests" in columns:
        check_tests_column(dataset, "private_tests", name, optional=True)


class NoOpOptimizer(torch.optim.Optimizer):
    """An optimizer whose ``step`` changes nothing (the Trainer steps it; the agents' own optimizers do the work)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    def step(self, closure: Any = None) -> Any:
        return closure() if closure is not None else None


class MultiAgentTreeTrainer(MethodStateMixin, GRPOTrainer):
    """Train several LLM agents on a shared MARS² search tree of code solutions.

    Args:
        model: one model id/path/instance per agent (a list), or None when ``args.agents`` names them.
        args: [`MultiAgentTreeConfig`].
        train_dataset: rows with a ``prompt`` (text or conversation) and ``args.tests_column`` (assert lines,
            HumanEval ``check`` code, or stdin/stdout cases: whatever ``trl_mars.sandbox`` accepts).
        processing_class: tokenizer(s) matching ``model`` when instances are passed.
        sandbox: a running [`~trl_mars.sandbox.Sandbox`] to share; by default one is started from ``args`` (a
            [`~trl_mars.sandbox.remote.RemoteSandbox`] with ``verifier='sandbox_fusion'``).
    """

    _tag_names = ["trl", "trl-mars", "mars2", "multi-agent", "tree-search", "code"]
    vllm_engine_factory = staticmethod(VLLMEngine)
    """Builds each agent's colocated engine from ``colocate_engine_kwargs`` (``vllm_mode='colocate'``)."""
    _name = "MARS²"
    _paper = {
        "title": "MARS²: Scaling Multi-Agent Tree Search via Reinforcement Learning for Code Generation",
        "id": "2604.14564",
        "citation": (
            "@article{mars2_2026,\n  title={{MARS$^2$: Scaling Multi-Agent Tree Search via Reinforcement Learning "
            "for Code Generation}},\n  journal={arXiv preprint arXiv:2604.14564},\n  year={2026}\n}"
        ),
    }

    def __init__(
        self,
        model: Any = None,
        args: MultiAgentTreeConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        _check_trl_api()
        args = (args or MultiAgentTreeConfig(output_dir="mars2-output")).trainer_arguments()
        specs, models, tokenizers = self._resolve_agents(model, processing_class, args)
        check_deepspeed_agents(args, specs)  # agents passed as models: the config could not count them
        check_dataset(train_dataset, args.tests_column, "train_dataset")
        check_dataset(eval_dataset, args.tests_column, "eval_dataset")
        homogeneous = args.agent_mode == "homogeneous"
        owners = specs[:1] if homogeneous else specs  # one policy per distinct set of weights
        tokenizers = [
            tok if tok is not None else load_tokenizer(s, i) for i, (s, tok) in enumerate(zip(owners, tokenizers))
        ]
        # opened before any model loads: an unreachable SandboxFusion URL fails here
        workers = {"concurrency": args.sandbox_workers} if args.sandbox_workers else {}
        self.sandbox = sandbox or open_sandbox(
            SandboxConfig(timeout_s=args.sandbox_timeout, **workers), sandbox_fusion_config(args)
        )
        first = models[0] or create_model_from_path(
            resolve_model_path(owners[0].model), **model_init_kwargs(owners[0], args.model_init_kwargs)
        )
        use_vllm, args.use_vllm = args.use_vllm, False  # GRPOTrainer would connect agent 0 only; we connect each
        try:
            super().__init__(
                model=first,
                reward_funcs=make_code_reward("binary", self.sandbox, args.tests_column),  # GRPO-style eval, agent 0
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizers[0],
                callbacks=callbacks,
                peft_config=lora_config(owners[0]),
            )
        finally:
            args.use_vllm = use_vllm
        agent_names = [s.name for s in specs]
        self.policies = [
            Policy(
                owners[0].name,
                agent_names if homogeneous else [owners[0].name],
                owners[0],
                self.model,
                tokenizers[0],
                self.ref_model,
            )
        ]
        for i, spec in enumerate(owners[1:], start=1):
            self.policies.append(self._load_policy(spec, models[i], tokenizers[i]))
        self.policy_of = {name: p for p in self.policies for name in p.agents}
        self.specs = specs
        self.loss_config: PolicyLossConfig = args.policy_loss_config()
        self._agent_lrs: dict[str, float] = {}
        self.search = TreeSearch(
            {name: None for name in agent_names},  # backends are bound to the live models every round
            SandboxVerifier(self.sandbox),
            self.search_config(),
            seed=args.seed + self.accelerator.process_index,
            system_prompts={s.name: s.system_prompt for s in specs},
            sync=self._max_over_processes if self.lockstep else None,
        )
        if args.generation_batching == "refill" and self.lockstep:
            raise ValueError("MultiAgentTreeConfig.generation_batching='refill' cannot run agents FSDP shards over "
                             "processes (each forward is a collective): use 'lockstep' or None")  # fmt: skip
        self.last_trees: list[SearchTree] = []
        self._reward_model: RewardModel | None = None  # eval_reward_model, loaded at the first evaluate_search
        self._optimizers_ready = False
        self.vllm_backends = self._connect_vllm() if args.use_vllm else {}
        self._vllm_stale = set(self.vllm_backends)  # the servers hold the base weights until the first push
        wrap_own_layers(self.accelerator, self.model)  # the Trainer prepares the first agent's model in train()

    @property
    def lockstep(self) -> bool:
        """Whether generation is a collective: FSDP shards the agents across several processes, so each forward
        all-gathers weights and every process must make the same generation calls (see ``TreeSearch(sync=...)``)."""
        return self.is_fsdp_enabled and self.accelerator.num_processes > 1

    def _max_over_processes(self, value: int) -> int:
        return int(self.accelerator.gather(torch.tensor([value], device=self.accelerator.device)).max())

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _resolve_agents(model: Any, processing_class: Any, args: MultiAgentTreeConfig):
        """(specs, model instances or None, tokenizers or None), one entry per agent, validated."""
        if args.agent_specs and model is not None:
            raise ValueError("pass the agents' models either as `model` or in `args.agents`, not both")
        if args.agent_specs:
            n = len(args.agent_specs)
            return list(args.agent_specs), [None] * n, [None] * n
        if model is None:
            raise ValueError("no agent: pass `model` (one per agent) or set `args.agents`")
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if args.agent_mode == "homogeneous" and len(models) > 1:
            raise ValueError(
                f"agent_mode='homogeneous' shares one set of weights: pass one model, not {len(models)} (name the "
                "agents, with their system prompts, in args.agents)"
            )
        tokenizers = list(processing_class) if isinstance(processing_class, (list, tuple)) else [processing_class]
        tokenizers += [None] * (len(models) - len(tokenizers))
        specs = []
        for i, m in enumerate(models):
            ref = m if isinstance(m, str) else unwrap(m).config._name_or_path
            specs.append(AgentSpec(name=f"agent{i}", model=ref))
            if not isinstance(m, str) and tokenizers[i] is None:
                raise ValueError(f"model[{i}] is an instance: pass its tokenizer in processing_class[{i}]")
            if tokenizers[i] is not None and not tokenizers[i].chat_template:
                raise ValueError(f"processing_class[{i}] has no chat template")
        return specs, [None if isinstance(m, str) else m for m in models], tokenizers

    def _load_policy(self, spec: AgentSpec, model: Any, tokenizer: Any) -> Policy:
        """Load an extra agent the way GRPOTrainer loads ``self.model``: fused LM head, PEFT, reference model."""
        args = self.args
        path = resolve_model_path(spec.model)
        model = model or create_model_from_path(path, **model_init_kwargs(spec, args.model_init_kwargs))
        add_fused_lm_head(model, temperature=self.temperature, outputs=("log_probs", "entropy"))
        peft = lora_config(spec)
        if peft is not None:
            from peft import get_peft_model, prepare_model_for_kbit_training

            if spec.load_in_4bit:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
            model = get_peft_model(model, peft)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        if args.gradient_checkpointing:
            unwrap(model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs
            )
        ref = None
        if self.beta != 0.0 and peft is None:
            ref = create_model_from_path(path, **model_init_kwargs(spec, args.model_init_kwargs))
            add_fused_lm_head(ref, temperature=self.temperature)
            disable_dropout_in_model(ref)
            ref = self.accelerator.prepare_model(ref, evaluation_mode=True)
        model = model.to(self.accelerator.device)
        return Policy(spec.name, [spec.name], spec, model, tokenizer, ref)

    def _connect_vllm(self) -> dict[str, VLLMServerBackend | VLLMColocateBackend]:
        """One vLLM backend per policy: a ``trl vllm-serve`` client (server mode; the main process opens the
        weight-transfer group), or an engine in this process (colocate mode)."""
        if self.is_deepspeed_enabled:
            raise ValueError("use_vllm: loading DeepSpeed-partitioned weights into vLLM is not supported; use FSDP2")
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if plugin is not None and plugin.fsdp_version != 2:
            raise ValueError("use_vllm: weights are gathered for vLLM from FSDP2 shards only; set fsdp_version: 2")
        if self.args.vllm_mode == "colocate":
            check_colocate_memory(self.args, len(self.policies))
            return {
                policy.name: VLLMColocateBackend(
                    self.vllm_engine_factory(**self.colocate_engine_kwargs(policy)),
                    policy.tokenizer,
                    self.sampling_config(),
                    self.chat_template_kwargs or {},
                    sleep_mode=self.args.vllm_enable_sleep_mode,
                )
                for policy in self.policies
            }
        backends = {}
        for i, policy in enumerate(self.policies):
            spec = policy.spec
            backends[policy.name] = VLLMServerBackend.connect(
                spec.vllm_server_base_url,
                policy.tokenizer,
                group_port=spec.vllm_group_port or self.args.vllm_group_port + i,
                timeout=self.args.vllm_server_timeout,
                sampling=self.sampling_config(),
                chat_template_kwargs=self.chat_template_kwargs or {},
            )
            if self.accelerator.is_main_process:
                backends[policy.name].client.init_communicator(device=self.accelerator.device)
        return backends

    def colocate_engine_kwargs(self, policy: Policy) -> dict[str, Any]:
        """What ``vllm_engine_factory`` gets for ``policy``'s engine: the checkpoint it starts from (its base
        weights; the trained ones are loaded before each search), the ``vllm_*`` colocate fields, the training
        dtype, a per-process seed, and this process's place in the launch (vLLM's external launcher)."""
        args, acc = self.args, self.accelerator
        return {
            "model": resolve_model_path(policy.spec.model),
            "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
            "enable_sleep_mode": args.vllm_enable_sleep_mode,
            "max_model_len": args.vllm_max_model_length,
            "model_impl": args.vllm_model_impl,
            "dtype": str(next(unwrap(policy.model).parameters()).dtype).removeprefix("torch."),
            "seed": args.seed + acc.process_index,
            "rank": acc.process_index,
            "local_rank": acc.local_process_index,
            "world_size": acc.num_processes,
        }

    def _sync_vllm_weights(self, policies: Sequence[Policy]) -> None:
        """Before ``policies`` generate: each server gets the weights of a policy updated since its last push
        (bucketed, gathered from FSDP2 shards as sent; every process takes part, the main one streams), and each
        colocated engine wakes up and loads them (all of them after sleeping, which discarded them)."""
        pushed = False
        for policy in policies:
            backend = self.vllm_backends.get(policy.name)
            if backend is None:
                continue
            model = self.accelerator.unwrap_model(policy.model)
            stale = policy.name in self._vllm_stale
            if isinstance(backend, VLLMColocateBackend):
                backend.wake_up(model, stale, self.accelerator.device)
            elif stale:
                bucket = int(self.args.vllm_weight_sync_bucket_mb * 2**20)
                backend.push_weights(model, self.accelerator.is_main_process, bucket, self.accelerator.device)
                pushed = True
            self._vllm_stale.discard(policy.name)
        if pushed:
            self.accelerator.wait_for_everyone()  # no rank generates from the old weights

    def _sleep_vllm(self, policies: Sequence[Policy]) -> None:
        """With sleep mode, the colocated engines of ``policies`` free their memory for training."""
        for policy in policies:
            backend = self.vllm_backends.get(policy.name)
            if isinstance(backend, VLLMColocateBackend):
                backend.sleep()

    def sampling_config(self) -> SamplingConfig:
        """How every agent samples: ``max_completion_length``, ``temperature``, ``top_p``, ``top_k``, ``min_p``,
        ``repetition_penalty`` and ``generation_kwargs`` of the config."""
        args = self.args
        return SamplingConfig(
            max_new_tokens=args.max_completion_length,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k or 0,
            repetition_penalty=args.repetition_penalty,
            min_p=args.min_p,
            generation_kwargs=args.generation_kwargs,
        )

    def search_config(self, **overrides: Any) -> SearchConfig:
        args = self.args
        prompt = PromptConfig(feedback=args.feedback, include_problem=args.include_problem_in_refinement)
        fields = dict(
            max_nodes=args.max_nodes,
            dist=args.posterior,
            order=args.selection_order,
            prompt=prompt,
            max_depth=args.max_depth,
            tplus=args.tplus,
            mode=args.search_mode,
            max_inflight=args.max_inflight,
        )
        return SearchConfig(**{**fields, **overrides})

    def create_optimizer(self, model=None):  # noqa: ANN001 - transformers' signature
        """The Trainer's own optimizer changes no weight: each policy steps its own optimizer in ``training_step``.
        It holds one parameter of the first agent's model because accelerate prepares it together with that model,
        and under FSDP2 maps each optimizer parameter to its shard."""
        if self.optimizer is None:
            self.optimizer = NoOpOptimizer([next(self.model.parameters())], lr=self.args.learning_rate)
        return self.optimizer

    def policy_optimizer(self, policy: Policy) -> torch.optim.Optimizer:
        """``policy``'s optimizer as ``Trainer.create_optimizer`` builds one (``optim``, ``optim_args``, no weight decay
        on biases and norms), at the agent's own learning rate when its spec sets one."""
        trainer_optimizer, self.optimizer = self.optimizer, None
        try:
            optimizer = super().create_optimizer(unwrap(policy.model))
        finally:
            self.optimizer = trainer_optimizer
        if policy.spec.learning_rate is not None:
            for group in optimizer.param_groups:
                group["lr"] = policy.spec.learning_rate
        return optimizer

    def _ensure_policy_optimizers(self) -> None:
        """Create, prepare and (on resume) restore every trainable policy's optimizer and scheduler."""
        if self._optimizers_ready:
            return
        args = self.args
        total = self.state.max_steps
        for i, policy in enumerate(self.policies):
            if not policy.trainable:
                unwrap(policy.model).requires_grad_(False)
                continue
            policy.optimizer = self.policy_optimizer(policy)
            policy.scheduler = get_scheduler(
                args.lr_scheduler_type,
                policy.optimizer,
                args.get_warmup_steps(total),
                total,
                scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
            )
            if i == 0:
                policy.model = self.model_wrapped
                policy.optimizer = self.accelerator.prepare_optimizer(policy.optimizer)
            else:
                wrap_own_layers(self.accelerator, policy.model)
                policy.model, policy.optimizer = self.accelerator.prepare(policy.model, policy.optimizer)
            if self.resumed_from:
                folder = Path(self.resumed_from) / "agents" / policy.name
                load_optimizer(self.accelerator, policy.optimizer, policy.model, folder)
                policy.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        self._optimizers_ready = True

    # ------------------------------------------------------------------ data
    def _get_train_sampler(self, dataset: Dataset | None = None):
        dataset = dataset if dataset is not None else self.train_dataset
        if not self.shuffle_dataset:
            return SequentialSampler(dataset)
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(self.args.seed))

    def get_train_dataloader(self):
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.args.trees_per_step,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def problems(self, rows: Sequence[dict]) -> list[SearchProblem]:
        return [from_row(row, i, self.args.tests_column) for i, row in enumerate(rows)]

    # ------------------------------------------------------------------ rollout
    def run_search(
        self, problems: list[SearchProblem], config: SearchConfig | None = None, agents: Sequence[str] | None = None
    ) -> list[SearchTree]:
        """Grow trees for ``problems`` with the live models of ``agents`` (default: all)."""
        names = list(agents or self.policy_of)
        sampling = self.sampling_config()
        policies = list({id(self.policy_of[n]): self.policy_of[n] for n in names}.values())
        self._sync_vllm_weights(policies)
        with ExitStack() as stack:
            backends = {}
            for policy in policies:
                if policy.name in self.vllm_backends:
                    backends[id(policy)] = self.vllm_backends[policy.name]
                    continue
                live = stack.enter_context(
                    unwrap_model_for_generation(
                        policy.model,
                        self.accelerator,
                        gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                    )
                )
                backends[id(policy)] = TransformersBackend(
                    live,
                    policy.tokenizer,
                    sampling,
                    self.chat_template_kwargs or {},
                    synced_gpus=self.lockstep or None,
                    batching=self.args.generation_batching,
                )
            self.search.agents = {n: backends[id(self.policy_of[n])] for n in names}
            self.search.system_prompts = {n: self.search.system_prompts.get(n) for n in names}
            if config is not None:
                saved, self.search.config = self.search.config, config
            try:
                trees = self.search.run(
                    problems, self.search.new_trees(problems, prefix=f"s{self.state.global_step}-")
                )
            finally:
                if config is not None:
                    self.search.config = saved
                self._sleep_vllm(policies)
        return trees

    def node_reward(self, node: Node) -> float:
        """Raw reward of a node: 1 iff every public test passes (``node_reward='pass'``), or the share of them
        that pass (``'pass_fraction'``)."""
        return node.score if self.args.node_reward == "pass" else node.pass_fraction

    def credit(self, trees: Sequence[SearchTree]) -> list[dict]:
        """One sample per node: its shaped reward and tree-normalised advantage (pure tree_credit functions)."""
        args = self.args
        nodes, tree_ids, node_rewards, rewards = [], [], [], []
        for tree in trees:
            sols = tree.solutions
            raw = [self.node_reward(n) for n in sols]
            node_rewards += raw
            if args.reward_shaping == "tree_consistent":
                raw = tree_consistent_rewards(
                    [n.node_id for n in sols],
                    [n.parent_id for n in sols],
                    raw,
                    args.shaping_gamma,
                    args.shaping_lambda,
                    ROOT,
                )
            if args.overlong_buffer:
                pen = overlong_penalty(
                    [len(n.completion_ids) for n in sols],
                    args.max_completion_length,
                    args.overlong_buffer,
                    args.overlong_penalty_factor,
                )
                raw = [r + p for r, p in zip(raw, pen)]
            nodes += sols
            tree_ids += [tree.tree_id] * len(sols)
            rewards += raw
        batch = None
        if args.scale_rewards == "batch" and self.accelerator.num_processes > 1:  # TRL's batch: every process
            batch = [r for part in gather_object([rewards]) for r in part]
        advantages, informative = tree_group_advantages(
            tree_ids, rewards, args.advantage_epsilon, args.scale_rewards, batch
        )
        samples = []
        for node, tree_id, node_reward, reward, adv, keep in zip(
            nodes, tree_ids, node_rewards, rewards, advantages.tolist(), informative.tolist()
        ):
            if args.filter_uniform_trees and not keep:
                continue
            samples.append(
                {
                    "agent": node.agent,
                    "tree_id": tree_id,
                    "prompt_ids": node.prompt_ids,
                    "completion_ids": node.completion_ids,
                    "logprobs": node.logprobs,
                    "reward": node_reward,
                    "shaped_reward": reward,
                    "advantage": adv,
                }
            )
        return samples

    def _log_round(self, trees: Sequence[SearchTree], samples: Sequence[dict]) -> None:
        for tree in trees:
            for node in tree.solutions:
                node.private_score = node.score  # training problems: the search sees every test
        metrics = mean_metrics([tree_metrics(t) for t in trees])
        shares = agent_shares(trees)
        local = {
            **{f"search/{k}": v for k, v in metrics.items()},
            **{f"agents/{a}/share": s for a, s in shares.items()},
        }
        local["reward"] = sum(self.node_reward(n) for t in trees for n in t.solutions) / max(1, sum(map(len, trees)))
        for name in self.policy_of:
            own = [s["reward"] for s in samples if s["agent"] == name]
            if own:
                local[f"agents/{name}/reward"] = sum(own) / len(own)
        for entries in gather_object([local]):
            for key, value in entries.items():
                self._metrics["train"][key].append(value)

    # ------------------------------------------------------------------ optimisation
    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - transformers' signature
        self._ensure_policy_optimizers()
        for policy in self.policies:
            policy.model.train()
        trees = self.run_search(self.problems(inputs))
        samples = self.credit(trees)
        for sample in samples:
            policy = self.policy_of[sample["agent"]]
            if policy.trainable:  # a frozen agent's nodes shape the tree's credit, but nothing learns from them
                policy.buffer.append(sample)
        self._log_round(trees, samples)
        self.last_trees = list(trees) if self.args.save_trees else []
        losses = []
        batch = self.args.per_device_train_batch_size * self.args.agent_gradient_accumulation_steps
        for policy in self.policies:
            while policy.trainable and self._ready(policy, batch):
                chunk, policy.buffer = policy.buffer[:batch], policy.buffer[batch:]
                losses.append(self._update(policy, chunk))
        for policy in self.policies:  # one scheduler step per Trainer step: each schedule spans exactly the run
            if policy.scheduler is not None:
                self._agent_lrs[policy.name] = policy.scheduler.get_last_lr()[0]  # the rate this step used
                with warnings.catch_warnings():  # a step without an update of this agent is intended, not skipped
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
                    policy.scheduler.step()
        self._step += 1
        return torch.tensor(sum(losses) / len(losses) if losses else 0.0, device=self.accelerator.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """GRPOTrainer's log, plus ``agents/<name>/learning_rate``: the rate each agent's schedule gave the last
        step, as the Trainer logs its own ``learning_rate`` (not an average over the logging window)."""
        if "learning_rate" in logs:
            logs.update({f"agents/{name}/learning_rate": lr for name, lr in self._agent_lrs.items()})
        super().log(logs, start_time)

    def _ready(self, policy: Policy, batch: int) -> bool:
        """True when every process holds a full batch for ``policy`` (so all ranks update it together)."""
        size = torch.tensor([len(policy.buffer)], device=self.accelerator.device)
        return int(self.accelerator.gather(size).min()) >= batch

    def is_masked(self, policy: Policy, sample: dict) -> bool:
        """``mask_truncated_completions``: a completion that ends in neither EOS nor padding (it hit
        ``max_completion_length``) is left out of the loss, as in GRPOTrainer."""
        if not self.args.mask_truncated_completions or not sample["completion_ids"]:
            return False
        return sample["completion_ids"][-1] not in (policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id)

    def collate(self, policy: Policy, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Left-padded prompts and right-padded completions, as GRPOTrainer lays them out (``pad_to_multiple_of``
        honoured). ``old_per_token_logps`` holds the nodes' old-policy log-probs where recorded; ``fresh`` marks
        the nodes without (no update since they were drawn: their old policy is the current one)."""
        device = self.accelerator.device
        pad_id = policy.tokenizer.pad_token_id
        multiple = self.pad_to_multiple_of
        prompt = [torch.tensor(s["prompt_ids"]) for s in samples]
        completion = [torch.tensor(s["completion_ids"]) for s in samples]
        sampling = [torch.tensor(s["logprobs"], dtype=torch.float32) for s in samples]
        masks = [torch.full_like(c, 0 if self.is_masked(policy, s) else 1) for s, c in zip(samples, completion)]
        out = {
            "prompt_ids": pad(prompt, pad_id, "left", pad_to_multiple_of=multiple),
            "prompt_mask": pad([torch.ones_like(p) for p in prompt], 0, "left", pad_to_multiple_of=multiple),
            "completion_ids": pad(completion, pad_id, "right", pad_to_multiple_of=multiple),
            "completion_mask": pad(masks, 0, "right", pad_to_multiple_of=multiple),
            "advantages": torch.tensor([s["advantage"] for s in samples], dtype=torch.float32),
        }
        if all(len(s) == len(c) for s, c in zip(sampling, completion)):
            out["sampling_per_token_logps"] = pad(sampling, 0.0, "right", pad_to_multiple_of=multiple)
        if any("old_logps" in s for s in samples):
            old = [torch.tensor(s.get("old_logps", [0.0] * len(s["completion_ids"]))) for s in samples]
            out["old_per_token_logps"] = pad(old, 0.0, "right", pad_to_multiple_of=multiple)
            out["fresh"] = torch.tensor(["old_logps" not in s for s in samples])
        return {k: v.to(device) for k, v in out.items()}

    def _logps(self, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model, ids, mask, inputs["completion_ids"].size(1), compute_entropy=False
        )
        return logps

    def _reference_logps(self, policy: Policy, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.beta == 0.0:
            return None
        with torch.no_grad():
            if policy.ref_model is not None:
                return self._logps(policy.ref_model, inputs)
            base = self.accelerator.unwrap_model(policy.model)
            with use_adapter(base, adapter_name="ref" if "ref" in base.peft_config else None):
                return self._logps(policy.model, inputs)

    def policy_micro_loss(
        self, policy: Policy, inputs: dict[str, torch.Tensor], num_items: float
    ) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch of ``policy`` (also used by the equivalence tests against GRPOTrainer)."""
        logps = self._logps(policy.model, inputs)
        old = inputs.get("old_per_token_logps")
        if old is not None:  # fresh nodes: the current policy wrote them (TRL's per_token_logps.detach())
            old = torch.where(inputs["fresh"].unsqueeze(1), logps.detach(), old)
        return policy_loss(
            logps,
            inputs["advantages"],
            inputs["completion_mask"],
            self.loss_config,
            old_per_token_logps=old,
            ref_per_token_logps=self._reference_logps(policy, inputs),
            sampling_per_token_logps=inputs.get("sampling_per_token_logps"),
            num_items=num_items,
        )

    @torch.no_grad()
    def record_old_logps(self, policy: Policy, samples: Sequence[dict], spare: Sequence[dict]) -> None:
        """Store, in every sample of ``samples`` that has none, its log-probs under ``policy``'s current weights
        (``old_logps``, TRL's ``old_per_token_logps``: training forward, same temperature). Call before ``policy``
        changes. The unwrapped model keeps DDP out of it (no collective); under FSDP every forward is one, so all
        processes run as many micro-batches as the busiest (``spare``, a non-empty batch, fills the gap)."""
        pending = [s for s in samples if "old_logps" not in s]
        micro = self.args.per_device_train_batch_size
        rounds = math.ceil(len(pending) / micro)
        if self.lockstep:
            rounds = self._max_over_processes(rounds)
        model = self.accelerator.unwrap_model(policy.model)
        for i in range(rounds):
            chunk = pending[i * micro : (i + 1) * micro]
            inputs = self.collate(policy, chunk or spare[:1])
            logps = self._logps(model, inputs).float().cpu()
            for sample, row in zip(chunk, logps):
                sample["old_logps"] = row[: len(sample["completion_ids"])].tolist()

    def _update(self, policy: Policy, samples: list[dict]) -> float:
        """``num_iterations`` optimizer steps of ``policy`` on ``samples`` (micro-batches of
        per_device_train_batch_size), after recording the old-policy log-probs of every node the steps make stale:
        those left in the buffer, and ``samples`` themselves when there are several iterations."""
        iterations = self.args.num_iterations
        self.record_old_logps(policy, policy.buffer + (samples if iterations > 1 else []), samples)
        micro = self.args.per_device_train_batch_size
        chunks = [samples[i : i + micro] for i in range(0, len(samples), micro)]
        count = sum(0 if self.is_masked(policy, s) else len(s["completion_ids"]) for s in samples)
        tokens = torch.tensor(float(count), device=self.accelerator.device)
        num_items = float(self.accelerator.reduce(tokens, reduction="sum")) / self.accelerator.num_processes
        total = 0.0
        for _ in range(iterations):
            total, stats_sum = 0.0, {}
            for chunk in chunks:
                loss, stats = self.policy_micro_loss(policy, self.collate(policy, chunk), num_items)
                if self.loss_config.loss_type != "dapo":
                    loss = loss / len(chunks)
                loss = loss * policy.spec.loss_weight
                self.accelerator.backward(loss)
                total += float(loss.detach())
                for k, v in stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + float(v) / len(chunks)
            if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                norm = self.accelerator.clip_grad_norm_(policy.model.parameters(), self.args.max_grad_norm)
                stats_sum["grad_norm"] = float(norm)
            policy.optimizer.step()
            policy.optimizer.zero_grad(set_to_none=True)
            policy.updates += 1
            prefix = f"agents/{policy.name}"
            for k, v in {**stats_sum, "loss": total, "updates": policy.updates}.items():
                self._metrics["train"][f"{prefix}/{k}"].append(v)
        if policy.name in self.vllm_backends:
            self._vllm_stale.add(policy.name)
        return total

    # ------------------------------------------------------------------ evaluation
    def evaluate_search(
        self,
        dataset: Dataset,
        max_nodes: int | None = None,
        mode: str | None = None,
        tplus: bool | None = None,
        reward_model: str | RewardModel | None = None,
        tie_break: TieBreak | None = None,
    ) -> dict[str, float]:
        """Held-out Pass@1 / Pass@1(MCTS) / Pass@N with the current agents (``system``: one joint tree per
        problem; ``agent``: one tree per agent, metrics per agent). Tests in ``private_tests`` grade, when present.

        Every argument left None takes its ``eval_*`` config field. ``reward_model`` (a sequence-classification
        model id/path, or a callable ``(question, node) -> float``) picks each tree's submitted node among those
        with the best public score (``select_final``). Under DDP/FSDP the problems are sharded across processes
        (each is searched once; in FSDP lockstep every process still takes part in each forward) and the metrics
        are averaged over all problems, so every process returns the same numbers."""
        args = self.args
        mode = mode or args.eval_mode
        if mode not in ("system", "agent"):
            raise ValueError(f"mode must be 'system' or 'agent', got {mode!r}")
        check_dataset(dataset, args.tests_column, "dataset")
        tie_break = tie_break or args.eval_tie_break
        rm = self._eval_reward_model(reward_model)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        problems = self.problems(list(dataset))[rank::world]
        config = self.search_config(
            max_nodes=max_nodes or args.eval_max_nodes or args.max_nodes,
            tplus=args.eval_tplus if tplus is None else tplus,
        )
        groups = {"system": list(self.policy_of)} if mode == "system" else {a: [a] for a in self.policy_of}
        out = {}
        for label, agents in groups.items():
            trees = self.run_search(problems, config, agents)
            self.search.grade(problems, trees)
            local = [tree_metrics(t, tie_break, rm, p.question) for p, t in zip(problems, trees, strict=True)]
            per_tree = [m for shard in gather_object([local]) for m in shard]
            prefix = "" if mode == "system" else f"{label}/"
            out.update({f"{prefix}{k}": v for k, v in mean_metrics(per_tree).items()})
        return out

    def _eval_reward_model(self, reward_model: str | RewardModel | None) -> RewardModel | None:
        """The reward model of ``evaluate_search``: the argument, else ``eval_reward_model`` (loaded once)."""
        if reward_model is not None:
            return resolve_reward_model(reward_model, self.accelerator.device)
        if self.args.eval_reward_model is None:
            return None
        if self._reward_model is None:
            self._reward_model = resolve_reward_model(self.args.eval_reward_model, self.accelerator.device)
        return self._reward_model

    # ------------------------------------------------------------------ saving / resuming
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Each policy to ``output_dir/agents/<name>/`` (weights or adapter + tokenizer), plus our model card."""
        output_dir = Path(output_dir or self.args.output_dir)
        for policy in self.policies:
            folder = output_dir / "agents" / policy.name
            state = self.accelerator.get_state_dict(policy.model) if self.is_fsdp_enabled else None
            save_policy(policy, folder, state, self.args.should_save)
        if self.args.should_save:
            torch.save(self.args.as_set(), output_dir / "training_args.bin")
            if not _internal_call:
                self.create_model_card()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:  # noqa: ANN001
        for policy in self.policies:
            load_policy_weights(policy, Path(resume_from_checkpoint) / "agents" / policy.name)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's own optimizer is a stateless no-op, so only its scheduler (the logged learning rate) is
        restored; each agent restores its optimizer in ``_ensure_policy_optimizers``. (Under FSDP, loading the
        no-op's empty optimizer checkpoint fails in torch's distributed checkpointing: seen on a GPU.)"""
        if checkpoint and (path := Path(checkpoint) / SCHEDULER_NAME).is_file():
            self.lr_scheduler.load_state_dict(torch.load(path, weights_only=True))

    def save_method_files(self, checkpoint_dir: Path) -> None:
        for policy in self.policies:
            if policy.optimizer is not None:
                folder = checkpoint_dir / "agents" / policy.name
                save_optimizer(self.accelerator, policy.optimizer, policy.model, folder, self.args.should_save)
                if self.args.should_save:
                    torch.save(policy.scheduler.state_dict(), folder / "scheduler.pt")

    def method_state(self) -> dict[str, Any]:
        return {
            "search": self.search.state_dict(),
            "policies": {p.name: {"buffer": p.buffer, "updates": p.updates} for p in self.policies},
            "trees": [t.to_dict() for t in self.last_trees],
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.search.load_state_dict(state["search"])
        for policy in self.policies:
            saved = state["policies"][policy.name]
            policy.buffer, policy.updates = saved["buffer"], saved["updates"]
        self.last_trees = [SearchTree.from_dict(t) for t in state["trees"]]

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs
    ) -> None:  # noqa: ANN001
        """Our card in every agent folder (base model, method, citation, config, latest metrics)."""
        if not self.is_world_process_zero():
            return
        metrics = {
            k: v
            for k, v in (self.state.log_history[-1] if self.state.log_history else {}).items()
            if isinstance(v, (int, float))
        }
        for policy in self.policies:
            folder = Path(self.args.output_dir) / "agents" / policy.name
            write_model_card(
                folder,
                base_model=policy.spec.model,
                method=self._name,
                paper=self._paper,
                tags=self._tag_names,
                config={k: v for k, v in self.args.to_dict().items() if not str(k).startswith("_")},
                metrics=metrics,
                extra=f"Agent `{policy.name}` of a {len(self.policy_of)}-agent {self.args.agent_mode} MARS² system "
                f"(agents: {', '.join(self.policy_of)}).",
                dataset_name=dataset_name,
            )

    def push_to_hub(
        self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs
    ) -> list[str]:
        """Push each agent to its own repo ``<hub_model_id>-<agent>`` with our model card; returns the repo ids."""
        from huggingface_hub import HfApi

        self.save_model()
        if not self.is_world_process_zero():
            return []
        api = HfApi(token=self.args.hub_token)
        base = self.args.hub_model_id or Path(self.args.output_dir).name
        repos = []
        for policy in self.policies:
            repo_id = f"{base}-{policy.name}"
            api.create_repo(repo_id, private=self.args.hub_private_repo, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(Path(self.args.output_dir) / "agents" / policy.name),
                commit_message=commit_message,
                run_as_future=not blocking,
            )
            repos.append(repo_id)
        return repos
