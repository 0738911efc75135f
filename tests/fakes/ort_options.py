"""The provider options ONNX Runtime accepts, as of the LOWEST supported onnxruntime-gpu (1.18.0): TESTS ONLY.

ONNX Runtime parses provider options with ``ProviderOptionsParser``: an unknown key fails the provider
("Unknown provider option"), and each value must parse as its C++ type with the classic locale
(``include/onnxruntime/core/common/parse_string.h``): a bool is exactly one of ``0 1 false true False True``,
an int has no sign trouble, spaces or trailing characters. Python passes ``str(value)``. The key sets are
``onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc`` and
``onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc`` at 1.18.0; options added later
(``trt_weight_stripped_engine_enable``, ``trt_onnx_model_folder_path``, ``trt_engine_hw_compatible``:
1.18.1; ``sdpa_kernel``: 1.19) are NOT in these sets, because the lowest supported version would reject them.

:func:`check` raises ``ValueError`` naming the first problem, like ONNX Runtime; it also refuses
``trt_fp16_enable`` / ``trt_int8_enable`` turned on: coder's graphs carry their own precision (a strongly
typed fp16 graph keeps its fp32 LayerNorm islands only if TensorRT is not told to run everything in fp16).

>>> check("TensorrtExecutionProvider", {"trt_engine_cache_enable": "True"})
>>> check("TensorrtExecutionProvider", {"trt_engine_cache_enabled": "True"})
Traceback (most recent call last):
ValueError: Unknown provider option: "trt_engine_cache_enabled"
"""

from __future__ import annotations

import re

BOOL, INT, UINT, STR, SHAPES, ENUM = "bool", "int", "uint", "str", "shapes", "enum"

TENSORRT_1_18 = {
    "device_id": INT, "has_user_compute_stream": BOOL, "user_compute_stream": UINT,
    "trt_max_partition_iterations": INT, "trt_min_subgraph_size": INT, "trt_max_workspace_size": UINT,
    "trt_fp16_enable": BOOL, "trt_int8_enable": BOOL, "trt_int8_calibration_table_name": STR,
    "trt_int8_use_native_calibration_table": BOOL, "trt_dla_enable": BOOL, "trt_dla_core": INT,
    "trt_dump_subgraphs": BOOL, "trt_engine_cache_enable": BOOL, "trt_engine_cache_path": STR,
    "trt_engine_cache_prefix": STR, "trt_engine_decryption_enable": BOOL, "trt_engine_decryption_lib_path": STR,
    "trt_force_sequential_engine_build": BOOL, "trt_context_memory_sharing_enable": BOOL,
    "trt_layer_norm_fp32_fallback": BOOL, "trt_timing_cache_enable": BOOL, "trt_timing_cache_path": STR,
    "trt_force_timing_cache": BOOL, "trt_detailed_build_log": BOOL, "trt_build_heuristics_enable": BOOL,
    "trt_sparsity_enable": BOOL, "trt_builder_optimization_level": INT, "trt_auxiliary_streams": INT,
    "trt_tactic_sources": STR, "trt_extra_plugin_lib_paths": STR, "trt_profile_min_shapes": SHAPES,
    "trt_profile_max_shapes": SHAPES, "trt_profile_opt_shapes": SHAPES, "trt_cuda_graph_enable": BOOL,
    "trt_dump_ep_context_model": BOOL, "trt_ep_context_file_path": STR, "trt_ep_context_embed_mode": INT,
}

CUDA_1_18 = {
    "device_id": INT, "has_user_compute_stream": BOOL, "user_compute_stream": UINT, "gpu_mem_limit": UINT,
    "arena_extend_strategy": ENUM, "cudnn_conv_algo_search": ENUM, "do_copy_in_default_stream": BOOL,
    "gpu_external_alloc": UINT, "gpu_external_free": UINT, "gpu_external_empty_cache": UINT,
    "cudnn_conv_use_max_workspace": BOOL, "enable_cuda_graph": BOOL, "cudnn_conv1d_pad_to_nc1d": BOOL,
    "tunable_op_enable": BOOL, "tunable_op_tuning_enable": BOOL, "tunable_op_max_tuning_duration_ms": INT,
    "enable_skip_layer_norm_strict_mode": BOOL, "prefer_nhwc": BOOL, "use_ep_level_unified_stream": BOOL,
    "use_tf32": BOOL,
}

ENUMS = {"arena_extend_strategy": {"kNextPowerOfTwo", "kSameAsRequested"},
         "cudnn_conv_algo_search": {"EXHAUSTIVE", "HEURISTIC", "DEFAULT"}}
OPTIONS = {"TensorrtExecutionProvider": TENSORRT_1_18, "CUDAExecutionProvider": CUDA_1_18,
           "CPUExecutionProvider": {}}
PRECISION_FLAGS = ("trt_fp16_enable", "trt_int8_enable")
_SHAPES = re.compile(r"^[^:,]+:\d+(x\d+)*(,[^:,]+:\d+(x\d+)*)*$")  # "pixel_values:1x3x224x224[,name:...]"


def _valid(kind: str, key: str, value: str) -> bool:
    if kind == BOOL:
        return value in ("0", "1", "false", "true", "False", "True")
    if kind in (INT, UINT):
        return re.fullmatch(r"\d+" if kind == UINT else r"-?\d+", value) is not None
    if kind == SHAPES:
        return _SHAPES.match(value) is not None
    if kind == ENUM:
        return value in ENUMS[key]
    return True


def check(provider: str, options: dict) -> None:
    """Raise ValueError unless ONNX Runtime 1.18.0 accepts ``options`` for ``provider`` (and no precision flag is on)."""
    if provider not in OPTIONS:
        raise ValueError(f"Unknown execution provider: {provider!r}")
    known = OPTIONS[provider]
    for key, value in options.items():
        if key not in known:
            raise ValueError(f'Unknown provider option: "{key}"')
        text = str(value)
        if not _valid(known[key], key, text):
            raise ValueError(f'Failed to parse value: "{text}" for provider option "{key}"')
        if key in PRECISION_FLAGS and text in ("1", "true", "True"):
            raise ValueError(f"{key} is on: the graph's own precision must decide (fp32 LayerNorm islands of the "
                             f"strongly typed fp16 graph)")


def check_providers(providers: list) -> None:
    """``check`` every entry of an ``InferenceSession(providers=...)`` list (names or (name, options) pairs)."""
    for entry in providers:
        name, options = entry if isinstance(entry, tuple) else (entry, {})
        check(name, options)
