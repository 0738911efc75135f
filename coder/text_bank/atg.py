"""The Auto Text Generator: asks an LLM for att, ana and pair texts, robustly.

One task per (kind, class) or per unordered hard pair; tasks run on a thread
pool. A malformed answer is re-asked ``reasks`` times (with a format reminder)
and then recorded as a failure; a transport failure after the client's retries
is recorded too. The run never crashes on the LLM's account, and the response
cache (which keeps only answers that parse) makes a re-run repeat only what failed.

Analogous objects get METHOD.md's filter: an answer ``g`` whose ``a photo of
{g}.`` has cosine > 0.9 to ``a photo of {c'}.`` of another class c' is dropped
and replacements are asked for (bounded).
"""

from __future__ import annotations

import datetime as _dt
import json
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, LLMError, TextsError
from .llm import ChatClient, LLMCancelled
from .prompts import PROMPT_VERSION, ana_messages, att_messages, pair_messages, parse_bullets, parse_pair
from .texts import Texts

ANA_MAX_COS = 0.9


@dataclass(frozen=True)
class GenerateOptions:
    kinds: tuple[str, ...] = ("att", "ana", "pair")
    pairs_per_class: int = 3
    pairs: tuple[tuple[int, int], ...] | None = None  # explicit hard pairs (unordered)
    concurrency: int = 4
    reasks: int = 2
    min_ana: int = 3


@dataclass
class GenerateReport:
    done: int = 0
    failures: list[dict] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: queued tasks were cancelled, answered ones are in the result
    not_asked: int = 0  # tasks left for a re-run after an interrupt


