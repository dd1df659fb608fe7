"""The import graph: imports run one way down the layers and never in a circle (docs/architecture.md).

    errors, config, track, io (+ shipped, versions)  <  data  <  model  <  generation (+ reward_fns)
    <  train  <  rl  <  recipe  <  cli

Every import counts, module-level or inside a function (a lazy import up the layers is still an
import up the layers); only `if TYPE_CHECKING:` blocks are exempt (annotations, never executed).
Read with the standard library's `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LAYERS = {
    "errors": 0,
    "config": 0,
    "track": 0,
    "io": 0,
    "shipped": 0,
    "versions": 0,
    "logs": 0,
    "__init__": 0,
    "data": 1,
    "model": 2,
    "generation": 3,
    "reward_fns": 3,
    "train": 4,
    "rl": 5,
    "recipe": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "reward_fns":
        return LAYERS["reward_fns"]
    if parts[0] != "open_instruct":
        return None  # a third-party or stdlib module
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__")


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` may name a submodule: record it so the graph sees the real edge
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if _is_module(sub) else target))
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__init__.py").is_file()


def _files() -> list[Path]:
    return sorted(list((REPO / "open_instruct").rglob("*.py")) + list((REPO / "reward_fns").rglob("*.py")))


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in _files() if layer_of(module_name(p)) is None]
    assert not missing, (
        f"modules outside the layer map (add them to LAYERS and docs/architecture.md): {missing}"
    )


def test_imports_only_go_down_the_layers():
    problems = []
    for path in _files():
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if theirs is None:
                continue
            if me.startswith("reward_fns") and target.startswith("open_instruct"):
                problems.append(f"{path.relative_to(REPO)}:{line}: reward_fns imports {target}")
            elif theirs > mine:
                problems.append(
                    f"{path.relative_to(REPO)}:{line}: {me} (layer {mine}) imports {target} (layer {theirs})"
                )
    assert not problems, "imports up the layers:\n" + "\n".join(problems)


def test_every_project_import_names_a_real_module():
    """A relative import one dot short (`from .data import x` inside recipe/) is a bug the layer
    check cannot see: it points at a module that does not exist."""
    problems = []
    for path in _files():
        for line, target in imports_of(path):
            if target.split(".")[0] not in ("open_instruct", "reward_fns"):
                continue
            t = target
            while t and not _is_module(t):
                t = t.rpartition(".")[0]
            if t.count(".") < target.count(".") - 1 or not t:  # `from pkg.mod import name` is fine
                problems.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not problems, "imports of modules that do not exist:\n" + "\n".join(problems)


def _graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in _files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        for _, target in imports_of(path):
            while target and target not in modules:  # `from pkg.mod import name` -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != me and not me.startswith(target + "."):  # a package's own __init__
                graph[me].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself: a made-up graph with a cycle, and an upward import in a real layer pair."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("open_instruct.data.mixes") < layer_of("open_instruct.rl.rlvr")
    fake = REPO / "open_instruct" / "data" / "_layer_probe_tmp.py"
    fake.write_text("from ..rl import rlvr  # noqa\n")
    try:
        assert fake.stat().st_size and ("open_instruct.rl.rlvr" in [t for _, t in imports_of(fake)])
    finally:
        fake.unlink()


@pytest.mark.parametrize("limit", [500])
def test_no_module_is_much_longer_than_limit(limit):
    """ "A module past ~500 lines is asking to be split": allow 10% slack, no more."""
    long = {module_name(p): n for p in _files() if (n := len(p.read_text().splitlines())) > limit * 1.1}
    assert not long, f"modules past {limit} lines: {long}"
