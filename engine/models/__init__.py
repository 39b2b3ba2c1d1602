"""Model definitions and checkpoint loading."""
from pagebatch.engine.models.decoder import DecoderModel
from pagebatch.engine.models.loader import load_hf_config, load_model, resolve_checkpoint
from pagebatch.engine.models.spec import SUPPORTED_ARCHITECTURES, CheckpointError, ModelSpec

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CheckpointError",
    "DecoderModel",
    "ModelSpec",
    "load_hf_config",
    "load_model",
    "resolve_checkpoint",
]