def nearest_pairs(name_emb: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Unordered pairs (i<j) where j is among the k nearest classes of i (cosine of name prompts)."""
    sims = name_emb @ name_emb.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(name_emb) - 1)
    out = set()
    for i, row in enumerate(sims):
        for j in np.argsort(-row, kind="stable")[:k]:
            out.add((min(i, int(j)), max(i, int(j))))
    return sorted(out)


def read_pairs_file(path: str | Path, class_names: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """Pairs from `coder eval --confusions-out` JSON or "a,b" / "a<TAB>b" lines; returns (pairs, unknown names).

    A missing or unreadable file, or JSON pairs whose names are not strings, is a :class:`ConfigError`
    naming the entry (``--pairs-file p.json: pairs[2].true: expected a class name string, got int``).
    """
    index = {" ".join(n.lower().split()): i for i, n in enumerate(class_names)}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--pairs-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--pairs-file {path}: cannot read it ({e})") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "pairs" in data:
        raw = _json_pairs(data["pairs"], path)
    else:
        raw = [tuple(x.strip() for x in line.replace("\t", ",").split(",")[:2])
               for line in text.splitlines() if line.strip() and "," in line.replace("\t", ",")]
    pairs, unknown = set(), []
    for a, b in raw:
        ia, ib = index.get(" ".join(a.lower().split())), index.get(" ".join(b.lower().split()))
        if ia is None or ib is None:
            unknown.extend(n for n, i in ((a, ia), (b, ib)) if i is None)
        elif ia != ib:
            pairs.add((min(ia, ib), max(ia, ib)))
    return sorted(pairs), unknown


def _json_pairs(entries, path) -> list[tuple[str, str]]:
    if not isinstance(entries, list):
        raise ConfigError(f"--pairs-file {path}: pairs: expected a list")
    raw = []
    for i, p in enumerate(entries):
        for key in ("true", "predicted"):
            value = p.get(key) if isinstance(p, dict) else None
            if not isinstance(value, str):
                raise ConfigError(f"--pairs-file {path}: pairs[{i}].{key}: expected a class name string, "
                                  f"got {type(value).__name__}")
        raw.append((p["true"], p["predicted"]))
    return raw


class _Generator:
    def __init__(self, texts: Texts, client: ChatClient, encoder, opts: GenerateOptions):
        self.t, self.client, self.encoder, self.opts = texts, client, encoder, opts
        self.names = texts.class_names
        self.name_emb = encoder.encode([f"a photo of {n}." for n in self.names]) if encoder is not None else None

    def _ask_list(self, build: Callable[[int], list[dict]]) -> list[str]:
        for attempt in range(self.opts.reasks + 1):
            items = parse_bullets(self.client.ask(build(attempt), accept=parse_bullets))
            if items:
                return items
        raise TextsError(f"no usable list after {self.opts.reasks + 1} answers")

    def att(self, c: int) -> list[str]:
        return self._ask_list(lambda a: att_messages(self.names[c], a))

    def _too_close(self, c: int, candidates: list[str]) -> set[str]:
        if self.name_emb is None or not candidates:
            return set()
        emb = self.encoder.encode([f"a photo of {g}." for g in candidates])
        sims = emb @ self.name_emb.T
        sims[:, c] = -1.0  # only OTHER classes count
        return {g for g, s in zip(candidates, sims.max(axis=1)) if s > ANA_MAX_COS}

    def ana(self, c: int) -> list[str]:
        kept, dropped = [], []
        for attempt in range(self.opts.reasks + 1):
            got = self._ask_list(lambda a, at=attempt: ana_messages(self.names[c], dropped + kept, at + a))
            bad = self._too_close(c, got)
            dropped += [g for g in got if g in bad and g not in dropped]
            kept += [g for g in got if g not in bad and g not in kept]
            if len(kept) >= self.opts.min_ana or not bad:
                break
        if not kept:
            raise TextsError(f"every analogous object was too close to another class: {', '.join(dropped[:5])}")
        return kept

    def pair(self, i: int, j: int) -> tuple[list[str], list[str]]:
        for attempt in range(self.opts.reasks + 1):
            accept = lambda text: parse_pair(text, self.names[i], self.names[j])  # noqa: E731
            parsed = accept(self.client.ask(pair_messages(self.names[i], self.names[j], attempt), accept=accept))
            if parsed:
                return parsed
        raise TextsError(f"no two-sided answer after {self.opts.reasks + 1} tries")


def plan(texts: Texts, opts: GenerateOptions, name_emb: np.ndarray | None) -> list[tuple]:
    tasks: list[tuple] = [(kind, c) for kind in ("att", "ana") if kind in opts.kinds for c in range(len(texts.classes))]
    if "pair" in opts.kinds:
        if opts.pairs is not None:
            pairs = list(opts.pairs)
        elif name_emb is not None:
            pairs = nearest_pairs(name_emb, opts.pairs_per_class)
        else:
            raise TextsError("pair generation needs --artifacts (nearest classes) or --pairs-file")
        tasks += [("pair", i, j) for i, j in pairs]
    return tasks


def generate(texts: Texts, client: ChatClient, encoder, opts: GenerateOptions,
             on_progress: Callable[[int, int, int], None] = lambda done, total, failed: None) -> tuple[Texts, GenerateReport]:
    """Run every task; returns the updated texts and a report (failures recorded, never raised).

    Ctrl-C (KeyboardInterrupt in the calling thread) cancels every queued task, lets only the requests
    already on the wire finish, and returns what was answered with ``report.interrupted`` set; the
    response cache makes a re-run ask only what is missing.
    """
    gen = _Generator(texts, client, encoder, opts)
    tasks = plan(texts, opts, gen.name_emb)
    report = GenerateReport()
    results: dict[tuple, object] = {}
    on_progress(0, len(tasks), 0)
    with ThreadPoolExecutor(max_workers=max(1, opts.concurrency)) as pool:
        futures = {pool.submit(getattr(gen, task[0]), *task[1:]): task for task in tasks}
        collected = set()
        try:
            for fut in as_completed(futures):
                collected.add(fut)
                _collect(fut, futures[fut], results, report, gen.names)
                on_progress(report.done + len(report.failures), len(tasks), len(report.failures))
        except KeyboardInterrupt:
            report.interrupted = True
            client.cancel()  # running tasks send no further request (no re-ask, no retry)
            pool.shutdown(wait=False, cancel_futures=True)
            pending = [f for f in futures if f not in collected and not f.cancelled()]
            wait(pending)  # at most the in-flight requests
            for fut in pending:
                _collect(fut, futures[fut], results, report, gen.names)
            report.not_asked = len(tasks) - report.done - len(report.failures)
    return _apply(texts, results, client, report), report


def _collect(fut, task: tuple, results: dict, report: GenerateReport, names: list[str]) -> None:
    """Record one finished task: its value, or a failure (a cancelled task is neither)."""
    if fut.cancelled():
        return
    try:
        results[task] = fut.result()
        report.done += 1
    except LLMCancelled:
        pass
    except (LLMError, TextsError) as e:
        report.failures.append({"task": _describe(task, names), "error": str(e)})


def _describe(task: tuple, names: list[str]) -> str:
    return f"{task[0]}:{' -> '.join(names[i] for i in task[1:])}"


def _apply(texts: Texts, results: dict[tuple, object], client: ChatClient, report: GenerateReport) -> Texts:
    classes = list(texts.classes)
    pairs = dict(texts.pairs)
    for task, value in sorted(results.items(), key=lambda kv: kv[0]):
        if task[0] in ("att", "ana"):
            c = classes[task[1]]
            classes[task[1]] = replace(c, **{task[0]: tuple(dict.fromkeys([*getattr(c, task[0]), *value]))})
        else:
            i, j = task[1], task[2]
            pairs[(i, j)], pairs[(j, i)] = tuple(value[0]), tuple(value[1])
    provenance = {**texts.provenance, "llm_model": client.cfg.model, "prompt_version": PROMPT_VERSION,
                  "date": _dt.date.today().isoformat(), "failures": report.failures}
    return replace(texts, classes=tuple(classes), pairs=pairs, provenance=provenance)
