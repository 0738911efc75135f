"""The class-texts file: every text CODER uses for a class list, as versioned JSON.

    {
      "format": "coder.texts", "format_version": 1,
      "name": "cifar10", "preset": "default",
      "templates": {"name": "a photo of a {c}.", "att": "{c} which has {a}", "ana": "a {c} similar to {g}.",
                    "pair": ["Because of {a}, {c} is different from {o}.", ...],
                    "clip": ["a photo of a {c}.", ...], "tau": 0.1, "k": 5},
      "classes": [{"name": "cat", "wnid": null, "syn": ["true cat"], "att": ["pointed ears"], "ana": ["lynx"]}],
      "pairs": [{"from": "cat", "to": "dog", "texts": ["a small flat face"]}],
      "provenance": {"llm_model": null, "prompt_version": null, "date": null, "class_source": "..."}
    }

``syn``/``att``/``ana`` hold the raw words (synonym, attribute, analogous
object); templates are applied when the bank is built. ``pairs`` are ordered:
``from`` c's side of "c differs from o". Validation errors name the field,
e.g. ``classes[17].att[2]: empty string``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TextsError
from ..store import atomic_write_json
from .presets import preset as preset_settings

FORMAT = "coder.texts"
FORMAT_VERSION = 1
KINDS = ("syn", "att", "ana")
_WNID_LINE = re.compile(r"^(n\d{8})\s+(.+)$")


@dataclass(frozen=True)
class ClassTexts:
    name: str
    wnid: str | None = None
    syn: tuple[str, ...] = ()
    att: tuple[str, ...] = ()
    ana: tuple[str, ...] = ()


@dataclass(frozen=True)
class Texts:
    """A loaded class-texts file. ``pairs[(i, j)]`` = attributes of class i vs class j."""

    name: str
    preset: str
    templates: dict[str, Any]
    classes: tuple[ClassTexts, ...]
    pairs: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def with_classes(self, classes: list[ClassTexts]) -> "Texts":
        return replace(self, classes=tuple(classes))


@lru_cache(maxsize=1)
def _data(name: str) -> dict:
    return json.loads(resources.files("coder.text_bank").joinpath("data", name).read_text(encoding="utf-8"))


def builtin_lists() -> dict[str, dict]:
    """``{"cifar10": {"classes": [...], "preset": "default", "source": "..."}, ...}``.

    A list whose WordNet ids are known (``imagenet1k``) also has ``wnids`` (one per class,
    same order) and ``wnid_source``.
    """
    return _data("class_lists.json")["lists"]


def clip_templates() -> list[str]:
    """OpenAI CLIP's 80 ImageNet prompt templates (for the plain-CLIP weights W)."""
    return list(_data("imagenet_templates.json")["templates"])


def read_class_file(path: str | os.PathLike) -> list[ClassTexts]:
    """One class per line; ``n01440764 tench, Tinca tinca`` lines give a WordNet id (first name kept).

    A UTF-8 byte-order mark is ignored. Names that repeat under different WordNet ids (ImageNet's own
    synset mapping has "n02012849 crane" and "n03126707 crane") are made unique by
    :func:`unique_class_names`; any other repeated name is an error naming both lines.
    """
    return parse_class_file(path)[0]


