"""Move Python modules and packages, rewriting every reference in the tracked files.

    python scripts/move_modules.py OLD=NEW [OLD=NEW ...]

OLD and NEW are dotted module names (``store_service.domain=flowledger_core.domain``); a package
moves with everything under it. The files are moved with ``git mv``; then every tracked text file
has its references rewritten: ``import OLD``, ``from OLD import x``, ``from PARENT import LEAF``
(split into one import per moved module, keeping the old leaf as the alias where the name was
bound), dotted names in strings and prose (``store_service.domain.Flow``) and paths
(``store_service/domain.py``). Run ``ruff check --fix`` afterwards for the import order.

A tool for the layout changes of decision 0026; kept so that later moves are made the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOTS = {"flowledger": Path("clients/python/flowledger"), "flowctl": Path("clients/python/flowctl")}
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ".yaml", ".yml", ""}
SKIP = ("clients/python/flowledger/v1/", "uv.lock", "requirements/", "scripts/move_modules.py")


def module_path(dotted: str) -> Path:
    """Where a dotted module lives (a package directory or a .py file), existing or not."""
    top, _, rest = dotted.partition(".")
    base = ROOTS.get(top, Path(top))
    parts = rest.split(".") if rest else []
    package = base.joinpath(*parts)
    if package.is_dir():
        return package
    return package.with_suffix(".py") if parts else package


def path_prefix(dotted: str) -> str:
    top, _, rest = dotted.partition(".")
    base = str(ROOTS.get(top, Path(top)))
    return "/".join([base, *rest.split(".")]) if rest else base


def git_mv(old: str, new: str) -> None:
    source = module_path(old)
    if not source.exists():
        sys.exit(f"{old}: {source} does not exist")
    target = path_prefix(new) + ("" if source.is_dir() else ".py")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    for parent in Path(target).parents:
        if parent == Path(".") or str(parent) in ("clients", "clients/python"):
            break
        init = parent / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{parent.name}."""\n')
            subprocess.run(["git", "add", str(init)], check=True)
    subprocess.run(["git", "mv", str(source), target], check=True)


def rewrite_from_parent(text: str, moves: dict[str, str]) -> str:
    """``from store_service import convert as common, domain`` → one import per moved module."""
    pattern = re.compile(
        r"^(?P<indent>[ \t]*)from (?P<pkg>[\w.]+) import (?P<names>\([^)]*\)|[^\n]+)$", re.M
    )

    def replace(match: re.Match[str]) -> str:
        pkg, indent = match["pkg"], match["indent"]
        raw = match["names"].strip("()")
        comment = ""
        if "#" in raw and not match["names"].startswith("("):
            raw, comment = raw.split("#", 1)
            comment = "  #" + comment
        names = [n.strip() for n in raw.replace("\n", " ").split(",") if n.strip()]
        kept: list[str] = []
        lines: list[str] = []
        for entry in names:
            name, _, alias = (p.strip() for p in entry.partition(" as "))
            new = moves.get(f"{pkg}.{name}")  # the imported name is itself a moved module
            if new is None:
                kept.append(entry)
                continue
            new_pkg, _, new_leaf = new.rpartition(".")
            bound = alias or name
            suffix = f" as {bound}" if bound != new_leaf else ""
            lines.append(f"{indent}from {new_pkg} import {new_leaf}{suffix}")
        if not lines:
            return match.group(0)
        if kept:
            lines.insert(0, f"{indent}from {pkg} import {', '.join(kept)}")
        return "\n".join(lines) + comment

    return pattern.sub(replace, text)


def moves_for(dotted: str, moves: dict[str, str]) -> str | None:
    for old, new in moves.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old) :]
    return None


def rewrite(text: str, moves: dict[str, str]) -> str:
    text = rewrite_from_parent(text, moves)
    for old, new in sorted(moves.items(), key=lambda kv: -len(kv[0])):
        dotted = re.compile(rf"(?<![\w.]){re.escape(old)}(?=[.\s:'\"`,)\]]|$)", re.M)
        text = dotted.sub(new, text)
        old_path, new_path = path_prefix(old), path_prefix(new)
        slashed = re.compile(rf"(?<![\w/]){re.escape(old_path)}(?=[/.\s:'\"`,)\]]|$)", re.M)
        text = slashed.sub(new_path, text)
    return text


def main(argv: list[str]) -> None:
    moves = dict(arg.split("=", 1) for arg in argv)
    for old, new in moves.items():
        git_mv(old, new)
    files = subprocess.run(["git", "ls-files"], check=True, capture_output=True, text=True)
    for name in files.stdout.splitlines():
        path = Path(name)
        if name.startswith(SKIP) or path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        if path.suffix == "" and path.name not in ("Makefile", "Dockerfile", "run"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        changed = rewrite(text, moves)
        if changed != text:
            path.write_text(changed)
            print("rewrote", name)


if __name__ == "__main__":
    main(sys.argv[1:])
