"""Configuration of ``MultiAgentTreeTrainer`` (MARS²): GRPOConfig plus agents, tree search and credit options."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from trl_mars.losses.policy import PolicyLossConfig
from trl_mars.search.reward_model import check_reward_model
from trl_mars.utils.recipes import check_model_reference

AGENT_KEYS = {
    "name": "agent name (unique; used for logs and output_dir/agents/<name>)",
    "model": "model id or local path (required for every agent in heterogeneous mode; in homogeneous mode only the "
    "first names it and the others share its weights and tokenizer)",
    "system_prompt": "system prompt of this agent (optional)",
    "learning_rate": "learning rate of this agent's optimizer (defaults to learning_rate)",
    "trainable": "whether this agent is optimised (default true)",
    "loss_weight": "scale of this agent's loss (default 1.0, >= 0)",
    "lora": "LoRA kwargs for peft.LoraConfig, e.g. {r: 16, lora_alpha: 32}; null for full fine-tuning",
    "load_in_4bit": "QLoRA: load the base model in 4-bit (needs bitsandbytes and a GPU)",
    "vllm_server_base_url": "vllm_mode='server': URL of this agent's `trl vllm-serve` (generation, weight pushes)",
    "vllm_group_port": "vllm_mode='server': weight-transfer group port of this agent's server (default 51216 + index)",
}

_TRL_IS = "TRL's vLLM importance sampling: MARS² corrects the sampler mismatch with `tis_cap` (truncated IS)"
_ENTROPY = "no entropy bonus or entropy masking in MARS²"
_LOGGING = "GRPOTrainer's completion logging (MARS² keeps each round's trees: `save_trees`, `trl-mars search`)"
REJECTED_GRPO_FIELDS = {
    "num_generations": "the tree budget is `max_nodes`",
    "generation_batch_size": "a round searches `trees_per_step` trees per process",
    "steps_per_generation": "a round searches `trees_per_step` trees per process",
    "cache_implementation": "pass it in `generation_kwargs`",
    "use_transformers_continuous_batching": "the search generates with `model.generate` or a vLLM server",
    "transformers_continuous_batching_config": "the search generates with `model.generate` or a vLLM server",
    "use_transformers_paged": "the search generates with `model.generate` or a vLLM server",
    "vllm_server_base_url": "each agent names its own server: `agents[i].vllm_server_base_url`",
    "vllm_server_host": "each agent names its own server: `agents[i].vllm_server_base_url`",
    "vllm_server_port": "each agent names its own server: `agents[i].vllm_server_base_url`",
    "vllm_structured_outputs_regex": "constrained decoding is not supported by the search",
    "vllm_importance_sampling_correction": _TRL_IS,
    "vllm_importance_sampling_mode": _TRL_IS,
    "vllm_importance_sampling_clip_max": _TRL_IS,
    "vllm_importance_sampling_clip_min": _TRL_IS,
    "vllm_importance_sampling_cap": _TRL_IS,
    "off_policy_mask_threshold": "no off-policy sequence masking in MARS² (the trust region clips stale nodes)",
    "sapo_temperature_neg": "loss_type 'sapo' is not supported",
    "sapo_temperature_pos": "loss_type 'sapo' is not supported",
    "vespo_k_pos": "loss_type 'vespo' is not supported",
    "vespo_lambda_pos": "loss_type 'vespo' is not supported",
    "vespo_k_neg": "loss_type 'vespo' is not supported",
    "vespo_lambda_neg": "loss_type 'vespo' is not supported",
    "reward_weights": "a node has one reward, its verifier score (`node_reward`)",
    "multi_objective_aggregation": "a node has one reward, its verifier score (`node_reward`)",
    "sync_ref_model": "reference syncing would cover the first agent only",
    "ref_model_mixup_alpha": "reference syncing would cover the first agent only",
    "ref_model_sync_steps": "reference syncing would cover the first agent only",
    "top_entropy_quantile": _ENTROPY,
    "entropy_coef": _ENTROPY,
    "use_adaptive_entropy": _ENTROPY,
    "entropy_coef_min": _ENTROPY,
    "entropy_coef_max": _ENTROPY,
    "entropy_coef_delta": _ENTROPY,
    "entropy_target": _ENTROPY,
    "max_tool_calling_iterations": "agents write code; they call no tools",
    "log_completions": _LOGGING,
    "log_completions_hub_repo": _LOGGING,
    "num_completions_to_print": _LOGGING,
    "log_unique_prompts": _LOGGING,
    "log_multimodal": _LOGGING,
    "router_aux_loss_coef": "the MoE router loss is not added to the agents' losses",
    "cast_lm_head_to_fp32": "it would apply to the first agent only",
    "trust_remote_code": "it would apply to the first agent only",
    "use_liger_kernel": "the agents' log-probs come from TRL's fused LM head",
    "liger_kernel_config": "the agents' log-probs come from TRL's fused LM head",
    "neftune_noise_alpha": "NEFTune would apply to the first agent only",
    "label_smoothing_factor": "there are no labels: the loss is the policy loss",
    "train_sampling_strategy": "problems are drawn in order or shuffled (`shuffle_dataset`)",
}
"""GRPOConfig (and TrainingArguments) fields with no meaning on a MARS² tree (value: why); setting one to a non-default
value is an error."""
SUPPORTED_GRPO_FIELDS = {
    "model_init_kwargs": "kwargs of every agent's `from_pretrained`",
    "disable_dropout": "dropout off in every agent (and reference)",
    "max_completion_length": "max new tokens of every node",
    "ds3_gather_for_generation": "DeepSpeed only, which MARS² does not support with several agents",
    "shuffle_dataset": "order in which problems are searched",
    "pad_to_multiple_of": "padding of every training micro-batch",
    "temperature": "sampling temperature; the loss's log-probs use the same",
    "top_p": "nucleus sampling",
    "top_k": "top-k sampling",
    "min_p": "min-p sampling (recorded log-probs follow it)",
    "repetition_penalty": "repetition penalty over the prompt and the node's own tokens (log-probs follow it)",
    "generation_kwargs": "extra keywords for `generate` / the vLLM server (sampling keys refused)",
    "chat_template_kwargs": "kwargs of every agent's chat template (e.g. enable_thinking)",
    "use_vllm": "generate with vLLM: one `trl vllm-serve` per agent, or one engine per agent in each process",
    "vllm_mode": "'server' (one `trl vllm-serve` per agent) or 'colocate' (each agent's engine in the training process)",
    "vllm_server_timeout": "server mode: seconds to wait for each agent's server",
    "vllm_group_port": "server mode: weight-transfer port of agents[0]; agent i defaults to it + i",
    "vllm_gpu_memory_utilization": "colocate: share of the GPU each agent's engine reserves (sum over agents <= 1)",
    "vllm_tensor_parallel_size": "colocate: must be 1 (each agent's engine fits one GPU)",
    "vllm_enable_sleep_mode": "colocate: engines sleep (level 2) while the agents train, woken before each search",
    "vllm_max_model_length": "colocate: each engine's context length (vLLM's max_model_len; None: the model's)",
    "vllm_model_impl": "colocate: each engine's model implementation ('vllm', 'transformers' or 'auto')",
    "beta": "k3 KL coefficient against each agent's reference",
    "num_iterations": "optimizer steps on each buffer taken (later ones clipped against the sampling policy)",
    "epsilon": "lower clip of the token (GRPO/DAPO) or sequence (GSPO) ratio",
    "epsilon_high": "upper clip (clip-higher); defaults to epsilon",
    "delta": "two-sided clipping: the unclipped ratio is capped at delta",
    "importance_sampling_level": "'token' (GRPO/DAPO) or 'sequence' (GSPO) ratio",
    "scale_rewards": "tree-group advantage divisor: the tree's std ('group'), the round's ('batch'), none",
    "loss_type": "aggregation: grpo, bnpo, dapo, dr_grpo",
    "mask_truncated_completions": "nodes cut at max_completion_length are left out of the loss",
    "use_bias_correction_kl": "the KL term is weighted by the ratio (estimated on the old policy's samples)",
    "num_generations_eval": "GRPOTrainer's own evaluation loop (the first agent)",
}
"""GRPOConfig fields that keep a meaning on a tree (value: what they do)."""
GENERATION_KWARGS_OWNED = {
    "max_new_tokens": "max_completion_length",
    "max_length": "max_completion_length",
    "max_tokens": "max_completion_length",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "do_sample": "temperature",
    "logprobs": None,
    "logits_processor": None,
    "num_beams": None,
    "num_return_sequences": None,
    "n": None,
    "typical_p": None,
    "epsilon_cutoff": None,
    "eta_cutoff": None,
    "generation_config": None,
    "synced_gpus": None,
    "pad_token_id": None,
    "eos_token_id": None,
}
"""``generation_kwargs`` keys that a config field sets (value: the field), or that would sample from another
distribution than the one whose log-probs are recorded (None)."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    model: str | None = None
    system_prompt: str | None = None
    learning_rate: float | None = None
    trainable: bool = True
    loss_weight: float = 1.0
    lora: dict[str, Any] | None = None
    load_in_4bit: bool = False
    vllm_server_base_url: str | None = None
    vllm_group_port: int | None = None


