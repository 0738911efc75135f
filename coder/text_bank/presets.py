"""Per-dataset text templates and rerank settings (configs as data).

Name templates are the per-dataset prompts of CoOp/CLIP's zero-shot evaluation;
``tau`` is CODER's published rerank gate per dataset (METHOD.md, "Zero-shot
stage 2"); ``k`` is the rerank candidate count (top-5). Datasets without a
published ``tau`` use the ImageNet value 0.1.
"""

from __future__ import annotations

from ..errors import ConfigError

# Generic one-to-one templates; {a} is the attribute, {c} the class, {o} the other class.
PAIR_TEMPLATES = [
    "Because of {a}, {c} is different from {o}.",
    "{c} differs from {o} because it has {a}.",
    "Unlike {o}, {c} has {a}.",
    "a photo of {c}, which has {a} unlike {o}.",
    "{a} distinguishes {c} from {o}.",
    "{c}, not {o}, because of {a}.",
    "One can tell {c} from {o} by {a}.",
]

_BASE = {
    "name": "a photo of a {c}.",
    "att": "{c} which has {a}",
    "ana": "a {c} similar to {g}.",
    "pair": PAIR_TEMPLATES,
    "tau": 0.1,
    "k": 5,
}

PRESETS: dict[str, dict] = {
    "default": {},
    "eurosat": {"name": "a centered satellite photo of {c}.", "tau": 0.3},
    "food": {"name": "a photo of {c}, a type of food.", "tau": 0.1},
    "pets": {"name": "a photo of a {c}, a type of pet.", "tau": 0.1},
    "dtd": {"name": "{c} texture.", "tau": 0.6},
    "caltech": {"name": "a photo of a {c}.", "tau": 0.3},
    "cub": {"name": "a photo of a {c}, a type of bird.", "tau": 0.2},
    "places": {"name": "a photo of a {c}.", "tau": 0.1},
    "flowers": {"name": "a photo of a {c}, a type of flower."},
    "aircraft": {"name": "a photo of a {c}, a type of aircraft."},
    "cars": {"name": "a photo of a {c}."},
    "ucf": {"name": "a photo of a person doing {c}."},
    "fashion": {"name": "a photo of a {c}, a type of clothing."},
}


def preset(name: str) -> dict:
    """Full template/setting dict of a preset: ``preset("dtd")["name"] == "{c} texture."``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**_BASE, **PRESETS[name]}
