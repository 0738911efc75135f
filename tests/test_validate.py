"""Export validation of the sequence-sliced text tower: slices end at the end-of-text token, not at id 0."""

import numpy as np

from coder.export import validate
from coder.manifest import load_artifact


def test_check_text_slices_at_end_of_text(tiny_artifact):
    import open_clip
    import torch

    from coder.export.weights import rebuild_from_manifest

    art = load_artifact(tiny_artifact)
    model = rebuild_from_manifest(art.manifest).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    texts = ["wow!;", "!@#", "stop!—now"]  # every text holds "!" (id 0), the first is the longest
    ids = tokenizer(texts).numpy().astype(np.int32)
    with torch.no_grad():
        want = model.encode_text(torch.from_numpy(ids).long()).float().numpy()
    ref = {"ids": ids, "text": want, "eos_id": validate.eos_id_of(tokenizer)}
    assert ref["eos_id"] == 49407
    result = validate.check_text(art.encoder("text", "fp32"), "fp32", ref, dynamic_seq=True)
    assert result["passed"] and result["sliced_vs_full_max_abs"] <= validate.DYNAMIC_SEQ_MAX_ABS, result
