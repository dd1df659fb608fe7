"""A census of bad inputs: each one through the real `open-instruct` CLI, in a subprocess started from an
empty temp directory outside the repository, classified by what the user sees.

    python scripts/bad_inputs.py                      # this checkout's CLI
    python scripts/bad_inputs.py --only sft           # the cases whose name contains "sft"
    python scripts/bad_inputs.py --pythonpath /tmp/old-worktree   # another commit's CLI (its own tree
                                                      # first on PYTHONPATH, run as python -m open_instruct.cli)

Outcomes:
  clear      exit 2 (or 130), the last non-empty stderr line starts with `error:` / `interrupted:`
             (argparse's `open-instruct sft: error: ...` counts too), no traceback
  traceback  a Python traceback on stderr
  silent     exit 0 although the input is bad (the run went on as if nothing were wrong)
  hang       still running after --timeout (a dead wait, or a run that went on with the bad input)
  unclear    any other failure (another exit code, a last line that is not the error)

The fixtures (a tiny model, small data files, stage configs, broken files) are built once in a temp dir;
cases that would train are bounded (max_train_steps 1) but every case here should fail before training.
Prints one row per case (case, outcome, exit code, seconds, the last stderr line) and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_mixes" / "samples"
CLEAR_LINE = re.compile(r"^((error|interrupted):|[\w.-]+( [\w.-]+)*: error: )")


@dataclass
class Case:
    name: str
    argv: list[str]  # after `open-instruct`; {F} = fixtures dir, {OUT} = a fresh path for this case
    env: dict[str, str | None] = field(default_factory=dict)  # None unsets a variable
    note: str = ""


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released): connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(name: str, n: int) -> list[str]:
    return (SAMPLES / name).read_text().splitlines()[:n]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def build_fixtures(f: Path) -> None:
    """Everything the cases point at, under `f`."""
    from open_instruct.model.tiny import build_tiny

    build_tiny(f / "model")
    shutil.copytree(f / "model", f / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(f / "model", f / "truncated")  # an interrupted copy: half of the weights file
    weights = f / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(f / "model", f / "bad_config")
    _write(f / "bad_config" / "config.json", '{"model_type": "llama", ')
    (f / "no_config").mkdir()
    _write(f / "no_config" / "README.md", "not a model\n")
    _write(f / "afile", "I am a file\n")
    (f / "tok_only").mkdir()
    _write(f / "notes" / "todo.txt", "a non-empty directory that is not a model\n")

    sft = _rows("sft_train.jsonl", 16)
    pref = _rows("preference_train.jsonl", 16)
    rlvr = _rows("rlvr_train.jsonl", 16)
    _write(f / "sft.jsonl", "\n".join(sft) + "\n")
    _write(f / "pref.jsonl", "\n".join(pref) + "\n")
    _write(f / "rlvr.jsonl", "\n".join(rlvr) + "\n")
    _write(f / "empty.jsonl", "")
    _write(f / "sft_badjson.jsonl", "\n".join(sft[:3] + ['{"messages": [ oops'] + sft[3:]) + "\n")
    bad_role = json.loads(sft[0])
    bad_role["messages"][0]["role"] = "bot"
    _write(f / "sft_badrole.jsonl", "\n".join([sft[1], json.dumps(bad_role)] + sft[2:]) + "\n")
    _write(f / "sft_nonutf8.jsonl", ("\n".join(sft[:2]) + "\n").encode() + b'{"messages": "\xff\xfe"}\n')
    _write(f / "sft_nomessages.jsonl", "\n".join(sft[:2] + ['{"text": "hello"}']) + "\n")
    no_rejected = json.loads(pref[0])
    del no_rejected["rejected"]
    _write(f / "pref_norejected.jsonl", "\n".join(pref[1:3] + [json.dumps(no_rejected)] + pref[3:]) + "\n")
    unknown_verifier = json.loads(rlvr[0])
    unknown_verifier["dataset"] = "no_such_verifier"
    _write(f / "rlvr_badverifier.jsonl", "\n".join(rlvr[1:4] + [json.dumps(unknown_verifier)]) + "\n")
    no_gt = json.loads(rlvr[0])
    no_gt["ground_truth"] = ""
    _write(f / "rlvr_badlabel.jsonl", "\n".join(rlvr[1:4] + [json.dumps(no_gt)]) + "\n")
    _write(
        f / "scores_badjson.jsonl",
        '{"completion": "The answer is 3", "ground_truth": "3", "dataset": "gsm8k"\n',
    )
    _write(f / "bad_reward.py", "def not_the_one(completion, ground_truth, **_):\n    return 1.0\n")
    _write(f / "broken.yaml", "model_name_or_path: [unclosed\n  key: : :\n")
    _write(f / "list.yaml", "- just\n- a list\n")
    _write(f / "badkind.yaml", "kind: images\nsources:\n  - path: sft.jsonl\n")

    common = {"dtype": "float32", "max_train_steps": 1, "logging_steps": 1, "seed": 0}
    _write(
        f / "sft.yaml",
        json.dumps(
            {
                "model_name_or_path": str(f / "model"),
                "dataset_mix": str(f / "sft.jsonl"),
                "output_dir": str(f / "out_sft"),
                "max_seq_length": 128,
                "per_device_train_batch_size": 4,
                **common,
            }
        ),
    )
    _write(
        f / "dpo.yaml",
        json.dumps(
            {
                "model_name_or_path": str(f / "model"),
                "dataset_mix": str(f / "pref.jsonl"),
                "output_dir": str(f / "out_dpo"),
                "max_seq_length": 128,
                "per_device_train_batch_size": 4,
                "total_batch_size": 4,
                **common,
            }
        ),
    )
    _write(
        f / "rlvr.yaml",
        json.dumps(
            {
                "model_name_or_path": str(f / "model"),
                "dataset_mix": str(f / "rlvr.jsonl"),
                "output_dir": str(f / "out_rlvr"),
                "algorithm": "grpo",
                "num_unique_prompts_rollout": 4,
                "num_samples_per_prompt_rollout": 2,
                "per_device_train_batch_size": 8,
                "total_episodes": 8,
                "max_prompt_length": 64,
                "response_length": 8,
                "dtype": "float32",
                "seed": 0,
            }
        ),
    )
    recipe = {
        "name": "census",
        "output_dir": str(f / "out_recipe"),
        "base_model": {
            "tiny": {"arch": "llama", "hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "ffn": 64}
        },
        "defaults": {"dtype": "float32", "max_seq_length": 128, "max_train_steps": 1},
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset_mix": str(f / "sft.jsonl"),
                "per_device_train_batch_size": 4,
            }
        ],
    }
    _write(f / "recipe.yaml", json.dumps(recipe))
    _write(
        f / "recipe_eval_too_long.yaml",
        json.dumps(
            {
                **recipe,
                "eval": {
                    "dataset_mix": str(f / "rlvr.jsonl"),
                    "max_tokens": 600,
                    "rollout": {"multiprocess_engine": False},
                },
            }
        ),
    )
    _write(f / "recipe_unknown_key.yaml", json.dumps({**recipe, "stagez": []}))
    _write(
        f / "recipe_bad_type.yaml", json.dumps({**recipe, "stages": [{**recipe["stages"][0], "type": "ppo"}]})
    )
    _write(
        f / "recipe_no_mix.yaml",
        json.dumps({**recipe, "stages": [{"name": "sft", "type": "sft", "per_device_train_batch_size": 4}]}),
    )
    _write(
        f / "recipe_missing_mix.yaml",
        json.dumps({**recipe, "stages": [{**recipe["stages"][0], "dataset_mix": str(f / "nope.jsonl")}]}),
    )
    _write(f / "recipe_base_noconfig.yaml", json.dumps({**recipe, "base_model": str(f / "no_config")}))
    _write(
        f / "recipe_base_nowhere.yaml", json.dumps({**recipe, "base_model": str(f / "nowhere" / "x" / "y")})
    )
    _write(f / "recipe_base_file.yaml", json.dumps({**recipe, "base_model": str(f / "afile")}))
    _write(f / "recipe_base_hub.yaml", json.dumps({**recipe, "base_model": "census-org/census-model"}))


def stage(cmd: str, *sets: str) -> list[str]:
    """A stage command on its fixture config, writing to this case's own output dir."""
    argv = [cmd, "--config", "{F}/" + cmd + ".yaml", "--set", "output_dir={OUT}"]
    for s in sets:
        argv += ["--set", s]
    return argv