@dataclass
class MultiAgentTreeConfig(GRPOConfig):
    r"""
    Configuration for [`MultiAgentTreeTrainer`]. Extends [`~trl.GRPOConfig`]; its optimisation fields
    (`learning_rate`, `beta`, `epsilon`, `epsilon_high`, `loss_type`, `importance_sampling_level`,
    `max_completion_length`, `temperature`, ...) apply to every agent.

    One training step = one search round: each process takes `trees_per_step` problems, grows one MARS² tree
    per problem with all agents (`max_nodes` nodes each), credits every node, and files it in the buffer of the
    trainable agent that wrote it. An agent updates whenever its buffer holds
    `per_device_train_batch_size * gradient_accumulation_steps` nodes (on every process): `num_iterations`
    optimizer steps on them, clipped against the policy that wrote them. The Trainer itself takes one step per
    round (its view of this config, `trainer_arguments()`, has `gradient_accumulation_steps=1`); this config and
    its `to_dict()` keep the value set. GRPOConfig fields with no meaning on a tree (`REJECTED_GRPO_FIELDS`) must
    keep their defaults.
    """

    num_generations: int | None = field(
        default=2, metadata={"help": "Not used by MARS² (the tree budget is max_nodes); must stay 2."}
    )
    beta: float = field(default=1e-3, metadata={"help": "k3 KL coefficient against each agent's reference."})
    importance_sampling_level: str = field(
        default="sequence", metadata={"help": "'sequence' (GSPO, MARS²+) or 'token' (GRPO/DAPO) ratios."}
    )
    loss_type: str = field(default="grpo", metadata={"help": "Aggregation: 'grpo', 'bnpo', 'dapo' or 'dr_grpo'."})
    agents: list[dict] | str | None = field(
        default=None,
        metadata={"help": "Agents as a list of dicts (YAML) or a JSON string; keys: " + ", ".join(AGENT_KEYS)},
    )
    agent_mode: str = field(
        default="heterogeneous",
        metadata={"help": "'heterogeneous': each agent has its own weights; 'homogeneous': all share the first's."},
    )
    vllm_mode: str = field(
        default="server",
        metadata={
            "help": "With use_vllm: 'server' (one `trl vllm-serve` per agent) or 'colocate' (each agent's vLLM "
            "engine in every training process, sleeping while the agents train with vllm_enable_sleep_mode)."
        },
    )
    vllm_weight_sync_bucket_mb: float = field(
        default=1024.0,
        metadata={
            "help": "vllm_mode='server': an agent's weights are pushed in buckets of at most this many MiB of full "
            "tensors, one `update_named_params` request (/update_weights) per bucket."
        },
    )
    max_nodes: int = field(default=8, metadata={"help": "Nodes per tree (the search budget)."})
    trees_per_step: int = field(default=4, metadata={"help": "Problems (trees) per process per training step."})
    posterior: str = field(default="beta", metadata={"help": "Thompson posterior: 'beta' (paper) or 'gaussian'."})
    selection_order: str = field(
        default="node_then_agent",
        metadata={"help": "'node_then_agent' (authors' code) or 'agent_then_node' (paper)."},
    )
    max_depth: int | None = field(default=None, metadata={"help": "Maximum tree depth; 1 = GEN only (no refinement)."})
    feedback: str = field(default="summary", metadata={"help": "Refinement feedback: 'summary' or 'detailed'."})
    include_problem_in_refinement: bool = field(
        default=True, metadata={"help": "Show the problem in refinement prompts (the authors' code does not)."}
    )
    node_reward: str = field(
        default="pass",
        metadata={
            "help": "Raw node reward: 'pass' (1 iff every public test passes, the paper's) or "
            "'pass_fraction' (share of public tests passed: partial credit)."
        },  # fmt: skip
    )
    reward_shaping: str = field(
        default="tree_consistent", metadata={"help": "'tree_consistent' or 'none' (what the released code trains on)."}
    )
    shaping_gamma: float = field(default=0.5, metadata={"help": "gamma of r̂ = r + gamma (r - b)."})
    shaping_lambda: float = field(
        default=0.5, metadata={"help": "lambda of b = (1 - lambda) r_parent + lambda mu_sib."}
    )
    advantage_epsilon: float = field(default=1e-4, metadata={"help": "eps of A = (r̂ - mean) / (std + eps)."})
    filter_uniform_trees: bool = field(
        default=False, metadata={"help": "Drop nodes of trees whose rewards are all equal (zero advantage)."}
    )
    overlong_buffer: int | None = field(
        default=None, metadata={"help": "DAPO overlong penalty buffer (tokens); None disables the penalty."}
    )
    overlong_penalty_factor: float = field(default=1.0, metadata={"help": "DAPO overlong penalty factor."})
    tis_cap: float | None = field(
        default=2.0, metadata={"help": "Truncated importance sampling cap against sampling log-probs; None: off."}
    )
    tests_column: str = field(default="tests", metadata={"help": "Dataset column holding each problem's tests."})
    sandbox_timeout: float = field(default=5.0, metadata={"help": "Seconds a program may run against its tests."})
    sandbox_workers: int | None = field(default=None, metadata={"help": "Concurrent sandbox checks (default: CPUs)."})
    # --- remote verifier (issue 20, item 6) ---
    verifier: str = field(
        default="local",
        metadata={"help": "Where programs run: 'local' (the package's sandbox) or 'sandbox_fusion' (a SandboxFusion "
                  "server's run_code; verdicts are still decided here)."},
    )  # fmt: skip
    sandbox_fusion_url: str | None = field(
        default=None, metadata={"help": "verifier='sandbox_fusion': the server's URL (http://host:8080)."}
    )
    sandbox_fusion_concurrency: int = field(
        default=8, metadata={"help": "verifier='sandbox_fusion': checks in flight at once."}
    )
    sandbox_fusion_retries: int = field(
        default=3, metadata={"help": "verifier='sandbox_fusion': retries of a request failing with 5xx or a timeout."}
    )
    sandbox_fusion_backoff_s: float = field(
        default=0.5, metadata={"help": "verifier='sandbox_fusion': seconds before the first retry (doubling)."}
    )
    sandbox_fusion_request_timeout_s: float = field(
        default=30.0,
        metadata={"help": "verifier='sandbox_fusion': seconds a request may take beyond the check's own budget."},
    )
    # --- end remote verifier ---
    # --- rollout refill (issue 20, item 8) ---
    generation_batching: str | None = field(
        default=None,
        metadata={"help": "transformers backend: 'refill' (a finished answer leaves the batch at once, a waiting "
                  "prompt takes its slot), 'lockstep' (one generate per batch) or None: refill, unless "
                  "generation_kwargs are set or FSDP shards the agents over processes (generate's own)."},
    )  # fmt: skip
    # --- end rollout refill ---
    save_trees: bool = field(default=True, metadata={"help": "Keep the last round's trees in checkpoints (viewer)."})
    tplus: bool = field(
        default=False,
        metadata={"help": "MARS²-T+ in the training search: detailed feedback on refinements, depth-guided GEN."},
    )
    search_mode: str = field(
        default="lockstep",
        metadata={
            "help": "'lockstep': every tree adds a node per step, one batched call per agent per step (in-process "
            "models, FSDP); 'async': each tree advances as soon as its last node is scored (needs use_vllm)."
        },  # fmt: skip
    )
    max_inflight: int = field(
        default=1,
        metadata={
            "help": "search_mode='async': requests in flight per tree (1: each tree's sequential AB-MCTS; more: "
            "async AB-MCTS, expansions in flight counted as virtual losses)."
        },  # fmt: skip
    )
    # held-out evaluation (``MultiAgentTreeTrainer.evaluate_search`` and the recipe's before/after table)
    eval_max_nodes: int | None = field(
        default=None, metadata={"help": "Held-out evaluation: nodes per tree (default: max_nodes)."}
    )
    eval_mode: str = field(
        default="system",
        metadata={"help": "Held-out evaluation: 'system' (one joint tree per problem) or 'agent' (a tree per agent)."},
    )
    eval_tplus: bool = field(
        default=False,
        metadata={"help": "Held-out evaluation with MARS²-T+ (detailed refinement feedback, depth-guided GEN)."},
    )
    eval_reward_model: str | None = field(
        default=None,
        metadata={
            "help": "Held-out evaluation: a sequence-classification reward model (id or path, num_labels=1) that picks "
            "the submitted node among those with the best public score (MARS²-T+ reward-model guidance)."
        },  # fmt: skip
    )
    eval_tie_break: str = field(
        default="latest",
        metadata={
            "help": "Held-out evaluation: final-answer tie-break, 'latest' (authors'), 'earliest', 'shallowest'."
        },
    )

    def __post_init__(self) -> None:
        check_rejected_fields(self)
        self.agent_specs = parse_agents(self.agents, self.agent_mode)
        check_deepspeed_agents(self, self.agent_specs)  # before GRPOConfig, which would import deepspeed
        self.agent_gradient_accumulation_steps = self.gradient_accumulation_steps
        self.steps_per_generation = 2  # GRPO's generation batching is not used; keep its divisibility checks met
        super().__post_init__()
        check_generation_kwargs(self.generation_kwargs)  # a JSON string from the command line is parsed now
        if isinstance(self.agents, str):  # JSON from the command line, valid since parse_agents accepted it
            self.agents = json.loads(self.agents)
        checks = {
            "max_nodes": self.max_nodes >= 1,
            "trees_per_step": self.trees_per_step >= 1,
            "posterior": self.posterior in ("beta", "gaussian"),
            "selection_order": self.selection_order in ("node_then_agent", "agent_then_node"),
            "max_depth": self.max_depth is None or self.max_depth >= 1,
            "feedback": self.feedback in ("summary", "detailed"),
            "node_reward": self.node_reward in ("pass", "pass_fraction"),
            "reward_shaping": self.reward_shaping in ("tree_consistent", "none"),
            "shaping_gamma": self.shaping_gamma >= 0,
            "shaping_lambda": 0 <= self.shaping_lambda <= 1,
            "advantage_epsilon": self.advantage_epsilon >= 0,
            "overlong_buffer": self.overlong_buffer is None or 0 < self.overlong_buffer <= self.max_completion_length,
            "tis_cap": self.tis_cap is None or self.tis_cap > 0,
            "num_iterations": self.num_iterations >= 1,
            "scale_rewards": self.scale_rewards in ("group", "batch", "none"),
            "repetition_penalty": self.repetition_penalty > 0,
            "min_p": self.min_p is None or 0 <= self.min_p <= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "sandbox_timeout": self.sandbox_timeout > 0,
            "learning_rate": self.learning_rate >= 0,
            "search_mode": self.search_mode in ("lockstep", "async"),
            "max_inflight": self.max_inflight >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"MultiAgentTreeConfig.{name} has an invalid value: {getattr(self, name)!r}")
        try:
            self.policy_loss_config()
        except ValueError as e:
            raise ValueError(f"MultiAgentTreeConfig: {e}") from e
        check_eval_fields(self)
        check_vllm_fields(self)
        check_search_mode(self)
        check_verifier_fields(self)
        if self.generation_batching not in (None, "lockstep", "refill"):
            raise ValueError(f"MultiAgentTreeConfig.generation_batching has an invalid value: "
                             f"{self.generation_batching!r} (None, 'lockstep' or 'refill')")  # fmt: skip
        if self.generation_batching == "refill" and self.generation_kwargs:
            raise ValueError(f"MultiAgentTreeConfig.generation_batching='refill' cannot pass generation_kwargs "
                             f"{sorted(self.generation_kwargs)} (generate's own): use 'lockstep' or None")  # fmt: skip
        if self.use_vllm:
            check_vllm_agents(self.agent_specs, self.agent_mode, self.vllm_mode)
            if self.vllm_mode == "colocate" and self.agent_specs:
                check_colocate_memory(self, len(self.agent_specs) if self.agent_mode == "heterogeneous" else 1)

    def policy_loss_config(self) -> PolicyLossConfig:
        """The loss every agent optimises, from the GRPOConfig loss fields (validated here, before any model)."""
        return PolicyLossConfig(
            loss_type=self.loss_type,
            importance_sampling_level=self.importance_sampling_level,
            epsilon_low=self.epsilon,
            epsilon_high=self.epsilon_high if self.epsilon_high is not None else self.epsilon,
            beta=self.beta,
            tis_cap=self.tis_cap,
            max_completion_length=self.max_completion_length,
            delta=self.delta,
            kl_importance_correction=self.use_bias_correction_kl,
        )

    def trainer_arguments(self) -> MultiAgentTreeConfig:
        """What ``transformers.Trainer`` runs on: this config with ``gradient_accumulation_steps=1`` (one Trainer
        step is one search round; each agent accumulates ``gradient_accumulation_steps`` micro-batches itself)."""
        view = copy.copy(self)
        view.gradient_accumulation_steps = 1
        return view

    def as_set(self) -> MultiAgentTreeConfig:
        """This config with ``gradient_accumulation_steps`` as the user set it (undoes ``trainer_arguments``)."""
        view = copy.copy(self)
        view.gradient_accumulation_steps = self.agent_gradient_accumulation_steps
        return view

    def to_dict(self) -> dict[str, Any]:
        """As ``TrainingArguments.to_dict``, with the ``gradient_accumulation_steps`` the user set."""
        out = super().to_dict()
        out["gradient_accumulation_steps"] = self.agent_gradient_accumulation_steps
        return out


