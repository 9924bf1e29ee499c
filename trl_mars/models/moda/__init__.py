"""MoDA causal LM (mixture-of-depths attention), registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from trl_mars.models.moda.configuration_moda import MoDAConfig
from trl_mars.models.moda.convert import convert_to_moda
from trl_mars.models.moda.modeling_moda import MoDAForCausalLM, MoDAModel, MoDAPreTrainedModel


def register() -> None:
    """Register MoDAConfig / MoDAModel / MoDAForCausalLM under model_type "moda" (idempotent)."""
    AutoConfig.register(MoDAConfig.model_type, MoDAConfig, exist_ok=True)
    AutoModel.register(MoDAConfig, MoDAModel, exist_ok=True)
    AutoModelForCausalLM.register(MoDAConfig, MoDAForCausalLM, exist_ok=True)


register()

__all__ = ["MoDAConfig", "MoDAForCausalLM", "MoDAModel", "MoDAPreTrainedModel", "convert_to_moda", "register"]