def eval_args(*extra: str, model: str = "{F}/model", data: str = "{F}/rlvr.jsonl") -> list[str]:
    return ["eval", "--model", model, "--data", data, *extra]


def cases(hub_port: int) -> list[Case]:
    no_net = {
        "HF_HUB_OFFLINE": None,
        "TRANSFORMERS_OFFLINE": None,
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}",
    }
    return [
        # ---- run (recipes)
        Case("run: recipe file missing", ["run", "{F}/nope.yaml"]),
        Case("run: recipe is broken YAML", ["run", "{F}/broken.yaml"]),
        Case("run: recipe is a YAML list", ["run", "{F}/list.yaml"]),
        Case("run: unknown top-level key", ["run", "{F}/recipe_unknown_key.yaml"]),
        Case("run: unknown stage type", ["run", "{F}/recipe_bad_type.yaml"]),
        Case("run: stage without dataset_mix", ["run", "{F}/recipe_no_mix.yaml"]),
        Case("run: stage data file missing", ["run", "{F}/recipe_missing_mix.yaml"]),
        Case("run: --set without =", ["run", "{F}/recipe.yaml", "--set", "sft.learning_rate"]),
        Case("run: --set unknown stage", ["run", "{F}/recipe.yaml", "--set", "ppo.learning_rate=1e-5"]),
        Case("run: --set wrong type", ["run", "{F}/recipe.yaml", "--set", "sft.learning_rate=fast"]),
        Case("run: base_model dir without config.json", ["run", "{F}/recipe_base_noconfig.yaml"]),
        Case("run: base_model path that does not exist", ["run", "{F}/recipe_base_nowhere.yaml"]),
        Case("run: base_model is a file", ["run", "{F}/recipe_base_file.yaml"]),
        Case(
            "run: base_model hub id with no network",
            ["run", "{F}/recipe_base_hub.yaml", "--output", "{OUT}"],
            env=no_net,
        ),
        Case("run: --output is a file", ["run", "{F}/recipe.yaml", "--output", "{F}/afile"]),
        Case(
            "run: eval max_tokens past the model's context",
            ["run", "{F}/recipe_eval_too_long.yaml", "--output", "{OUT}"],
        ),
        # ---- sft
        Case("sft: no arguments", ["sft"]),
        Case("sft: --config file missing", ["sft", "--config", "{F}/nope.yaml"]),
        Case("sft: --config broken YAML", ["sft", "--config", "{F}/broken.yaml"]),
        Case("sft: --config is a YAML list", ["sft", "--config", "{F}/list.yaml"]),
        Case("sft: unknown key (typo)", stage("sft", "learning_rat=1e-5")),
        Case("sft: wrong type", stage("sft", "learning_rate=fast")),
        Case("sft: --set without =", ["sft", "--config", "{F}/sft.yaml", "--set", "learning_rate"]),
        Case("sft: model dir without config.json", stage("sft", "model_name_or_path={F}/no_config")),
        Case("sft: model path that does not exist", stage("sft", "model_name_or_path={F}/nowhere/x/y")),
        Case("sft: model path is a file", stage("sft", "model_name_or_path={F}/afile")),
        Case("sft: model dir without weights", stage("sft", "model_name_or_path={F}/no_weights")),
        Case("sft: truncated weights file", stage("sft", "model_name_or_path={F}/truncated")),
        Case("dpo: config.json is broken JSON", stage("dpo", "model_name_or_path={F}/bad_config")),
        Case("sft: QLoRA on a machine without CUDA", stage("sft", "use_lora=true", "load_in_4bit=true")),
        Case(
            "sft: hub id with no network",
            stage("sft", "model_name_or_path=census-org/census-model"),
            env=no_net,
        ),
        Case(
            "sft: hub id not in the offline cache", stage("sft", "model_name_or_path=census-org/census-model")
        ),
        Case("sft: output_dir is a file", stage("sft", "output_dir={F}/afile")),
        Case("sft: output_dir under a file", stage("sft", "output_dir={F}/afile/run")),
        Case("sft: data file missing", stage("sft", "dataset_mix={F}/nope.jsonl")),
        Case("sft: data file empty", stage("sft", "dataset_mix={F}/empty.jsonl")),
        Case("sft: malformed JSON row", stage("sft", "dataset_mix={F}/sft_badjson.jsonl")),
        Case("sft: role not user/assistant/system", stage("sft", "dataset_mix={F}/sft_badrole.jsonl")),
        Case("sft: non-UTF-8 bytes in data", stage("sft", "dataset_mix={F}/sft_nonutf8.jsonl")),
        Case("sft: row without messages", stage("sft", "dataset_mix={F}/sft_nomessages.jsonl")),
        Case("sft: data mix of unknown kind", stage("sft", "dataset_mix={F}/badkind.yaml")),
        Case("sft: max_train_steps 0", stage("sft", "max_train_steps=0")),
        Case("sft: num_train_epochs 0", stage("sft", "num_train_epochs=0", "max_train_steps=null")),
        Case("sft: total_batch_size not divisible", stage("sft", "total_batch_size=6")),
        Case("sft: fewer rows than one batch", stage("sft", "per_device_train_batch_size=64")),
        Case("sft: unknown chat_template", stage("sft", "chat_template=chatml")),
        # ---- dpo
        Case("dpo: pair without rejected", stage("dpo", "dataset_mix={F}/pref_norejected.jsonl")),
        Case("dpo: model dir without config.json", stage("dpo", "model_name_or_path={F}/no_config")),
        Case(
            "dpo: ref model path that does not exist", stage("dpo", "ref_model_name_or_path={F}/nowhere/ref")
        ),
        Case("dpo: beta 0", stage("dpo", "beta=0")),
        Case("dpo: unknown loss_type", stage("dpo", "loss_type=kto")),
        Case("dpo: output_dir is a file", stage("dpo", "output_dir={F}/afile")),
        Case(
            "dpo: hub id with no network",
            stage("dpo", "model_name_or_path=census-org/census-model"),
            env=no_net,
        ),
        # ---- rlvr
        Case(
            "rlvr: unknown verifier in dataset column",
            stage("rlvr", "dataset_mix={F}/rlvr_badverifier.jsonl"),
        ),
        Case("rlvr: empty ground_truth label", stage("rlvr", "dataset_mix={F}/rlvr_badlabel.jsonl")),
        Case("rlvr: model path that does not exist", stage("rlvr", "model_name_or_path={F}/nowhere/x/y")),
        Case("rlvr: model path is a file", stage("rlvr", "model_name_or_path={F}/afile")),
        Case("rlvr: output_dir is a file", stage("rlvr", "output_dir={F}/afile")),
        Case("rlvr: more prompts per step than rows", stage("rlvr", "num_unique_prompts_rollout=64")),
        Case("rlvr: unknown algorithm", stage("rlvr", "algorithm=dpo")),
        Case("rlvr: reward module file missing", stage("rlvr", "reward_modules=[{F}/nope.py:fn]")),
        Case("rlvr: prompt + response past the model's context", stage("rlvr", "max_prompt_length=1024")),
        # ---- eval
        Case("eval: --limit -1", eval_args("--limit", "-1")),
        Case("eval: --limit 0", eval_args("--limit", "0")),
        Case("eval: --samples 0", eval_args("--samples", "0")),
        Case("eval: --max-tokens 0", eval_args("--max-tokens", "0")),
        Case("eval: --temperature -1", eval_args("--temperature", "-1")),
        Case("eval: --samples 4 --temperature 0", eval_args("--samples", "4", "--temperature", "0")),
        Case("eval: --max-tokens past the context", eval_args("--max-tokens", "600")),
        Case("eval: --model does not exist", eval_args(model="{F}/nowhere/x/y")),
        Case("eval: --model dir without config.json", eval_args(model="{F}/no_config")),
        Case("eval: --model is a file", eval_args(model="{F}/afile")),
        Case("eval: --model hub id with no network", eval_args(model="census-org/census-model"), env=no_net),
        Case("eval: --data missing", eval_args(data="{F}/nope.jsonl")),
        Case("eval: --data with an unknown verifier", eval_args(data="{F}/rlvr_badverifier.jsonl")),
        Case("eval: --output is a directory", eval_args("--output", "{F}/notes")),
        Case(
            "eval: --reward-module without the function", eval_args("--reward-module", "{F}/bad_reward.py:fn")
        ),
        Case("eval: --samples not a number", eval_args("--samples", "many")),
        # ---- rewards
        Case("rewards: check an unknown reward", ["rewards", "check", "no_such_reward"]),
        Case("rewards: score --input missing", ["rewards", "score", "--input", "{F}/nope.jsonl"]),
        Case(
            "rewards: score a malformed JSON line",
            ["rewards", "score", "--input", "{F}/scores_badjson.jsonl"],
        ),
        Case(
            "rewards: --reward-module file missing", ["rewards", "list", "--reward-module", "{F}/nope.py:fn"]
        ),
        # ---- data inspect
        Case(
            "data inspect: mix file missing", ["data", "inspect", "{F}/nope.yaml", "--tokenizer", "{F}/model"]
        ),
        Case(
            "data inspect: --tokenizer does not exist",
            ["data", "inspect", "{F}/sft.jsonl", "--tokenizer", "{F}/nowhere/x/y"],
        ),
        Case(
            "data inspect: --tokenizer dir without tokenizer files",
            ["data", "inspect", "{F}/sft.jsonl", "--tokenizer", "{F}/tok_only"],
        ),
        Case(
            "data inspect: --tokenizer hub id with no network",
            ["data", "inspect", "{F}/sft.jsonl", "--tokenizer", "census-org/census-model"],
            env=no_net,
        ),
        Case(
            "data inspect: malformed JSON row",
            ["data", "inspect", "{F}/sft_badjson.jsonl", "--tokenizer", "{F}/model"],
        ),
        # ---- tiny
        Case("tiny: --out is a file", ["tiny", "--out", "{F}/afile"]),
        Case("tiny: --out is a non-empty dir that is not a model", ["tiny", "--out", "{F}/notes"]),
        Case(
            "tiny: hidden not divisible by heads",
            ["tiny", "--out", "{OUT}", "--hidden", "30", "--heads", "4"],
        ),
    ]