def check_rejected_fields(config: MultiAgentTreeConfig) -> None:
    """Fail on any GRPOConfig field in ``REJECTED_GRPO_FIELDS`` set to a non-default value, naming it."""
    defaults = {f.name: f for f in fields(config)}
    for name, why in REJECTED_GRPO_FIELDS.items():
        f = defaults[name]
        default = f.default_factory() if f.default is MISSING else f.default
        if getattr(config, name) != default:
            raise ValueError(
                f"MultiAgentTreeConfig.{name}={getattr(config, name)!r} is not supported by MARS² ({why}); "
                f"leave it at its default {default!r}"
            )


def check_generation_kwargs(kwargs: dict | str | None) -> None:
    """``generation_kwargs`` go to every agent's sampler; keys a field owns or that break the recorded log-probs
    are refused, naming the key."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise ValueError(f"MultiAgentTreeConfig.generation_kwargs must be a dict, got {kwargs!r}")
    for key in kwargs:
        if key in GENERATION_KWARGS_OWNED:
            owner = GENERATION_KWARGS_OWNED[key]
            hint = f"set MultiAgentTreeConfig.{owner}" if owner else "the recorded sampling log-probs would be wrong"
            raise ValueError(f"MultiAgentTreeConfig.generation_kwargs[{key!r}] is not allowed ({hint})")


def check_eval_fields(config: MultiAgentTreeConfig) -> None:
    """The held-out evaluation fields, checked (and a reward model's reference resolved) before any model loads."""
    checks = {
        "eval_max_nodes": config.eval_max_nodes is None or config.eval_max_nodes >= 1,
        "eval_mode": config.eval_mode in ("system", "agent"),
        "eval_tie_break": config.eval_tie_break in ("latest", "earliest", "shallowest"),
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"MultiAgentTreeConfig.{name} has an invalid value: {getattr(config, name)!r}")
    if config.eval_reward_model is not None:
        check_reward_model(config.eval_reward_model, "eval_reward_model")


COLOCATE_FIELDS = (
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_enable_sleep_mode",
    "vllm_max_model_length",
    "vllm_model_impl",
)
"""Fields that configure the colocated engines (``use_vllm`` with ``vllm_mode='colocate'``)."""
SERVER_FIELDS = ("vllm_server_timeout", "vllm_group_port", "vllm_weight_sync_bucket_mb")
"""Fields that configure the clients of the agents' servers (``use_vllm`` with ``vllm_mode='server'``)."""


def check_vllm_fields(config: MultiAgentTreeConfig) -> None:
    """``vllm_mode`` is 'server' or 'colocate'; a field of the other mode (or any, without ``use_vllm``) left at
    its default; colocated engines with tensor parallel size 1 and a memory share in (0, 1]."""
    if config.vllm_mode not in ("server", "colocate"):
        raise ValueError(f"MultiAgentTreeConfig.vllm_mode must be 'server' or 'colocate', got {config.vllm_mode!r}")
    defaults = {f.name: f.default for f in fields(config)}
    active = {"server": SERVER_FIELDS, "colocate": COLOCATE_FIELDS}[config.vllm_mode] if config.use_vllm else ()
    for name in (*COLOCATE_FIELDS, *SERVER_FIELDS):
        if name not in active and getattr(config, name) != defaults[name]:
            mode = "colocate" if name in COLOCATE_FIELDS else "server"
            raise ValueError(
                f"MultiAgentTreeConfig.{name}={getattr(config, name)!r} only applies with use_vllm=True and "
                f"vllm_mode={mode!r} (here use_vllm={config.use_vllm}, vllm_mode={config.vllm_mode!r}); leave it "
                f"at its default {defaults[name]!r}"
            )
    if config.use_vllm and config.vllm_mode == "colocate":
        if config.vllm_tensor_parallel_size != 1:
            raise ValueError(
                f"MultiAgentTreeConfig.vllm_tensor_parallel_size={config.vllm_tensor_parallel_size}: colocated "
                "engines run with tensor parallel size 1 (each agent must fit one GPU); for larger agents use "
                "vllm_mode='server' with a tensor-parallel `trl vllm-serve` per agent"
            )
        if not 0 < config.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                "MultiAgentTreeConfig.vllm_gpu_memory_utilization must be in (0, 1], got "
                f"{config.vllm_gpu_memory_utilization}"
            )
    if config.vllm_weight_sync_bucket_mb <= 0:
        raise ValueError(
            f"MultiAgentTreeConfig.vllm_weight_sync_bucket_mb must be > 0, got {config.vllm_weight_sync_bucket_mb}"
        )


