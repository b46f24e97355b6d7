"""Model architectures written for flat, depth-sorted token batches."""

from skipdecode.model_runner.models.registry import MODEL_REGISTRY, kv_head_shape, model_class_for

__all__ = ["MODEL_REGISTRY", "kv_head_shape", "model_class_for"]
