"""``coder texts ...`` and ``coder bank build``: class-texts files and the folded bank."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import EXIT_INTERRUPTED, info, out, print_json, progress_bar, say, some
from ..errors import ConfigError, LLMError


texts_app = typer.Typer(help="Class-texts files: init, inspect.", no_args_is_help=True)
bank_app = typer.Typer(help="Build the folded CODER bank for a texts file.", no_args_is_help=True)


@texts_app.command("init")
def texts_init(
    classes: str = typer.Option(..., help="Built-in list name (cifar10, imagenet1k, ...) or a class file."),
    out_file: Path = typer.Option(..., "--out", help="texts.json to write."),
    preset: Optional[str] = typer.Option(None, help="Template preset (default, eurosat, food, pets, dtd, ...)."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Write a names-only class-texts file (the documented baseline)."""
    from ..text_bank.texts import init_texts, save_texts

    if out_file.exists() and not force:
        raise ConfigError(f"{out_file} exists; pass --force to overwrite")
    t = init_texts(classes, preset)
    save_texts(out_file, t)
    info(f"wrote {out_file}: {len(t.classes)} classes, preset {t.preset}")
    for rename in t.provenance.get("class_renames", []):
        say("warning", f"repeated class name made unique: {rename}")


@texts_app.command("synonyms")
def texts_synonyms(
    texts: Path = typer.Argument(..., help="Class-texts file to update in place (atomically)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Pick ambiguous synsets with this text encoder (else: most frequent sense)."),
    wordnet_dir: Optional[Path] = typer.Option(None, help="WordNet 3.0 dict dir (default /usr/share/wordnet)."),
) -> None:
    """Add WordNet 3.0 synonyms (exact for classes with a WordNet id)."""
    from ..text_bank.text_encoder import TextEncoder
    from ..text_bank.texts import load_texts, save_texts
    from ..text_bank.wordnet import WordNet, add_synonyms

    t = load_texts(texts)
    wn = WordNet(wordnet_dir) if wordnet_dir else WordNet()
    enc = TextEncoder.load(artifacts) if artifacts else None
    new, unmatched = add_synonyms(t, wn, enc)
    save_texts(texts, new)
    added = sum(len(b.syn) - len(a.syn) for a, b in zip(t.classes, new.classes))
    info(f"{texts}: {added} synonyms added; {len(unmatched)} classes without a WordNet noun"
         + (f": {some(unmatched)}" if unmatched else ""))


@texts_app.command("import")
def texts_import(
    texts: Path = typer.Argument(..., help="Class-texts file to update in place (atomically)."),
    source: Path = typer.Argument(..., help="Descriptor JSON: {class name: [text, ...]}."),
    kind: str = typer.Option("att", help="att | ana."),
    fmt: str = typer.Option("vcd", "--format", help="vcd (descriptor JSON) | cupl (CuPL prompt file)."),
) -> None:
    """Import existing LLM descriptions, matching class names tolerantly."""
    from ..text_bank.importers import import_descriptions, read_descriptions
    from ..text_bank.texts import load_texts, save_texts

    t = load_texts(texts)
    dropped: list[str] = []
    new, missing, extra = import_descriptions(t, read_descriptions(source, fmt, dropped), kind)
    save_texts(texts, new)
    if dropped:
        say("warning", f"dropped {len(dropped)} descriptions of {source} that are empty once cleaned: {some(dropped, 5)}")
    info(f"{texts}: imported {kind} for {len(t.classes) - len(missing)}/{len(t.classes)} classes")
    if missing:
        say("warning", f"no descriptions for {len(missing)} classes: {some(missing)}")
    if extra:
        say("warning", f"{len(extra)} entries of {source} match no class: {some(extra)}")