_FUSION_FIELDS = ("sandbox_fusion_concurrency", "sandbox_fusion_retries", "sandbox_fusion_backoff_s",
                  "sandbox_fusion_request_timeout_s")  # fmt: skip


def check_verifier_fields(config: MultiAgentTreeConfig) -> None:
    """``verifier`` and the SandboxFusion fields, checked by name before any model loads: a field the chosen
    verifier would ignore is refused."""
    from trl_mars.sandbox.remote import check_fusion_fields

    owner = "MultiAgentTreeConfig"
    if config.verifier not in ("local", "sandbox_fusion"):
        raise ValueError(f"{owner}.verifier has an invalid value: {config.verifier!r} ('local' or 'sandbox_fusion')")
    if config.verifier == "local":
        defaults = {f.name: f.default for f in fields(config)}
        for name in ("sandbox_fusion_url", *_FUSION_FIELDS):
            if getattr(config, name) != defaults[name]:
                raise ValueError(f"{owner}.{name} is set but verifier='local' would ignore it; "
                                 "set verifier='sandbox_fusion' to use a SandboxFusion server")  # fmt: skip
        return
    if config.sandbox_workers is not None:
        raise ValueError(f"{owner}.sandbox_workers sizes the local sandbox; with verifier='sandbox_fusion' set "
                         "sandbox_fusion_concurrency")  # fmt: skip
    check_fusion_fields(owner, config.sandbox_fusion_url, *(getattr(config, n) for n in _FUSION_FIELDS),
                        prefix="sandbox_fusion_")  # fmt: skip


