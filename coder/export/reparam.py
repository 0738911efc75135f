"""Fold train-time branches before export (MobileOne / FastViT / RepVGG-style blocks).

MobileCLIP's image towers (timm ``fastvit_mci*``) train with parallel conv +
BatchNorm branches that their authors fold into one conv for inference and
export. timm implements the fold (``timm.utils.model.reparameterize_model``:
``fuse()`` / ``reparameterize()`` / ``switch_to_deploy()`` per module). The fold
runs on a COPY: validation compares the exported graph with the un-folded torch
model, so the fold itself is checked, and the manifest records what was folded.

>>> visual, record = reparameterize(model.visual)       # doctest: +SKIP
>>> record                                               # {"applied": True, "modules": 37, ...}
"""

from __future__ import annotations

from typing import Any

_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")


def foldable_modules(module) -> list[str]:
    """Names of submodules with a fuse/reparameterize hook (empty: nothing to fold)."""
    return [name for name, m in module.named_modules() if name and any(hasattr(m, h) for h in _HOOKS)]


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def reparameterize(visual) -> tuple[Any, dict[str, Any]]:
    """``(folded copy or visual itself, manifest record)``; ``visual`` is never modified."""
    names = foldable_modules(visual)
    if not names:
        return visual, {"applied": False}
    from timm.utils.model import reparameterize_model

    folded = reparameterize_model(visual, inplace=False).eval()
    return folded, {
        "applied": True,
        "method": "timm.utils.model.reparameterize_model",
        "modules": len(names),
        "kinds": sorted({type(visual.get_submodule(n)).__name__ for n in names}),
        "params_before": _params(visual),
        "params_after": _params(folded),
        "validated_against": "un-reparameterized torch model",
    }
