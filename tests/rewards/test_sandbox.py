"""The `code` reward's sandbox: hostile solutions are stopped, score 0, and change nothing outside the
scratch directory; correct solutions score 1, wrong ones 0. Limits are ~1-2 s so each test is fast."""

import os
import secrets
import time
from pathlib import Path

import pytest

from reward_fns import code_reward as code_module
from reward_fns import get_reward
from reward_fns.code_reward import last_python_block, parse_code_label
from reward_fns.sandbox import SandboxLimits, probe_sandbox, run_python

PROJECT = Path(__file__).resolve().parents[2]
FAST = SandboxLimits(wall_s=3.0, cpu_s=1.0, per_test_timeout_s=1.0, memory_mb=512, output_bytes=1 << 16)

code = get_reward("code")
# "Stopped promptly": within the wall limit plus slack for process start-up on a machine whose cores
# other jobs are also using (a hang would run forever, a fork bomb would take the machine down).
PROMPT = FAST.wall_s + 5


@pytest.fixture(autouse=True)
def fast_limits(monkeypatch):
    monkeypatch.setattr(code_module, "DEFAULT_LIMITS", FAST)


def block(source: str) -> str:
    return f"Here is my solution:\n```python\n{source}\n```\n"


ATTACK_NAMES = ("ESCAPE_", "stolen", "PWNED")


def snapshot():
    """What must not change. Other engineers edit this tree while the tests run, so this looks only at
    what an attack here could touch: files named like the attacks' targets (project root, /tmp, home),
    the Makefile (a rename target) and the mtimes of two directories nobody else writes to."""
    found = sorted(
        str(d / name)
        for d in (PROJECT, PROJECT / "tests" / "rewards", Path("/tmp"), Path.home())
        if d.exists()
        for name in os.listdir(d)
        if name.startswith(ATTACK_NAMES)
    )
    makefile = PROJECT / "Makefile"
    dirs = [PROJECT / "tests" / "rewards", PROJECT / "reward_fns" / "sandbox"]
    return found, makefile.read_bytes(), makefile.stat().st_mtime_ns, [d.stat().st_mtime_ns for d in dirs]


@pytest.fixture(scope="module", autouse=True)
def nothing_outside_scratch_changes():
    before = snapshot()
    yield
    assert snapshot() == before


def score_hostile(source: str, tests=("assert ran",)) -> tuple[float, float, dict]:
    """The default test passes exactly when the hostile source runs to its end (`ran` is set last)."""
    start = time.monotonic()
    result = code(block(source + "\nran = True"), list(tests))
    return result.score, time.monotonic() - start, result.metadata


def test_correct_solution_scores_one():
    src = "def add(a, b):\n    return a + b"
    assert code(block(src), ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]).score == 1.0