def sandbox_fusion_config(config: MultiAgentTreeConfig):
    """The ``SandboxFusionConfig`` of a config with ``verifier='sandbox_fusion'`` (None for the local sandbox)."""
    if config.verifier != "sandbox_fusion":
        return None
    from trl_mars.sandbox.remote import SandboxFusionConfig

    return SandboxFusionConfig(config.sandbox_fusion_url, *(getattr(config, n) for n in _FUSION_FIELDS))


def check_search_mode(config: MultiAgentTreeConfig) -> None:
    """``search_mode='async'`` needs backends that serve concurrent requests (a ``trl vllm-serve`` per agent,
    ``vllm_mode='server'``); ``max_inflight`` only means something there."""
    if config.max_inflight > 1 and config.search_mode != "async":
        raise ValueError(
            f"MultiAgentTreeConfig.max_inflight={config.max_inflight} needs search_mode='async' (lockstep adds one "
            "node per tree per step)"
        )
    if config.search_mode == "async" and not (config.use_vllm and config.vllm_mode == "server"):
        raise ValueError(
            "MultiAgentTreeConfig.search_mode='async' needs use_vllm with vllm_mode='server' (a `trl vllm-serve` per "
            "agent): in-process models and colocated engines generate one batch at a time and cannot serve "
            "concurrent requests; use search_mode='lockstep'"
        )


