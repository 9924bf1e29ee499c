"""trl-mars: research-grade RL and training methods for LLMs on top of Hugging Face TRL."""

__version__ = "0.1.0.dev0"