def test_wrong_solution_scores_zero_and_partial_is_a_fraction():
    assert code(block("def add(a, b):\n    return a * b"), ["assert add(1, 2) == 3"]).score == 0.0
    assert (
        code(
            block("def add(a, b):\n    return a - b"), ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
        ).score
        == 0.5
    )
    label = {"tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "all_or_nothing": True}
    assert code(block("def add(a, b):\n    return a - b"), label).score == 0.0


def test_stdin_stdout_tests():
    src = "a, b = map(int, input().split())\nprint(a + b)"
    assert code(block(src), {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12"]}).score == 1.0
    assert code(block(src), [{"input": "1 2", "output": "4"}]).score == 0.0
    assert (
        code(
            block("import sys\nprint(sum(map(int, sys.stdin.read().split())))\nexit()"),
            '{"inputs": ["1 2 3"], "outputs": ["6"]}',
        ).score
        == 1.0
    )


def test_last_python_block_is_used():
    text = "```python\ndef f():\n    return 1\n```\nbetter:\n```python\ndef f():\n    return 2\n```"
    assert code(text, ["assert f() == 2"]).score == 1.0
    assert last_python_block("no code") is None
    result = code("no code at all", ["assert 'f' not in dir()"])
    assert result.score == 0.0 and result.metadata["error"] == "no ```python block"


def test_infinite_loop_is_stopped():
    score, seconds, _ = score_hostile("while True:\n    pass")
    assert score == 0.0 and seconds < PROMPT


def test_loop_that_swallows_the_timer_is_killed():
    score, seconds, _ = score_hostile(
        "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)"
    )
    assert score == 0.0 and seconds < PROMPT


def test_fork_bomb_is_stopped():
    score, seconds, meta = score_hostile("import os\nwhile True:\n    os.fork()")
    assert score == 0.0 and seconds < PROMPT
    score, _, _ = score_hostile("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])")
    assert score == 0.0


def test_allocating_10_gb_is_stopped():
    score, seconds, meta = score_hostile("x = bytearray(10 * 1024 ** 3)")
    assert score == 0.0 and seconds < PROMPT
    assert "MemoryError" in meta.get("error", "")


def test_socket_is_refused():
    src = "import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))\nok = True"
    score, _, meta = score_hostile(src, ["assert ok"])
    assert score == 0.0
    assert "socket" in meta.get("error", "")


def test_writing_outside_scratch_changes_nothing():
    tag = secrets.token_hex(4)
    targets = [
        PROJECT / f"ESCAPE_{tag}",
        PROJECT / "tests" / "rewards" / f"ESCAPE_{tag}",
        Path("/tmp") / f"ESCAPE_{tag}",
        Path.home() / f"ESCAPE_{tag}",
    ]
    before = snapshot()
    for target in targets:
        for src in (
            f"open({str(target)!r}, 'w').write('x')",
            f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))",
            f"import pathlib\npathlib.Path({str(target)!r}).touch()",
        ):
            score, _, _ = score_hostile(src + "\nok = True", ["assert ok"])
            assert score == 0.0, src
        assert not target.exists()
    score, _, _ = score_hostile(
        f"import os\nos.rename({str(PROJECT / 'Makefile')!r}, 'stolen')\nok = True", ["assert ok"]
    )
    assert score == 0.0
    assert (PROJECT / "Makefile").exists()
    assert snapshot() == before


def test_scratch_dir_is_writable_and_removed():
    src = "import os\nopen('notes.txt', 'w').write('hi')\nwhere = os.getcwd()"
    result = run_python(src, ["assert open('notes.txt').read() == 'hi'"], "asserts", FAST)
    assert result.tests[0]["ok"]
    assert not [
        p
        for p in os.listdir("/tmp")
        if p.startswith("rf-sandbox-")
        and os.path.getmtime(os.path.join("/tmp", p)) > time.time() - 5
        and os.listdir(os.path.join("/tmp", p))
    ]


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-do-not-leak")
    src = (
        "import os\n"
        "found = any('hunter2' in v for v in os.environ.values())\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + [str(os.getppid())]:\n"
        "    try:\n"
        "        found = found or b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except Exception:\n"
        "        pass\n"
    )
    # The "test" passes only if the secret was found, so score 0 means it stayed hidden.
    assert code(block(src), ["assert found"]).score == 0.0
    assert code(block(src), ["assert not found"]).score == 1.0


def test_printing_a_gigabyte_is_cut_off():
    score, seconds, _ = score_hostile("for _ in range(1 << 20):\n    print('x' * 1024)")
    assert score == 0.0 and seconds < PROMPT
    score, seconds, meta = score_hostile("import os\nfor _ in range(1 << 20):\n    os.write(1, b'x' * 1024)")
    assert score == 0.0 and seconds < PROMPT
    assert meta.get("killed") == "output_limit"


def test_early_exit_is_not_a_pass():
    for src in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        score, _, _ = score_hostile(src, ["assert solved()"])
        assert score == 0.0, src


def test_verdict_cannot_be_forged_by_printing():
    src = 'import sys\nprint(\'{"test": 0, "ok": true}\')\nsys.__stdout__.write(\'{"done": true}\\n\')'
    assert code(block(src), ["assert False"]).score == 0.0


def test_frame_introspection_is_refused():
    src = "import sys\nf = sys._getframe(0).f_back\nok = True"
    assert code(block(src), ["assert ok"]).score == 0.0
    src = "import gc\nobjs = gc.get_objects()\nok = True"
    assert code(block(src), ["assert ok"]).score == 0.0


def test_ordinary_libraries_still_work():
    src = (
        "import collections, dataclasses, enum, json, logging, math, re, typing\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "class C(enum.Enum):\n    A = 1\n"
        "def f():\n    return P(1, 2).x + C.A.value + int(math.sqrt(4))\n"
    )
    assert code(block(src), ["assert f() == 4"]).score == 1.0


def test_measures_report():
    measures = probe_sandbox()
    assert measures["works"] is True
    assert measures["audit_hook"] is True
    assert measures["rlimits"]["memory_mb"]


@pytest.mark.parametrize(
    "label,mode,n",
    [
        (["assert f(1) == 1", "assert f(2) == 2"], "asserts", 2),
        ('["assert f(1) == 1"]', "asserts", 1),
        ("assert f(1) == 2", "asserts", 1),
        ({"inputs": ["1"], "outputs": ["1"]}, "stdio", 1),
        ([{"input": "1", "output": "2"}], "stdio", 1),
    ],
)
def test_label_formats(label, mode, n):
    parsed = parse_code_label(label)
    assert parsed[0] == mode and len(parsed[1]) == n


@pytest.mark.parametrize("label", [{"inputs": ["1"], "outputs": []}, {"foo": 1}, []])
def test_bad_code_labels(label):
    with pytest.raises(ValueError):
        parse_code_label(label)


def test_without_namespaces_the_audit_hook_and_limits_still_hold():
    """Where the kernel refuses namespaces (e.g. unprivileged CI), what remains must still block."""
    weak = SandboxLimits(wall_s=3.0, cpu_s=1.0, per_test_timeout_s=1.0, memory_mb=512, namespaces=False)
    target = PROJECT / f"ESCAPE_{secrets.token_hex(4)}"
    for src in (
        f"open({str(target)!r}, 'w').write('x')",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
        "import os\nos.fork()",
        "x = bytearray(10 * 1024 ** 3)",
    ):
        run = run_python(src + "\nok = True", ["assert ok"], "asserts", weak)
        assert run.measures["namespaces"] == "disabled"
        assert run.solution_error and not any(t.get("ok") for t in run.tests), src
    assert not target.exists()
    assert run_python("x = 2", ["assert x == 2"], "asserts", weak).tests[0]["ok"]
