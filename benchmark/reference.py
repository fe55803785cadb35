"""The config reference, read from the config dataclasses themselves (the one place a key, its
type, default and help are written): `seqedit help` prints it for the groups asked, and
`python -m benchmark.reference` writes docs/reference/config.md, which a test holds equal to what
this module makes, so the page cannot drift from the code. Torch-free, like the configs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

HELP_GROUPS = ("editor", "data", "model", "loop", "init", "logger", "trainer", "run")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "config.md"


def rows(group: str, node) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of each field of a config dataclass; nested groups left out."""
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):  # run's own groups are listed under their names
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        key = f"{group}.{f.name}" if group != "run" else f.name
        out.append((key, kind, repr(value), f.metadata.get("help", "")))
    return out


def _table(entries: list[tuple[str, str, str, str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| key | type | default | meaning |", "|---|---|---|---|",
            *[f"| `{key}` | `{cell(kind)}` | `{cell(default)}` | {cell(text)} |"
              for key, kind, default, text in entries]]


def markdown() -> str:
    """The whole reference: the run-wide groups with their defaults, then every registered editor,
    dataset and model with its own defaults."""
    import data.configs  # noqa: F401  (registers the datasets, torch-free)
    import editors.configs  # noqa: F401
    from benchmark.config import compose, instantiate
    from benchmark.models.config import MODELS
    from benchmark.registry import DATASETS, EDITORS

    chosen = instantiate(compose([]))
    out = ["# Config reference", "",
           "Every key, its type, default and meaning, generated from the config dataclasses "
           "(`python -m benchmark.reference`; `seqedit help GROUP editor=NAME` prints the same for one choice). "
           "Any key is set on the command line as `key=value`.", ""]
    for group in ("run", "loop", "init", "logger", "trainer"):
        node = chosen if group == "run" else getattr(chosen, group)
        out += [f"## {group}", "", *_table(rows(group, node)), ""]
    for group, registry in (("editor", EDITORS), ("data", DATASETS), ("model", MODELS)):
        out += [f"## {group}", ""]
        for name in registry.names():
            entry = registry.get(name)
            out += [f"### {group}={name}", "", entry.description, "",
                    *_table(rows(group, entry.config_class(name=name))), ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):  # an option is not a path to write over
        print("usage: python -m benchmark.reference [PATH]   (default docs/reference/config.md)", file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    path = Path(argv[0]) if argv else PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
