"""Print `name==lower-bound` for the base and [cpu] requirements of pyproject.toml, one per line.

Runs on any Python >= 3.8 with nothing installed (no tomllib before 3.11): it reads only the two arrays
it needs, which pyproject.toml keeps as one quoted requirement per line. A requirement without a `>=`
lower bound is an error: the lowest-versions CI run must pin every dependency.
"""

import re
import sys
from pathlib import Path


def toml_array(text: str, key: str, table: str) -> list:
    section = re.search(r"^\[" + re.escape(table) + r"\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if section is None:
        raise SystemExit(f"pyproject.toml: no [{table}] table")
    plain = "\n".join(line.split("#", 1)[0].rstrip() for line in section.group(1).splitlines())  # no comments
    body = re.search(r"^" + re.escape(key) + r"\s*=\s*\[(.*?)\]$", plain, re.M | re.S)  # ends with "]" + EOL
    if body is None:
        raise SystemExit(f"pyproject.toml: no {key} in [{table}]")
    return re.findall(r'"([^"]+)"', body.group(1))


def main(path: str = "pyproject.toml") -> None:
    text = Path(path).read_text(encoding="utf-8")
    reqs = toml_array(text, "dependencies", "project") + toml_array(text, "cpu", "project.optional-dependencies")
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)", req.split(";")[0].strip())
        if m is None:
            raise SystemExit(f"pyproject.toml: {req!r} has no plain >= lower bound")
        print(f"{m.group(1)}=={m.group(2)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
