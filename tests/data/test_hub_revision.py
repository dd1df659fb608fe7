"""Hub sources at a revision: what reaches `datasets.load_dataset` (a recorded call: no network here),
the fingerprint and lineage record of two revisions on real files, and -- through a real datasets
cache built on disk -- the offline trap of datasets serving the newest cached copy whatever revision
was asked, which load_mix refuses."""

import json
import os
import shutil
from pathlib import Path

import pytest

import open_instruct.data.hub as hub
from open_instruct.data.mixes import load_mix
from open_instruct.errors import ConfigError, DataError
from open_instruct.recipe import lineage as lin

A, B = "a" * 40, "b" * 40
PC = [{"prompt": "What is 1 + 2?", "completion": "3"}, {"prompt": "And 2 + 2?", "completion": "4"}]


def _mix(path: Path, source: dict, kind="sft") -> Path:
    path.write_text(json.dumps({"kind": kind, "sources": [source]}))  # JSON is YAML
    return path


@pytest.fixture
def recorded(monkeypatch):
    """datasets.load_dataset replaced by a recorder that hands back real rows (the network is what
    cannot run here); online, so the load itself stands for the revision."""
    import datasets

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(PC)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "offline", lambda: False)
    return calls


def test_revision_subset_and_split_reach_load_dataset(tmp_path, recorded):
    mix = _mix(tmp_path / "m.yaml", {"hf": "org/set", "subset": "s1", "split": "test", "revision": "v1.2"})
    loaded = load_mix(mix)
    assert recorded == [(("org/set", "s1"), {"split": "test", "revision": "v1.2"})]
    src = loaded.sources[0]
    assert (src.name, src.revision, src.rows) == ("org/set:s1@v1.2", "v1.2", 2)
    # hub rows in TRL's prompt-completion form go through the same checks and canonical columns
    assert loaded.kind == "sft"
    assert loaded.dataset[0] == {
        "messages": [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "3"}],
        "prompt_turns": 1,
    }
    load_mix(_mix(tmp_path / "n.yaml", {"hf": "org/set"}))
    assert recorded[-1] == (("org/set", None), {"split": "train", "revision": None})


def test_revision_is_for_hub_sources_only(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(PC[0]) + "\n")
    with pytest.raises(
        DataError, match=r"m\.yaml sources\[0\]\.revision: 'v1': only hub sources \(hf\) take one"
    ):
        load_mix(_mix(tmp_path / "m.yaml", {"path": "d.jsonl", "revision": "v1"}))
    with pytest.raises(DataError, match=r"m\.yaml sources\[0\]\.revision: ' ': must be non-empty"):
        load_mix(_mix(tmp_path / "m.yaml", {"hf": "org/set", "revision": " "}))


def test_two_revisions_are_two_fingerprints(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(PC[0]) + "\n")
    local = {"path": "d.jsonl", "amount": 2}

    def fingerprint(name, **hf):
        path = tmp_path / name
        path.write_text(json.dumps({"kind": "sft", "seed": 3, "sources": [{"hf": "org/set", **hf}, local]}))
        return lin.mix_fingerprint(str(path))["fingerprint"]

    v1 = fingerprint("v1.yaml", revision="v1")
    assert fingerprint("v1_again.yaml", revision="v1") == v1
    assert fingerprint("v2.yaml", revision="v2") != v1
    assert fingerprint("sha.yaml", revision=A) != v1
    # a mix that names no revision keeps the fingerprint it had before `revision` existed, so finished
    # runs are still reused (value computed with the code of the commit before this feature)
    (tmp_path / "d.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    (tmp_path / "old.yaml").write_text(
        "kind: sft\nseed: 3\nsources:\n- hf: org/set\n  subset: s1\n  amount: 0.5\n- path: d.jsonl\n  amount: 2\n"
    )
    old = lin.mix_fingerprint(str(tmp_path / "old.yaml"))["fingerprint"]
    assert old == "65ce0f66edb06907684786855473e3913399312a6de4373c015cfabc5a9bb224"


# ----------------------------------------------------------------------------- a real offline cache


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """HF_DATASETS_CACHE holding `testorg/toy` prepared at commit A (older) and B (newer), as
    load_dataset leaves it, and a hub cache whose refs say v1 -> A and main -> B."""
    import datasets
    from huggingface_hub import constants

    ds_cache, hub_cache = tmp_path / "datasets", tmp_path / "hub"
    for sha, answer, mtime in ((A, "old", 1_000_000), (B, "new", 2_000_000)):
        rows = tmp_path / f"{sha[0]}.jsonl"
        rows.write_text(json.dumps({"prompt": "q", "completion": answer}) + "\n")
        built = datasets.load_dataset(
            "json", data_files=str(rows), split="train", cache_dir=str(tmp_path / "b")
        )
        src = Path(built.cache_files[0]["filename"]).parent
        dest = ds_cache / "testorg___toy" / "default" / "0.0.0" / sha
        dest.mkdir(parents=True)
        shutil.copy(src / "json-train.arrow", dest / "toy-train.arrow")
        info = json.loads((src / "dataset_info.json").read_text())
        info["dataset_name"] = info["splits"]["train"]["dataset_name"] = "toy"
        (dest / "dataset_info.json").write_text(json.dumps(info))
        os.utime(dest, (mtime, mtime))
    refs = hub_cache / "datasets--testorg--toy" / "refs"
    refs.mkdir(parents=True)
    (refs / "v1").write_text(A)
    (refs / "main").write_text(B)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", ds_cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    assert hub.offline()  # tests/conftest.py: HF_HUB_OFFLINE=1
    return tmp_path


