"""Packaging: a `pip install` carries the recipes, data mixes and sample data, and the installed copy
finds them from any directory (open_instruct/shipped.py); plus the shipped-recipe lookups and the
version report. The wheel is built from a copy of the sources: building in the shared tree leaves
a build/ whose stale modules would leak into the next wheel. ~10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from open_instruct.errors import ConfigError
from open_instruct.shipped import (
    find_recipe,
    list_recipes,
    recipe_description,
    resolve_data_path,
    shipped_root,
)
from open_instruct.versions import KEY_DEPENDENCIES, version_report

REPO = Path(__file__).resolve().parent.parent
# What a build reads: the packages, the top-level folders mapped into the package, the metadata.
SOURCE_DIRS = ("open_instruct", "reward_fns", "recipes", "data_mixes")
SOURCE_FILES = ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE")
SHIPPED = "open_instruct/_shipped"


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 180) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _files(root: Path) -> list[str]:
    """Files under root, relative, without bytecode."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("pkg") / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in SOURCE_DIRS:
        shutil.copytree(REPO / d, src / d, ignore=ignore)
    for f in SOURCE_FILES:
        if (REPO / f).exists():
            shutil.copy2(REPO / f, src / f)
    return src


@pytest.fixture(scope="module")
def wheel(source_copy) -> Path:
    out = source_copy.parent / "wheelhouse"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            ".",
        ],
        cwd=source_copy,
    )
    (whl,) = out.glob("open_instruct_toolkit-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel) -> Path:
    """The wheel installed into its own directory, as pip lays it out in site-packages."""
    target = wheel.parent.parent / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        cwd=wheel.parent,
    )
    return target


def test_wheel_carries_code_recipes_data_mixes_and_reward_data(wheel, source_copy):
    names = set(zipfile.ZipFile(wheel).namelist())
    src = source_copy
    recipes = _files(src / "recipes")
    mixes = _files(src / "data_mixes")
    assert "tiny.yaml" in recipes and any(m.startswith("samples/") and m.endswith(".jsonl") for m in mixes)
    expected = [f"{SHIPPED}/recipes/{f}" for f in recipes]
    expected += [f"{SHIPPED}/data_mixes/{f}" for f in mixes]  # samples/*.jsonl included
    expected += [f"reward_fns/cases/{p.name}" for p in (src / "reward_fns" / "cases").glob("*.jsonl")]
    expected += [
        f"open_instruct/train/ds_configs/{p.name}" for p in (src / "open_instruct/train/ds_configs").glob("*")
    ]
    # every module: an unlisted package (pyproject.toml lists them) would silently miss from the wheel
    expected += [
        f"{d}/{f}" for d in ("open_instruct", "reward_fns") for f in _files(src / d) if f.endswith(".py")
    ]
    missing = sorted(set(expected) - names)
    assert not missing, f"missing from the wheel: {missing[:20]}"
    # shipped data stays inside the package: nothing new at the top level of site-packages
    tops = {n.split("/", 1)[0] for n in names}
    assert tops <= {"open_instruct", "reward_fns"} | {n for n in tops if n.endswith(".dist-info")}, tops


def test_sdist_carries_the_shipped_files(source_copy):
    """`pip install` from an sdist builds the wheel from it: the top-level folders must be in it."""
    out = source_copy.parent / "sdist"
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    name = _run([sys.executable, "-c", code], cwd=source_copy).strip().splitlines()[-1]
    with tarfile.open(out / name) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    expected = {f"recipes/{f}" for f in _files(source_copy / "recipes")}
    expected |= {f"data_mixes/{f}" for f in _files(source_copy / "data_mixes")}
    assert not sorted(expected - members), sorted(expected - members)[:20]