def parse_class_file(path: str | os.PathLike) -> tuple[list[ClassTexts], list[str]]:
    """(classes, renames) of a class file; ``renames`` reads like ``"line 518: crane -> crane (lifting device)"``."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: Windows editors start files with a BOM
    except UnicodeDecodeError as e:
        raise TextsError(f"{path}: not UTF-8 text ({e})") from None
    try:
        return parse_class_lines(text.splitlines())
    except TextsError as e:
        raise TextsError(f"{path}: {e}") from None


def parse_class_lines(lines: list[str]) -> tuple[list[ClassTexts], list[str]]:
    """(classes, renames) of class-file lines (what :func:`parse_class_file` reads), e.g. ``["cat", "dog"]``."""
    entries = []  # (line number, wnid, [names on the line])
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        m = _WNID_LINE.match(line)
        wnid, names = (m.group(1), m.group(2).split(",")) if m else (None, [line])
        names = [n.strip().replace("_", " ") for n in names if n.strip()] or [line]
        entries.append((number, wnid, names))
    return unique_class_names(entries)


def _name_key(name: str) -> str:
    return " ".join(name.lower().split())


def unique_class_names(entries: list[tuple[int, str | None, list[str]]]) -> tuple[list[ClassTexts], list[str]]:
    """Class names for ``(line, wnid, names)`` entries, unique case-insensitively.

    The first entry keeps its first name. A later entry whose first name is taken, and whose WordNet id
    differs from every earlier one, takes (1) its next own name not taken ("n03710721 maillot, tank suit"
    -> "tank suit"), else (2) "name (parent)" with the first lemma of its WordNet hypernym ("crane (lifting
    device)"), else (3) "name (wnid)" when WordNet is not installed. The same name twice without WordNet ids,
    or under the same id, is an error.
    """
    taken: dict[str, int] = {}  # name key -> line
    wnids: dict[str, int] = {}
    out, renames = [], []
    for line, wnid, names in entries:
        if wnid is not None and wnid in wnids:
            raise TextsError(f"line {line}: WordNet id {wnid} already used on line {wnids[wnid]}")
        name = names[0]
        if _name_key(name) in taken:
            if wnid is None:
                raise TextsError(f"line {line}: duplicate class name {name!r} (first on line {taken[_name_key(name)]})")
            name = next((n for n in names[1:] if _name_key(n) not in taken), None) or _qualified(name, wnid, taken)
            renames.append(f"line {line}: {names[0]} -> {name}")
        taken[_name_key(name)] = line
        if wnid is not None:
            wnids[wnid] = line
        out.append(ClassTexts(name=name, wnid=wnid))
    return out, renames


def _qualified(name: str, wnid: str, taken: dict[str, int]) -> str:
    """``name (hypernym lemma)`` from WordNet 3.0, or ``name (wnid)`` without it."""
    from . import wordnet

    try:
        wn = wordnet.WordNet(wordnet.DEFAULT_DIR)
        parents = [wn.synset(h).lemmas[0] for h in wn.synset(wnid).hypernyms]
    except (ConfigError, TextsError):
        parents = []
    for label in [*parents, wnid]:
        if _name_key(f"{name} ({label})") not in taken:
            return f"{name} ({label})"
    raise TextsError(f"cannot make {name!r} ({wnid}) unique")


def init_texts(classes: str, preset: str | None = None) -> Texts:
    """A names-only texts file from a built-in list name or a class file path."""
    lists, renames = builtin_lists(), []
    if classes in lists:
        entry = lists[classes]
        wnids = entry.get("wnids") or [None] * len(entry["classes"])  # exact WordNet synsets where known
        items = [ClassTexts(name=n.replace("_", " "), wnid=w) for n, w in zip(entry["classes"], wnids)]
        name, source, preset = classes, entry["source"], preset or entry["preset"]
        if "wnid_source" in entry:
            source += f"; WordNet ids: {entry['wnid_source']}"
    elif Path(classes).is_file():
        (items, renames), name, source = parse_class_file(classes), Path(classes).stem, str(classes)
        preset = preset or "default"
    else:
        raise TextsError(f"--classes {classes!r}: neither a built-in list ({', '.join(lists)}) nor a file")
    templates = {**preset_settings(preset), "clip": clip_templates()}
    provenance = {"class_source": source, "llm_model": None, "prompt_version": None, "date": None}
    if renames:
        provenance["class_renames"] = renames  # repeated names made unique (see unique_class_names)
    texts = Texts(name, preset, templates, tuple(items), {}, provenance)
    validate(to_json(texts))
    return texts


def names_texts(names: list[str], name: str = "classes", preset: str = "default") -> Texts:
    """The texts ``coder texts init --classes FILE`` writes for a FILE holding ``names``, one per line.

    >>> names_texts(["cat", "dog"]).class_names
    ['cat', 'dog']
    """
    items, renames = parse_class_lines(list(names))
    if not items:
        raise TextsError("no class names given")
    templates = {**preset_settings(preset), "clip": clip_templates()}
    provenance = {"class_source": "class names", "llm_model": None, "prompt_version": None, "date": None}
    if renames:
        provenance["class_renames"] = renames
    texts = Texts(name, preset, templates, tuple(items), {}, provenance)
    validate(to_json(texts))
    return texts


def to_json(t: Texts) -> dict[str, Any]:
    names = t.class_names
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": t.name, "preset": t.preset,
        "templates": t.templates,
        "classes": [{"name": c.name, "wnid": c.wnid, "syn": list(c.syn), "att": list(c.att), "ana": list(c.ana)}
                    for c in t.classes],
        "pairs": [{"from": names[i], "to": names[j], "texts": list(v)} for (i, j), v in sorted(t.pairs.items())],
        "provenance": t.provenance,
    }


def save_texts(path: str | os.PathLike, t: Texts) -> None:
    atomic_write_json(path, to_json(t))


def load_texts(path: str | os.PathLike) -> Texts:
    """Read + validate; raises :class:`TextsError` naming the first bad field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise TextsError(f"{path}: no such texts file (create one with `coder texts init`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TextsError(f"{path}: not valid JSON ({e})") from None
    try:
        return from_json(data, Path(path).stem)
    except TextsError as e:
        raise TextsError(f"{path}: {e}") from None


def from_json(data: Any, default_name: str = "texts") -> Texts:
    """A texts document (as :func:`to_json` writes it) -> :class:`Texts`, validated."""
    validate(data)
    classes = tuple(ClassTexts(c["name"], c.get("wnid"), *(tuple(c.get(k, ())) for k in KINDS))
                    for c in data["classes"])
    index = {c.name: i for i, c in enumerate(classes)}
    pairs = {(index[p["from"]], index[p["to"]]): tuple(p["texts"]) for p in data.get("pairs", [])}
    return Texts(data.get("name", default_name), data["preset"], data["templates"], classes, pairs,
                 data.get("provenance", {}))


def _strings(value: Any, where: str, allow_empty_list: bool = True) -> None:
    if not isinstance(value, list):
        raise TextsError(f"{where}: expected a list of strings")
    if not value and not allow_empty_list:
        raise TextsError(f"{where}: empty list")
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise TextsError(f"{where}[{i}]: expected a string, got {type(s).__name__}")
        if not s.strip():
            raise TextsError(f"{where}[{i}]: empty string")


def _template(value: Any, where: str, slots: tuple[str, ...]) -> None:
    if not isinstance(value, str) or any("{" + s + "}" not in value for s in slots):
        raise TextsError(f"{where}: must be a string containing {', '.join('{' + s + '}' for s in slots)}")


def validate(data: Any) -> None:
    """Structural checks of a texts JSON document; the error names the field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TextsError(f"format: expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise TextsError(f"format_version: {data.get('format_version')!r}, this coder reads {FORMAT_VERSION}")
    tpl = data.get("templates")
    if not isinstance(tpl, dict):
        raise TextsError("templates: missing or not an object")
    _template(tpl.get("name"), "templates.name", ("c",))
    _template(tpl.get("att"), "templates.att", ("c", "a"))
    _template(tpl.get("ana"), "templates.ana", ("c", "g"))
    _strings(tpl.get("pair"), "templates.pair", allow_empty_list=False)
    for i, t in enumerate(tpl["pair"]):
        _template(t, f"templates.pair[{i}]", ("a", "c", "o"))
    _strings(tpl.get("clip"), "templates.clip", allow_empty_list=False)
    for i, t in enumerate(tpl["clip"]):
        _template(t, f"templates.clip[{i}]", ("c",))
    for key in ("tau", "k"):
        if not isinstance(tpl.get(key), (int, float)) or tpl[key] <= 0:
            raise TextsError(f"templates.{key}: must be a positive number")
    _validate_classes(data.get("classes"))
    _validate_pairs(data.get("pairs", []), {c["name"] for c in data["classes"]})


def _validate_classes(classes: Any) -> None:
    if not isinstance(classes, list) or not classes:
        raise TextsError("classes: must be a non-empty list")
    seen: set[str] = set()
    for i, c in enumerate(classes):
        where = f"classes[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            raise TextsError(f"{where}.name: missing or empty")
        if c["name"] in seen:
            raise TextsError(f"{where}.name: duplicate class name {c['name']!r}")
        seen.add(c["name"])
        wnid = c.get("wnid")
        if wnid is not None and not re.fullmatch(r"n\d{8}", str(wnid)):
            raise TextsError(f"{where}.wnid: {wnid!r} is not a WordNet noun id like n01440764")
        for k in KINDS:
            _strings(c.get(k, []), f"{where}.{k}")


def _validate_pairs(pairs: Any, names: set[str]) -> None:
    if not isinstance(pairs, list):
        raise TextsError("pairs: expected a list")
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(pairs):
        where = f"pairs[{i}]"
        if not isinstance(p, dict):
            raise TextsError(f"{where}: expected an object")
        for key in ("from", "to"):
            if p.get(key) not in names:
                raise TextsError(f"{where}.{key}: {p.get(key)!r} is not a class of this file")
        if p["from"] == p["to"]:
            raise TextsError(f"{where}: a class cannot be paired with itself")
        if (p["from"], p["to"]) in seen:
            raise TextsError(f"{where}: duplicate pair {p['from']!r} -> {p['to']!r}")
        seen.add((p["from"], p["to"]))
        _strings(p.get("texts"), f"{where}.texts", allow_empty_list=False)
