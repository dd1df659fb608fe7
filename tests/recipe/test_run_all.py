"""benchmarks/run_all.py: each benchmark in its own subprocess; one failing does not stop the others."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_all_collects_rows_and_survives_failures(tmp_path, monkeypatch):
    run_all = _load_run_all()
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "a_good.py").write_text(
        "def run():\n"
        "    return [{'stage': 'sft', 'metric': 'tokens/s', 'value': 1234.5, 'unit': 'tokens/s',\n"
        "             'baseline': 617.25, 'ratio': 2.0, 'target': '>= 1.5x TRL'},\n"
        "            {'stage': 'rewards', 'metric': 'gsm8k completions/s', 'value': 5e4, 'unit': 'completions/s',\n"
        "             'target': '> 10,000', 'ok': True}]\n"
    )
    (bench / "b_broken.py").write_text("def run():\n    raise RuntimeError('benchmark exploded')\n")
    (bench / "c_helper.py").write_text("X = 1  # no run(): not a benchmark\n")
    (bench / "d_after.py").write_text(
        "def run():\n    return [{'stage': 'dpo', 'metric': 'pairs/s', 'value': 3.0, 'unit': 'pairs/s',"
        " 'baseline': None, 'ratio': None, 'target': None}]\n"
    )
    (bench / "_private.py").write_text("def run():\n    raise SystemExit('must not run')\n")
    monkeypatch.setattr(run_all, "HERE", bench)
    out = tmp_path / "RESULTS.md"
    code = run_all.main(["--output", str(out), "--timeout", "300"])
    assert code == 1  # a benchmark failed
    text = out.read_text()
    assert "| sft | tokens/s | 1,234.5 tokens/s | 617.2 tokens/s | 2.00x | >= 1.5x TRL | - |" in text
    assert "| rewards | gsm8k completions/s | 50,000.0 completions/s | - | - | > 10,000 | yes |" in text
    assert "| dpo | pairs/s | 3 pairs/s | - | - | - | - |" in text  # ran after the failure
    assert "| benchmarks/b_broken.py | failed |" in text and "benchmark exploded" in text
    assert "| benchmarks/c_helper.py | no run() |" in text
    assert "_private" not in text
    for key in ("CPU:", "cores", "RAM", "versions: torch", "## Results"):
        assert key in text