def test_pyproject_lists_every_code_package():
    """pyproject.toml lists packages by hand (a find cannot map recipes/ into the package): a new
    package directory must be added there, or it is left out of every install."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("open_instruct", "reward_fns")
        for p in (REPO / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    unlisted = sorted(on_disk - listed)
    assert not unlisted, f"add {unlisted} to [tool.setuptools] packages in pyproject.toml"
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for pkg in listed:
        base = next(
            (k for k in sorted(package_dirs, key=len, reverse=True) if pkg == k or pkg.startswith(k + ".")),
            None,
        )
        path = (
            REPO / package_dirs[base] / Path(*pkg[len(base) :].split(".")[1:])
            if base
            else REPO / Path(*pkg.split("."))
        )
        assert path.is_dir(), f"pyproject.toml lists package {pkg}, but {path} is not a directory"


INSTALLED_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import yaml
    import open_instruct
    from open_instruct.shipped import find_recipe, list_recipes, resolve_data_path, shipped_root

    tiny = find_recipe("tiny")
    recipe = yaml.safe_load(tiny.read_text())

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    resolved = {}
    for value in strings(recipe):
        if value.startswith("data_mixes/"):
            mix = resolve_data_path(value, tiny.parent)
            resolved[value] = str(mix) if mix else None
            if mix and mix.suffix == ".yaml":  # a mix names its files relative to itself
                for src in yaml.safe_load(mix.read_text()).get("sources") or []:
                    if isinstance(src, dict) and src.get("path"):
                        f = mix.parent / src["path"]
                        resolved[f"{value}:{src['path']}"] = str(f) if f.is_file() else None
    print(json.dumps({
        "package": open_instruct.__file__,
        "root": str(shipped_root()),
        "tiny": str(tiny),
        "tiny_by_file_name": str(find_recipe("tiny.yaml")),
        "tiny_docs_form": str(find_recipe("recipes/tiny.yaml")),
        "recipes": [[n, str(p), d] for n, p, d in list_recipes()],
        "resolved": resolved,
    }))
    """
)


def test_installed_wheel_finds_its_recipes_and_data_from_any_directory(installed, tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    out = json.loads(
        _run([sys.executable, "-c", INSTALLED_PROBE], cwd=empty, env=env).strip().splitlines()[-1]
    )
    site = installed.resolve()

    def inside(p: str | None) -> bool:
        return p is not None and Path(p).resolve().is_relative_to(site) and Path(p).exists()

    # the installed copy was imported, not the repository (the editable install's finder comes last)
    assert inside(out["package"]), out["package"]
    assert Path(out["root"]).resolve() == site / "open_instruct" / "_shipped"
    assert out["tiny"] == out["tiny_by_file_name"] == out["tiny_docs_form"]
    assert inside(out["tiny"]) and out["tiny"].endswith("recipes/tiny.yaml")
    names = [n for n, _, _ in out["recipes"]]
    assert names == sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert all(inside(p) and d for _, p, d in out["recipes"])
    # every data path of the tiny recipe, and every file its mixes name, inside the installed copy
    resolved = out["resolved"]
    assert "data_mixes/tiny_sft.yaml" in resolved and any(":samples/" in k for k in resolved), resolved
    assert all(inside(p) for p in resolved.values()), resolved


# ----------------------------------------------------------------------------- find_recipe / list_recipes


def test_shipped_root_in_the_checkout_is_the_repository():
    # this test process imports the editable install / source tree
    assert shipped_root() == REPO
    assert (shipped_root() / "data_mixes" / "samples").is_dir()


def test_find_recipe_an_existing_path_wins(tmp_path, monkeypatch):
    own = tmp_path / "tiny.yaml"
    own.write_text("name: mine\n")
    monkeypatch.chdir(tmp_path)
    assert find_recipe("tiny.yaml") == Path("tiny.yaml")
    assert find_recipe(str(own)) == own
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "tiny.yaml").write_text("name: mine too\n")
    assert find_recipe("recipes/tiny.yaml") == Path("recipes/tiny.yaml")


def test_find_recipe_by_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing here: the shipped copy answers
    shipped = shipped_root() / "recipes" / "tiny.yaml"
    assert find_recipe("tiny") == shipped
    assert find_recipe("tiny.yaml") == shipped
    assert find_recipe("recipes/tiny.yaml") == shipped  # the form the docs use, from any directory
    assert find_recipe("tulu3_8b") == shipped_root() / "recipes" / "tulu3_8b.yaml"