@texts_app.command("generate")
def texts_generate(
    texts: Path = typer.Argument(..., help="Class-texts file to update in place (atomically)."),
    llm_url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(..., help="Model name the endpoint serves."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key."),
    kinds: str = typer.Option("att,ana,pair", help="Comma list of att, ana, pair."),
    pairs_per_class: int = typer.Option(3, min=0, help="Hard pairs: K nearest classes in text-embedding space."),
    pairs_file: Optional[Path] = typer.Option(None, help="Hard pairs from `coder eval --confusions-out` or a,b lines."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Text encoder for the ana filter and nearest pairs (default as classify)."),
    concurrency: int = typer.Option(4, min=1, help="Requests in flight."),
    timeout: float = typer.Option(60.0, help="Seconds per request before a retry."),
    cache_dir: Optional[Path] = typer.Option(None, help="Response cache (default: .coder-llm-cache beside TEXTS)."),
) -> None:
    """Ask an LLM for attributes, analogous objects and one-to-one pair texts (ATG)."""
    from ..manifest import default_artifact_dir
    from ..text_bank.text_encoder import TextEncoder
    from ..text_bank.atg import GenerateOptions, generate, read_pairs_file
    from ..text_bank.llm import ChatClient, LLMConfig, ResponseCache
    from ..text_bank.texts import load_texts, save_texts

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if not wanted or set(wanted) - {"att", "ana", "pair"}:
        raise ConfigError(f"--kinds {kinds!r}: a comma list of att, ana, pair")
    t = load_texts(texts)
    pairs = None
    if pairs_file is not None:
        found, unknown = read_pairs_file(pairs_file, t.class_names)
        pairs = tuple(found)
        if unknown:
            say("warning", f"{len(set(unknown))} names in {pairs_file} are not classes: {some(sorted(set(unknown)))}")
    needs_encoder = "ana" in wanted or ("pair" in wanted and pairs is None)
    encoder = TextEncoder.load(artifacts or default_artifact_dir()) if needs_encoder else None
    client = ChatClient(LLMConfig(llm_url, model, api_key_env, timeout_s=timeout),
                        ResponseCache(cache_dir or texts.parent / ".coder-llm-cache"))
    opts = GenerateOptions(wanted, pairs_per_class, pairs, concurrency)
    with progress_bar() as bar:
        task = bar.add_task("asking the LLM", total=None)

        def progress(done: int, total: int, failed: int) -> None:
            bar.update(task, completed=done, total=total, description=f"asking the LLM ({failed} failed)")

        new, report = generate(t, client, encoder, opts, progress)
    save_texts(texts, new)
    if report.interrupted:
        say("warning", f"interrupted: {report.done} answered generations saved to {texts}, {report.not_asked} not "
                       "asked; re-run the same command to ask only those")
        raise typer.Exit(EXIT_INTERRUPTED)
    info(f"{texts}: {report.done} generations done, {len(report.failures)} failed")
    for f in report.failures:
        say("failed", f"{f['task']}: {f['error']}")
    if report.failures:
        raise LLMError(f"{len(report.failures)} generations failed (recorded in provenance.failures); "
                       "re-run the same command to retry them, finished ones come from the cache")


@texts_app.command("list")
def texts_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The built-in class lists and their sources."""
    from ..text_bank.texts import builtin_lists

    lists = builtin_lists()
    if as_json:
        print_json({k: {"classes": len(v["classes"]), "preset": v["preset"], "source": v["source"],
                        "wordnet_ids": "wnids" in v} for k, v in lists.items()})
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="built-in class lists")
    for col in ("name", "classes", "preset", "source"):
        t.add_column(col)
    for k, v in lists.items():
        t.add_row(escape(k), str(len(v["classes"])), escape(v["preset"]), escape(v["source"]))
    out.print(t)


@bank_app.command("build")
def bank_build(
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Artifact directory from `coder export`."),
    texts: Path = typer.Option(..., "--texts", help="Class-texts file (`coder texts init`)."),
    precision: str = typer.Option("fp32", help="Text encoder precision: fp32 | fp16."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Default <artifacts>/banks/<name>."),
    name: Optional[str] = typer.Option(None, "--name", help="Bank name (default: the texts file's name)."),
    force: bool = typer.Option(False, "--force", help="Replace a bank of that name built from another texts file."),
    clip_weights: bool = typer.Option(False, "--clip-weights",
                                      help="Also encode the plain-CLIP prompt ensemble now (else on first use: "
                                           "coder eval's baseline, coder fit)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Encode every text (cached, length-grouped) and write the folded bank."""
    build_bank_with_progress(artifacts, texts, precision, out_dir, as_json, name=name, force=force,
                             clip_weights=clip_weights)


def build_bank_with_progress(artifacts: Path, texts_path: Path, precision: str, out_dir, as_json: bool, quiet: bool = False,
                             name: Optional[str] = None, force: bool = False, clip_weights: bool = False) -> None:
    import dataclasses

    from ..manifest import load_artifact
    from ..store import output_lock
    from ..text_bank.bank import check_replace, default_bank_dir
    from ..text_bank.texts import load_texts

    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision {precision!r}: choose fp32 or fp16")
    texts = load_texts(texts_path)
    if name is not None:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--name {name!r}: a plain folder name")
        texts = dataclasses.replace(texts, name=name)
    out_dir = out_dir or default_bank_dir(load_artifact(artifacts), texts.name)
    with output_lock(out_dir):  # a second build of the same bank exits 3 naming this one
        check_replace(out_dir, texts, texts_path, force)
        path, meta = _build_with_bar(artifacts, texts, precision, out_dir, clip_weights, texts_path)
    summary = {"bank": str(path), **meta["counts"], "classes": len(meta["classes"]), "settings": meta["settings"]}
    if quiet:
        return
    if as_json:
        print_json(summary)
    else:
        info(f"bank {path}: {meta['counts']['texts']} texts ({meta['counts']['newly_encoded']} newly encoded), "
                  f"{len(meta['classes'])} classes, {meta['counts']['pairs']} pairs, tau {meta['settings']['tau']}")


def _build_with_bar(artifacts, texts, precision, out_dir, clip_weights, texts_path):
    from ..text_bank.bank import build_bank

    with progress_bar() as bar:
        task = bar.add_task("encoding texts", total=None)
        return build_bank(artifacts, texts, precision, out_dir,
                          lambda done, total: bar.update(task, completed=done, total=total),
                          clip_weights=clip_weights, texts_file=texts_path)


ARTIFACTS = typer.Option(None, "--artifacts", "-a", help="Default: $CODER_ARTIFACTS, else the newest ./coder-artifacts/*.")
BANK = typer.Option(..., "--bank", help="Bank name under <artifacts>/banks.")


def _bank_dir(artifacts: Optional[Path], bank: str):
    from ..manifest import default_artifact_dir, load_artifact
    from ..runtime.classifier import find_bank

    art = load_artifact(artifacts or default_artifact_dir())
    return art, find_bank(art.root, bank)


def _change(artifacts: Optional[Path], bank: str, add: list, remove: list, texts: Optional[Path],
            as_json: bool) -> None:
    """Load the current version, change it (refused before any write if bad), commit the next version."""
    from ..store import output_lock
    from ..text_bank.bank import load_bank
    from ..text_bank.live import CachingEncoder, change_bank
    from ..text_bank.text_encoder import TextEncoder
    from ..text_bank.texts import load_texts
    from ..text_bank.versions import commit_change

    art, root = _bank_dir(artifacts, bank)
    given = load_texts(texts) if texts is not None else None
    with output_lock(root):
        old = load_bank(root, art)
        encoder = CachingEncoder.open(TextEncoder.load(art.root, old.meta["encoder"].get("precision", "fp32")),
                                      root.parent)
        new, change = change_bank(old, encoder, add, remove, given)
        record = commit_change(root, old, new, change)
    summary = {**record, "bank": str(root), "texts_encoded": change.texts_encoded,
               "without_synonyms": list(change.without_synonyms)}
    if as_json:
        print_json(summary)
        return
    info(f"bank {root.name}: version {record['version']} ({record['content_sha256'][:12]}), "
         f"{len(record['classes'])} classes; added {', '.join(record['added']) or 'none'}; removed "
         f"{', '.join(record['removed']) or 'none'}; {change.texts_encoded} texts encoded")
    for c, words in change.refolded:
        say("warning", f"{c}: analogous objects too close to a new class dropped ({', '.join(words)}); refolded")
    if change.without_synonyms:
        say("warning", f"no WordNet synonyms for {some(list(change.without_synonyms))}")


@bank_app.command("add")
def bank_add(
    classes: list[str] = typer.Argument(..., help="Class names to add (after the existing ones, in this order)."),
    artifacts: Optional[Path] = ARTIFACTS,
    bank: str = BANK,
    texts: Optional[Path] = typer.Option(None, "--texts", help="Texts file with these classes' texts (e.g. after "
                                                                 "`coder texts generate`); else names + synonyms."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Add classes to a bank as a new version (only new texts are encoded; atomic; `bank rollback` undoes it)."""
    _change(artifacts, bank, classes, [], texts, as_json)


@bank_app.command("remove")
def bank_remove(
    classes: list[str] = typer.Argument(..., help="Class names to remove."),
    artifacts: Optional[Path] = ARTIFACTS,
    bank: str = BANK,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove classes from a bank as a new version (atomic; `bank rollback` undoes it)."""
    _change(artifacts, bank, [], classes, None, as_json)


@bank_app.command("versions")
def bank_versions(
    artifacts: Optional[Path] = ARTIFACTS,
    bank: str = BANK,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The versions of a bank: number, content sha256, classes added/removed, when; * marks the current one."""
    from ..text_bank.bank import load_bank
    from ..text_bank.versions import current_version, list_versions

    art, root = _bank_dir(artifacts, bank)
    versions, current = list_versions(root), current_version(root)
    sha = load_bank(root, art).content_sha256
    if as_json:
        print_json({"bank": str(root), "current": current, "content_sha256": sha,
                    "versions": [{k: v for k, v in r.items() if k not in ("format", "format_version")}
                                 for r in versions]})
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"bank {root.name}: current "
                           + (f"version {current}" if current is not None else f"unversioned build {sha[:12]}")))
    for col in ("", "version", "sha256", "classes", "added", "removed", "when"):
        t.add_column(col, overflow="fold")
    for r in versions:
        t.add_row("*" if r["version"] == current else "", str(r["version"]), r["content_sha256"][:12],
                  str(len(r.get("classes", []))), escape(some(r["added"], 5) if r["added"] else ""),
                  escape(some(r["removed"], 5) if r["removed"] else ""),
                  escape(r["when"].replace("T", " ").replace("+00:00", "Z")))
    out.print(t)


@bank_app.command("rollback")
def bank_rollback(
    artifacts: Optional[Path] = ARTIFACTS,
    bank: str = BANK,
    to: Optional[int] = typer.Option(None, "--to", help="Version to restore (default: the current one's parent)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make an earlier version current again (its own files: byte-identical predictions)."""
    from ..store import output_lock
    from ..text_bank.versions import rollback

    _, root = _bank_dir(artifacts, bank)
    with output_lock(root):
        record = rollback(root, to)
    if as_json:
        print_json({"bank": str(root), "current": record["version"], "content_sha256": record["content_sha256"]})
        return
    info(f"bank {root.name}: version {record['version']} ({record['content_sha256'][:12]}) is current, "
         f"{len(record.get('classes', []))} classes")
