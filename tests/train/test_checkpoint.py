"""Checkpoint integrity: sealed with a manifest, verified on load, a damaged one skipped."""

import json
import logging

from open_instruct.train import checkpoint as ckpt


def _make(root, step, payload=b"weights" * 100):
    tmp = ckpt.tmp_dir_for(root, f"step_{step}")
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(payload + bytes([step]))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    ckpt.commit(tmp, root / f"step_{step}")
    return root / f"step_{step}"


def test_commit_is_sealed_and_verifies(tmp_path):
    path = _make(tmp_path, 3)
    assert ckpt.verify(path) is None
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "trainer_state.json"}
    assert not list(tmp_path.glob(".tmp-*"))


def test_truncated_or_corrupted_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    _make(tmp_path, 2)
    newest = _make(tmp_path, 4)
    blob = newest / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:50])  # truncated by a full disk
    with caplog.at_level(logging.WARNING):
        step, path = ckpt.latest_valid(tmp_path)
    assert step == 2
    assert "step_4" in caplog.text and "unusable" in caplog.text

    _make(tmp_path, 6)
    data = bytearray((tmp_path / "step_6" / "model.safetensors").read_bytes())
    data[10] ^= 0xFF  # same size, flipped bits
    (tmp_path / "step_6" / "model.safetensors").write_bytes(bytes(data))
    assert ckpt.latest_valid(tmp_path)[0] == 2


def test_unsealed_temp_dir_is_never_a_checkpoint(tmp_path):
    _make(tmp_path, 1)
    partial = tmp_path / ".tmp-step_2"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_valid(tmp_path)[0] == 1
    ckpt.prune(tmp_path, keep_last=5)
    assert not partial.exists()


def test_prune_keeps_the_last_k(tmp_path):
    for s in (1, 2, 3, 4):
        _make(tmp_path, s)
    ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_steps(tmp_path)] == [3, 4]


def test_kill_mid_prune_leaves_no_broken_sealed_checkpoint(tmp_path, monkeypatch):
    """A process killed while deleting an old checkpoint (here: the delete stops after one file)
    must not leave a half-deleted directory under a sealed `step_N` name."""
    import shutil

    for s in (1, 2, 3):
        _make(tmp_path, s)
    real_rmtree = shutil.rmtree

    def dies_after_one_file(path, ignore_errors=False):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        if files:
            files[0].unlink()
            raise KeyboardInterrupt("killed mid-delete")

    monkeypatch.setattr(shutil, "rmtree", dies_after_one_file)
    try:
        ckpt.prune(tmp_path, keep_last=1)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    for _step, path in ckpt.list_steps(tmp_path):
        assert ckpt.verify(path) is None, path
    ckpt.prune(tmp_path, keep_last=1)  # the next prune finishes the job
    assert [s for s, _ in ckpt.list_steps(tmp_path)] == [3]
    assert not list(tmp_path.glob(".old-*"))


def test_published_model_digest_detects_tampering(tmp_path):
    tmp = tmp_path / ".tmp-model"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"abc" * 1000)
    (tmp / "config.json").write_text("{}")
    out = tmp_path / "run"
    digest = ckpt.publish_model(tmp, out)
    assert ckpt.verify_model(out) == digest == ckpt.model_digest(str(out))
    (out / "model.safetensors").write_bytes(b"abd" * 1000)
    assert ckpt.verify_model(out) is None