def classify(rc: int | None, stderr: str) -> tuple[str, str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    if rc is None:
        return "hang", f"(no exit after the time limit) {last}"
    if "Traceback (most recent call last)" in stderr:
        return "traceback", last
    if rc == 0:
        return "silent", last or "(exit 0, nothing on stderr)"
    if rc in (2, 130) and CLEAR_LINE.match(last):
        return "clear", last
    return "unclear", last


def run_case(case: Case, fixtures: Path, work: Path, python: str, pythonpath: str | None, timeout: float):
    out = work / "outputs" / re.sub(r"\W+", "_", case.name)
    argv = [a.replace("{F}", str(fixtures)).replace("{OUT}", str(out)) for a in case.argv]
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPEN_INSTRUCT_NO_PROGRESS": "1"})
    env["OPEN_INSTRUCT_CACHE"] = str(work / "cache")
    env["HF_HOME"] = str(work / "hf_home")  # an empty hub cache: hub ids are not there
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    for k, v in case.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    cwd = work / "cwd"  # empty, outside the repository: nothing resolves against the checkout
    cwd.mkdir(exist_ok=True)
    t0 = time.time()
    try:
        res = subprocess.run(
            [python, "-m", "open_instruct.cli", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, stderr = res.returncode, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, stderr = (
            None,
            (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""),
        )
    outcome, line = classify(rc, stderr)
    return outcome, rc, time.time() - t0, line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the CLI")
    ap.add_argument("--pythonpath", help="put this tree first on PYTHONPATH (another commit's worktree)")
    ap.add_argument(
        "--only", action="append", default=[], help="only the cases whose name contains this (repeatable)"
    )
    ap.add_argument(
        "--timeout", type=float, default=240.0, help="seconds per case before it counts as a hang"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (fixtures, outputs)")
    ap.add_argument("--json", help="also write the results here as JSON")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="oi-bad-inputs-"))
    try:
        fixtures = work / "fixtures"
        build_fixtures(fixtures)
        todo = [c for c in cases(_closed_port()) if not args.only or any(o in c.name for o in args.only)]
        width = max(len(c.name) for c in todo)
        print(f"{len(todo)} cases, CLI: {args.pythonpath or 'this checkout'}\n", flush=True)
        print(f"{'case':<{width}}  {'outcome':<9}  {'exit':>4}  {'s':>5}  last stderr line", flush=True)
        results = []
        for c in todo:
            outcome, rc, secs, line = run_case(c, fixtures, work, args.python, args.pythonpath, args.timeout)
            shown = line if len(line) <= 160 else line[:157] + "..."
            print(
                f"{c.name:<{width}}  {outcome:<9}  {rc if rc is not None else '-':>4}  {secs:5.1f}  {shown}",
                flush=True,
            )
            results.append(
                {"case": c.name, "outcome": outcome, "exit": rc, "seconds": round(secs, 1), "line": line}
            )
        counts = {
            k: sum(r["outcome"] == k for r in results)
            for k in ("clear", "traceback", "silent", "hang", "unclear")
        }
        print("\n" + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"  (of {len(results)})")
        if args.json:
            Path(args.json).write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
