"""The recipes and data mixes that ship with the toolkit, found wherever it is installed.

In a source checkout (editable install included) they are the repository's top-level `recipes/` and
`data_mixes/`; an installed wheel carries the same files as `open_instruct/_shipped/recipes/` and
`open_instruct/_shipped/data_mixes/` (the package-dir mapping in pyproject.toml). So
`open-instruct run tiny` works after a plain `pip install`, from any directory.

Ground floor: the standard library and open_instruct.errors only (yaml is imported inside
`list_recipes`, the one place that parses a recipe).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import ConfigError

RECIPE_SUFFIXES = (".yaml", ".yml")

_PACKAGE_DIR = Path(__file__).resolve().parent


def _has_shipped(root: Path) -> bool:
    return (root / "recipes").is_dir() and (root / "data_mixes").is_dir()


def shipped_root() -> Path:
    """The directory holding `recipes/` and `data_mixes/`: the installed copy inside the package
    (a wheel), else the checkout this module was imported from (source tree, editable install)."""
    for root in (_PACKAGE_DIR / "_shipped", _PACKAGE_DIR.parent):
        if _has_shipped(root):
            return root
    raise ConfigError(
        f"the shipped recipes and data mixes are missing: neither {_PACKAGE_DIR / '_shipped'} nor "
        f"{_PACKAGE_DIR.parent} holds recipes/ and data_mixes/ (a broken install? reinstall the package)"
    )


def _shipped_recipes() -> dict[str, Path]:
    recipes = shipped_root() / "recipes"
    found: dict[str, Path] = {}
    for p in sorted(recipes.iterdir()):
        if p.is_file() and p.suffix in RECIPE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def _strip_suffix(name: str) -> str:
    for suffix in RECIPE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_recipe(name_or_path: str) -> Path:
    """An existing recipe file wins (`my/recipe.yaml`); else a shipped recipe by name (`tiny`,
    `tiny.yaml`, or the repository-relative `recipes/tiny.yaml` the docs use). Anything else is a
    one-line ConfigError naming the shipped recipes and the closest one."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = _shipped_recipes()
    name = _strip_suffix(p.name)
    # Only a bare name or `recipes/NAME` falls back to the shipped copy: a missing file in some
    # other directory is the user's typo, not a request for the shipped recipe of that name.
    by_name = not p.is_absolute() and p.parent.as_posix() in (".", "recipes")
    if by_name and name in shipped:
        return shipped[name]
    names = sorted(shipped)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    what = "not a file or a shipped recipe" if by_name else "no such file"
    raise ConfigError(f"recipe '{name_or_path}': {what} (shipped recipes: {', '.join(names)}){hint}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_comment(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s.startswith("#"):
                text = s.lstrip("#").strip()
                if text:
                    return text
            elif s:
                break
    return ""


def recipe_description(path: Path) -> str:
    """The recipe's `description:` as one line, else its first comment line, else ""."""
    import yaml  # not at module import: this module stays standard-library only

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        data = None
    if isinstance(data, dict) and data.get("description"):
        return _one_line(data["description"])
    try:
        return _first_comment(path)
    except OSError:
        return ""


def list_recipes() -> list[tuple[str, Path, str]]:
    """The shipped recipes, sorted by name: (name, path, one-line description)."""
    return [(name, path, recipe_description(path)) for name, path in _shipped_recipes().items()]


def resolve_data_path(value: str, recipe_dir: Path) -> Path | None:
    """A data path named in a recipe, or None when it is nowhere. Absolute paths are taken as they
    are. A relative one is tried against the current directory, the recipe's directory (the order
    of the pipeline's `resolve_path`), then the recipe directory's parent (recipes name
    `data_mixes/...` relative to the repository root, which is `recipes/..`), then the shipped copy
    (a recipe copied out of the package still finds the shipped data mixes)."""
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return p if p.exists() else None
    if p.exists():
        return p
    recipe_dir = Path(recipe_dir)
    candidates = [recipe_dir / p, recipe_dir.parent / p]
    try:
        candidates.append(shipped_root() / p)
    except ConfigError:
        pass  # a broken install: the first places are still worth a look, the caller names the miss
    for c in candidates:
        if c.exists():
            return c
    return None