def check_colocate_memory(config: MultiAgentTreeConfig, engines: int) -> None:
    """Every process holds one engine per policy, each reserving ``vllm_gpu_memory_utilization`` of its GPU."""
    if engines * config.vllm_gpu_memory_utilization > 1:
        raise ValueError(
            f"MultiAgentTreeConfig.vllm_gpu_memory_utilization={config.vllm_gpu_memory_utilization}: {engines} "
            f"colocated engines per GPU would reserve {engines * config.vllm_gpu_memory_utilization:.2f} of it "
            "(> 1); lower it (the training models need room too)"
        )


def deepspeed_requested(config: Any) -> bool:
    """Whether the run will use DeepSpeed: the ``deepspeed`` field, or ``ACCELERATE_USE_DEEPSPEED`` (what
    ``accelerate launch`` sets with a DeepSpeed config), as ``TrainingArguments`` decides it."""
    return bool(config.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")


def check_deepspeed_agents(config: Any, specs: list[AgentSpec]) -> None:
    """DeepSpeed with several trained sets of weights is refused, naming the setting: accelerate ties one model
    to one DeepSpeed engine, and MARS² steps each agent's optimizer itself."""
    owners = specs[:1] if config.agent_mode == "homogeneous" else specs
    trained = [s.name for s in owners if s.trainable]
    if len(trained) > 1 and deepspeed_requested(config):
        source = f"deepspeed={config.deepspeed!r}" if config.deepspeed else "ACCELERATE_USE_DEEPSPEED=true"
        raise ValueError(
            f"MultiAgentTreeConfig: DeepSpeed ({source}) with {len(trained)} trained agents ({', '.join(trained)}) "
            "is not supported: accelerate prepares one model per DeepSpeed engine and MARS² steps each agent's "
            "optimizer itself. Use FSDP2 (recipes/accelerate_configs/fsdp2.yaml) or DDP, agent_mode='homogeneous', "
            "or train one agent (`trainable: false` on the others)"
        )


def check_vllm_agents(specs: list[AgentSpec], mode: str, vllm_mode: str) -> None:
    """``use_vllm``: in server mode one ``trl vllm-serve`` per trained set of weights, named in the agents; in
    colocate mode no agent names a server. No agent is QLoRA: its base weights are 4-bit bitsandbytes blocks that
    the weight push would send as they are."""
    for i, spec in enumerate(specs):
        if spec.load_in_4bit:
            raise ValueError(
                f"agents[{i}].load_in_4bit: QLoRA agents cannot push weights to vLLM (the 4-bit base would be sent "
                "as is); use LoRA on a bf16 base with use_vllm, or generate with transformers (use_vllm=False)"
            )
    if vllm_mode == "colocate":
        for i, spec in enumerate(specs):
            for key in ("vllm_server_base_url", "vllm_group_port"):
                if getattr(spec, key) is not None:
                    raise ValueError(
                        f"agents[{i}].{key}: agents have no server with vllm_mode='colocate' (each agent's engine "
                        "runs in the training processes); remove it, or use vllm_mode='server'"
                    )
        return
    if not specs:
        raise ValueError("use_vllm needs `agents` (each with its vllm_server_base_url)")
    urls: dict[str, int] = {}
    for i, spec in enumerate(specs[:1] if mode == "homogeneous" else specs):
        if not spec.vllm_server_base_url:
            raise ValueError(f"agents[{i}].vllm_server_base_url is required with use_vllm (one server per agent)")
        if spec.vllm_server_base_url in urls:
            raise ValueError(
                f"agents[{i}].vllm_server_base_url: {spec.vllm_server_base_url!r} already serves "
                f"agents[{urls[spec.vllm_server_base_url]}]; each agent needs its own server"
            )
        urls[spec.vllm_server_base_url] = i


SHARED_AGENT_KEYS = ("name", "model", "system_prompt")
"""What an agent after the first may set in homogeneous mode: the rest belongs to the shared weights (agents[0])."""


def check_shared_agent(raw: dict, first: AgentSpec, index: int) -> None:
    """Homogeneous agents share agents[0]'s weights, tokenizer, optimizer and loss: reject keys they would ignore."""
    for key in raw:
        if key not in SHARED_AGENT_KEYS:
            raise ValueError(
                f"agents[{index}].{key}: in homogeneous mode only {list(SHARED_AGENT_KEYS)} may be set per agent; "
                f"the agents share agents[0]'s weights, so set {key!r} there"
            )
    if raw.get("model") and raw["model"] != first.model:
        raise ValueError(
            f"agents[{index}].model={raw['model']!r}: homogeneous agents share agents[0]'s model {first.model!r} "
            "(leave it out, or use agent_mode='heterogeneous')"
        )


def parse_agents(agents: list[dict] | str | None, mode: str) -> list[AgentSpec]:
    """Validate the ``agents`` field (list of dicts or JSON) into specs; errors name the offending field."""
    if mode not in ("heterogeneous", "homogeneous"):
        raise ValueError(f"agent_mode must be 'heterogeneous' or 'homogeneous', got {mode!r}")
    if agents is None:
        return []
    if isinstance(agents, str):
        try:
            agents = json.loads(agents)
        except json.JSONDecodeError as e:
            raise ValueError(f"agents: not valid JSON ({e})") from e
    if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
        raise ValueError("agents must be a list of dicts (one per agent)")
    specs, names = [], set()
    for i, raw in enumerate(agents):
        unknown = sorted(set(raw) - set(AGENT_KEYS))
        if unknown:
            raise ValueError(f"agents[{i}].{unknown[0]}: unknown key; allowed: {sorted(AGENT_KEYS)}")
        spec = AgentSpec(**{"name": f"agent{i}", **raw})
        if spec.name in names:
            raise ValueError(f"agents[{i}].name: duplicate agent name {spec.name!r}")
        names.add(spec.name)
        if mode == "homogeneous" and i > 0:
            check_shared_agent(raw, specs[0], i)
        needs_model = mode == "heterogeneous" or i == 0
        if needs_model and not spec.model:
            raise ValueError(f"agents[{i}].model is required in {mode} mode")
        if spec.model:
            check_model_reference(spec.model, f"agents[{i}].model")
        if spec.loss_weight < 0:
            raise ValueError(f"agents[{i}].loss_weight must be >= 0, got {spec.loss_weight}")
        if spec.learning_rate is not None and spec.learning_rate < 0:
            raise ValueError(f"agents[{i}].learning_rate must be >= 0, got {spec.learning_rate}")
        if spec.lora is not None and not isinstance(spec.lora, dict):
            raise ValueError(f"agents[{i}].lora must be a dict of LoraConfig kwargs or null")
        specs.append(spec)
    return specs
