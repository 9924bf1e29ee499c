"""Secure, fast execution of untrusted Python against tests (standard library only). See docs/sandbox.md."""

from trl_mars.sandbox.cases import Check, TestCase, make_check, split_humaneval, validate_tests
from trl_mars.sandbox.config import SandboxConfig
from trl_mars.sandbox.pool import Sandbox, SandboxUnavailable
from trl_mars.sandbox.verdict import ExecutionResult, Status, TestVerdict

__all__ = [
    "Check",
    "ExecutionResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "Status",
    "TestCase",
    "TestVerdict",
    "make_check",
    "split_humaneval",
    "validate_tests",
]