def _answer(loaded) -> str:
    return loaded.dataset[0]["messages"][-1]["content"]


def test_offline_a_cached_revision_loads_and_its_commit_is_recorded(offline_cache):
    mix = _mix(offline_cache / "main.yaml", {"hf": "testorg/toy", "revision": "main"})
    loaded = load_mix(mix)
    assert (_answer(loaded), loaded.sources[0].commit) == ("new", B)
    rec = lin.mix_record(str(mix), "sft")
    assert rec["sources"][0] | {"name": None} == {
        "name": None,
        "rows": 1,
        "dropped": 0,
        "selected": 1,
        "revision": "main",
        "commit": B,
    }
    # no revision: main, recorded with the commit that was loaded
    plain = lin.mix_record(str(_mix(offline_cache / "plain.yaml", {"hf": "testorg/toy"})), "sft")
    assert (plain["sources"][0]["revision"], plain["sources"][0]["commit"]) == ("main", B)


def test_offline_another_revision_than_the_cached_copy_is_refused(offline_cache):
    # datasets alone would serve commit B (the newest copy) for v1, which is commit A
    with pytest.raises(DataError) as err:
        load_mix(_mix(offline_cache / "v1.yaml", {"hf": "testorg/toy", "revision": "v1"}))
    assert str(err.value) == (
        f"{offline_cache / 'v1.yaml'} sources[0].revision: 'v1' is commit aaaaaaaaaaaa but the datasets "
        "cache served bbbbbbbbbbbb (offline, datasets reads the newest cached copy); load "
        "'testorg/toy@v1' at this revision once with network access"
    )
    with pytest.raises(DataError, match=r"sources\[0\]\.revision: 'v1' is commit aaaaaaaaaaaa"):
        load_mix(_mix(offline_cache / "sha.yaml", {"hf": "testorg/toy", "revision": "v1"}))
    with pytest.raises(DataError, match=rf"sources\[0\]\.revision: '{A}' is commit aaaaaaaaaaaa but"):
        load_mix(_mix(offline_cache / "sha.yaml", {"hf": "testorg/toy", "revision": A}))
    assert _answer(load_mix(_mix(offline_cache / "b.yaml", {"hf": "testorg/toy", "revision": B}))) == "new"
    # a revision the caches know nothing of cannot be confirmed offline
    with pytest.raises(
        DataError, match=r"revision: offline, cannot tell which commit 'v9' of 'testorg/toy' is"
    ):
        load_mix(_mix(offline_cache / "v9.yaml", {"hf": "testorg/toy", "revision": "v9"}))


def test_offline_a_source_missing_from_the_cache_is_one_line(offline_cache):
    with pytest.raises(DataError) as err:
        load_mix(_mix(offline_cache / "m.yaml", {"hf": "testorg/absent", "revision": "v1"}))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"{offline_cache / 'm.yaml'} sources[0].hf: 'testorg/absent@v1' is not in the local datasets cache "
        "and offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); load it once with network access first"
    ), msg


def test_a_finished_stage_is_not_reused_for_another_revision(tmp_path, tiny_model_dir, monkeypatch):
    """The recipe skip check (recipe/state.py) compares mix fingerprints: a finished SFT stage whose mix
    now asks another revision of its hub source is a conflict, not silently reused."""
    from open_instruct.recipe.load import load_plan
    from open_instruct.recipe.state import assess_stages
    from open_instruct.train.checkpoint import model_digest, publish_model

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    stage = {"name": "sft", "type": "sft", "dataset_mix": "mix.yaml"}
    recipe.write_text(json.dumps({"name": "t", "base_model": str(tiny_model_dir), "stages": [stage]}))

    def plan(revision):
        _mix(tmp_path / "mix.yaml", {"hf": "org/set", "revision": revision, "num_rows": 100})
        return load_plan(recipe, [], str(tmp_path / "out"))

    first = plan("v1")
    sp = first.stages[0]
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    base = model_digest(str(tiny_model_dir))
    record = lin.stage_record(first, sp, base, "finished", lin.now())
    record["model"] = {"digest": publish_model(tmp_path / "model", sp.out)}
    lin.write(sp.out, record)
    assess_stages(first, base)
    assert sp.status == "done"
    again = plan("v1")
    assess_stages(again, base)
    assert again.stages[0].status == "done"
    with pytest.raises(
        ConfigError, match=r"stage sft: .* holds a run with a different data \(mix\.yaml changed\)"
    ):
        assess_stages(plan("v2"), base)
