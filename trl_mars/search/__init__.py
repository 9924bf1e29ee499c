"""MARS² multi-agent AB-MCTS tree search over code solutions, and MARS²-T+ test-time scaling."""

from trl_mars.search.backends import (
    Generation,
    SamplingConfig,
    ScriptedBackend,
    TransformersBackend,
    VLLMServerBackend,
)
from trl_mars.search.engine import SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.metrics import agent_shares, mean_metrics, select_final, tree_metrics
from trl_mars.search.prompts import PromptConfig
from trl_mars.search.reward_model import RewardModel, SequenceClassifierRewardModel, resolve_reward_model
from trl_mars.search.selection import DepthSchedule, select_expansion
from trl_mars.search.tree import Node, SearchTree
from trl_mars.search.verify import SandboxVerifier, Verdict
from trl_mars.search.viewer import render_html, write_html

__all__ = [
    "DepthSchedule",
    "Generation",
    "Node",
    "PromptConfig",
    "RewardModel",
    "SamplingConfig",
    "SandboxVerifier",
    "ScriptedBackend",
    "SearchConfig",
    "SearchProblem",
    "SearchTree",
    "SequenceClassifierRewardModel",
    "TransformersBackend",
    "TreeSearch",
    "VLLMServerBackend",
    "Verdict",
    "agent_shares",
    "mean_metrics",
    "render_html",
    "resolve_reward_model",
    "select_expansion",
    "select_final",
    "tree_metrics",
    "write_html",
]
