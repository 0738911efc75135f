"""Engine staleness is decided from the sidecar key before any deserialisation (no GPU needed)."""

import pytest

from coder.engines.trt_key import check_key, check_validated, engine_key, sidecar, write_key
from coder.errors import BackendError, StaleEngineError


VALID = {"passed": True, "engine_sha256": "0" * 64}


def _key(**over):
    base = dict(onnx_sha256="a" * 64, precision="fp16", profile=(1, 8, 32), trt_version="10.3.0",
                gpu_name="Orin", compute_capability="8.7", builder_options={"workspace_mb": 2048})
    base.update(over)
    return engine_key(**base)


def test_matching_key_passes(tmp_path):
    engine = tmp_path / "image_encoder.fp16.engine"
    engine.write_bytes(b"plan")
    write_key(engine, _key(), VALID)
    check_key(engine, _key())


@pytest.mark.parametrize("change,needle", [
    (dict(trt_version="11.0.0"), "tensorrt: '10.3.0' -> '11.0.0'"),
    (dict(gpu_name="H100"), "gpu"),
    (dict(compute_capability="9.0"), "compute_capability"),
    (dict(onnx_sha256="b" * 64), "onnx_sha256"),
    (dict(profile=(1, 16, 64)), "profile"),
    (dict(builder_options={"workspace_mb": 4096}), "builder"),
])
def test_any_change_is_stale_and_names_it(tmp_path, change, needle):
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"plan")
    write_key(engine, _key(), VALID)
    with pytest.raises(StaleEngineError, match=needle) as ei:
        check_key(engine, _key(**change))
    assert "rebuild" in str(ei.value) and isinstance(ei.value, BackendError)


def test_missing_or_garbled_sidecar(tmp_path):
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(StaleEngineError, match="no engine or key"):
        check_key(engine, _key())
    sidecar(engine).write_text("{nope")
    with pytest.raises(StaleEngineError, match="unreadable"):
        check_key(engine, _key())


def test_validation_record_binds_the_engine_bytes(tmp_path):
    import hashlib

    engine = tmp_path / "e.engine"
    engine.write_bytes(b"plan")
    sha = hashlib.sha256(b"plan").hexdigest()
    with pytest.raises(ValueError):
        write_key(engine, _key(), {"passed": True})
    write_key(engine, _key(), {"passed": True, "engine_sha256": sha})
    check_validated(engine, check_key(engine, _key()))
    write_key(engine, _key(), {"passed": False, "engine_sha256": sha, "failed": ["rerank"]})
    with pytest.raises(StaleEngineError, match="failed validation.*rerank"):
        check_validated(engine, check_key(engine, _key()))
    write_key(engine, _key(), {"passed": True, "engine_sha256": sha})
    engine.write_bytes(b"plan2")
    with pytest.raises(StaleEngineError, match="not the file that was validated"):
        check_validated(engine, check_key(engine, _key()))