def test_find_recipe_unknown_name_is_one_line_with_the_names_and_a_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        find_recipe("tny")
    msg = str(e.value)
    assert "\n" not in msg and "'tny'" in msg and "did you mean 'tiny'?" in msg
    for name, _, _ in list_recipes():
        assert name in msg
    with pytest.raises(ConfigError, match="did you mean 'tulu3_8b'"):
        find_recipe("tulu3-8b.yaml")
    with pytest.raises(ConfigError) as e:
        find_recipe("zzzzzzzz")
    assert "did you mean" not in str(e.value)  # nothing close: no guess


def test_find_recipe_missing_file_elsewhere_is_not_replaced_by_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        find_recipe("my_recipes/tiny.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        find_recipe(str(tmp_path / "tiny.yaml"))


def test_list_recipes_names_paths_and_one_line_descriptions():
    recipes = list_recipes()
    assert [n for n, _, _ in recipes] == sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    for name, path, desc in recipes:
        assert path == shipped_root() / "recipes" / f"{name}.yaml" and path.is_file()
        assert desc and "\n" not in desc and "  " not in desc, (name, desc)
    tiny = dict((n, d) for n, _, d in recipes)["tiny"]
    assert tiny.startswith("Tiny CPU demo")


def test_recipe_description_falls_back_to_the_first_comment(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("#\n# My recipe: SFT only.\n# more\nname: r\nstages: []\n")
    assert recipe_description(r) == "My recipe: SFT only."
    r.write_text("name: r\n")
    assert recipe_description(r) == ""
    r.write_text("# broken yaml below\nname: [\n")
    assert recipe_description(r) == "broken yaml below"


# ----------------------------------------------------------------------------- resolve_data_path


def test_resolve_data_path_order_cwd_recipe_dir_parent_shipped(tmp_path, monkeypatch):
    rel = "data_mixes/tiny_sft.yaml"
    proj = tmp_path / "proj"
    recipe_dir = proj / "recipes"
    recipe_dir.mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # nothing local: the shipped copy (a recipe copied out of the package still finds its data)
    assert resolve_data_path(rel, recipe_dir) == shipped_root() / rel
    for place in (proj, recipe_dir, cwd):  # each later one takes precedence over the earlier
        (place / "data_mixes").mkdir()
        (place / rel).write_text("kind: sft\n")
    assert resolve_data_path(rel, recipe_dir) == Path(rel)  # the current directory first
    (cwd / rel).unlink()
    assert resolve_data_path(rel, recipe_dir) == recipe_dir / rel
    (recipe_dir / rel).unlink()
    assert resolve_data_path(rel, recipe_dir) == proj / rel  # recipes/.. is the repository root
    assert resolve_data_path("data_mixes/nope.yaml", recipe_dir) is None
    assert resolve_data_path(str(proj / rel), cwd) == proj / rel
    assert resolve_data_path(str(proj / "nope.yaml"), cwd) is None


# ----------------------------------------------------------------------------- ground floor, versions


def test_shipped_and_versions_import_nothing_heavy():
    code = (
        "import sys; import open_instruct.shipped, open_instruct.versions as v; r = v.version_report(); "
        "print(sorted({'torch', 'yaml', 'transformers', 'vllm', 'ray', 'numpy'} & set(sys.modules)))"
    )
    assert _run([sys.executable, "-c", code], cwd=REPO).strip() == "[]"


def test_version_report_names_the_toolkit_python_and_key_dependencies():
    report = version_report()
    lines = report.splitlines()
    assert lines[0].split()[:2] == ["open-instruct-toolkit", "0.1.0"]
    firsts = [line.split()[0] for line in lines]
    assert firsts[1:] == ["python"] + [label for label, _ in KEY_DEPENDENCIES]
    assert "python" in firsts and sys.version.split()[0] in report
    torch_line = next(line for line in lines if line.startswith("torch "))
    import importlib.metadata as md

    assert md.version("torch") in torch_line and ("CPU only" in torch_line or "CUDA" in torch_line)
