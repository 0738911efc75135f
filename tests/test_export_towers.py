"""PlainSelfAttention stands in for nn.MultiheadAttention while an image tower is traced: same numbers,
a graph without shape arithmetic on the batch, the original modules back afterwards."""

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from coder.export.onnx_export import IMAGE_INPUT, export_image_encoder  # noqa: E402
from coder.export.towers import PlainSelfAttention, plain_attention  # noqa: E402


def _mha(batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_self_attention_matches_multihead_attention(batch_first, mask):
    mha = _mha(batch_first)
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    m = None
    if mask == "float":
        m = torch.randn(7, 7)
    elif mask == "bool":
        m = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)  # causal: True = do not attend
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False, attn_mask=m)[0]
        got, weights = PlainSelfAttention(mha)(x, x, x, need_weights=False, attn_mask=m)
    assert weights is None
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_other_calls_go_to_the_wrapped_module():
    mha = _mha(True)
    q, kv = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        want_out, want_w = mha(q, kv, kv)  # cross-attention, weights asked for
        got_out, got_w = PlainSelfAttention(mha)(q, kv, kv)
        per_head = torch.randn(2 * 4, 3, 3)  # a (batch*heads, L, L) mask
        want_masked = mha(q, q, q, need_weights=False, attn_mask=per_head)[0]
        got_masked = PlainSelfAttention(mha)(q, q, q, need_weights=False, attn_mask=per_head)[0]
    assert torch.equal(got_out, want_out) and torch.equal(got_w, want_w)
    assert torch.equal(got_masked, want_masked)


def test_modules_are_restored_even_when_the_export_fails():
    tower = nn.Sequential(_mha(True), nn.Sequential(_mha(False)))
    before = [tower[0], tower[1][0]]
    with pytest.raises(RuntimeError), plain_attention(tower) as n:
        assert n == 2 and isinstance(tower[0], PlainSelfAttention) and isinstance(tower[1][0], PlainSelfAttention)
        assert tower[0].mha is before[0]  # weights shared, nothing copied
        raise RuntimeError("export failed")
    assert [tower[0], tower[1][0]] == before


def _ops(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_exported_vit_has_no_batch_shape_arithmetic_and_matches_torch(tmp_path, tiny_arch, monkeypatch):
    import onnxruntime as ort
    import open_clip

    from coder.export import towers

    visual = open_clip.create_model(tiny_arch, pretrained=None).visual.eval()
    export_image_encoder(visual, tmp_path / "plain.onnx", (64, 64), 17)
    assert all(not isinstance(m, PlainSelfAttention) for m in visual.modules())  # restored
    with monkeypatch.context() as m:  # the exporter's own trace of nn.MultiheadAttention, for comparison
        m.setattr(towers, "plain_attention_eligible", lambda mha: False)
        export_image_encoder(visual, tmp_path / "mha.onnx", (64, 64), 17)
    plain, mha = _ops(tmp_path / "plain.onnx"), _ops(tmp_path / "mha.onnx")
    assert sum(plain.values()) < sum(mha.values()) / 2
    assert plain["Shape"] < mha["Shape"] / 4 and plain["Transpose"] < mha["Transpose"] / 2
    sess = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = visual(x).numpy()
        got = sess.run(None, {IMAGE_INPUT: x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_manifest_records_the_attention_modules_traced_as_matmuls(tiny_artifact):
    import json

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["image_attention"] == {"form": "plain matmuls, token count fixed", "modules": 2}  # 2 layers
