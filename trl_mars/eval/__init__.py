"""Code-generation evaluation: benchmark loaders, unbiased pass@k, the evaluator and its CLI."""

from trl_mars.eval.evaluate import build_program, evaluate, format_table, load_samples
from trl_mars.eval.loaders import CodeProblem, load_problems, to_problems
from trl_mars.eval.passk import mean_pass_at_k, pass_at_k

__all__ = [
    "CodeProblem",
    "build_program",
    "evaluate",
    "format_table",
    "load_problems",
    "load_samples",
    "mean_pass_at_k",
    "pass_at_k",
    "to_problems",
]
