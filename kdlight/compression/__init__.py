"""Compressing the student while distilling: pruning (unstructured and structured), int8
quantisation with torchao, and measurement of what it buys (parameters, size, latency).

Torch-Pruning and torchao are imported inside the functions that use them.
"""

from kdlight.compression.checkpoint import CompressedCheckpoint, StudentInit
from kdlight.compression.measure import (
    cpu_latency,
    effective_parameters,
    parameter_counts,
    shipped_state_dict,
    size_on_disk,
)
from kdlight.compression.pruning import StudentPruning, scheduled_sparsity, sparsity_counts
from kdlight.compression.quantization import (
    INT8_MODES,
    QuantizationAwareTraining,
    compare_predictions,
    dequantize_,
    load_int8,
    quantize_int8,
    save_int8,
)
from kdlight.compression.structured import StructuredPruning, prune_channels
from kdlight.compression.twin import fake_quantized_twin, int8_layers
from kdlight.core.pruned import PRUNED_KEY, apply_record, checkpoint_record

__all__ = [
    "StudentPruning",
    "scheduled_sparsity",
    "sparsity_counts",
    "CompressedCheckpoint",
    "StudentInit",
    "StructuredPruning",
    "prune_channels",
    "PRUNED_KEY",
    "apply_record",
    "checkpoint_record",
    "QuantizationAwareTraining",
    "quantize_int8",
    "save_int8",
    "load_int8",
    "dequantize_",
    "compare_predictions",
    "fake_quantized_twin",
    "int8_layers",
    "INT8_MODES",
    "parameter_counts",
    "size_on_disk",
    "cpu_latency",
    "effective_parameters",
    "shipped_state_dict",
]
