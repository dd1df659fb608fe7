"""`open-instruct`: one entry point for every stage and tool.

    open-instruct run RECIPE.yaml [--set stage.key=value ...] [--dry-run]
    open-instruct sft  --config FILE.yaml [--set key=value ...]
    open-instruct dpo  --config FILE.yaml | --model M --data prefs.jsonl --output DIR  [--set ...]
    open-instruct rlvr --config FILE.yaml [--set ...]
    open-instruct eval --model DIR --data MIX.yaml [--samples K]
    open-instruct rewards list | score | check
    open-instruct data inspect MIX.yaml --tokenizer DIR
    open-instruct tiny --out DIR [--arch llama|olmo2] [--seed N]

Heavy imports (torch, vLLM) happen inside the handlers so `--help` and config errors are instant.
User errors print one line, `error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _add_stage(sub, name: str, help_text: str, handler: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", help="stage config YAML")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable; dotted keys for nested values)",
    )
    p.set_defaults(func=_lazy(handler))
    return p


def _lazy(target: str):
    """Handler `module:function` imported only when the command runs."""

    def run(args) -> int:
        import importlib

        mod, fn = target.split(":")
        return getattr(importlib.import_module(mod), fn)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="open-instruct", description="SFT -> DPO -> RLVR post-training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe: SFT -> DPO -> RLVR stages, resuming where it stopped")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    p.add_argument("--output", help="run directory (overrides the recipe's output_dir)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    p.set_defaults(func=_lazy("open_instruct.pipeline:run_command"))

    _add_stage(sub, "sft", "supervised fine-tuning", "open_instruct.train.sft:sft_command")
    p = _add_stage(sub, "dpo", "direct preference optimisation", "open_instruct.train.dpo:dpo_command")
    p.add_argument("--model", help="short form: model path or hub id (Tülu 3 8B DPO defaults)")
    p.add_argument("--data", help="short form: preference data file or data-mix YAML")
    p.add_argument("--output", help="short form: output directory")
    _add_stage(sub, "rlvr", "RL with verifiable rewards (PPO or GRPO)", "open_instruct.rl.rlvr:rlvr_command")

    p = sub.add_parser("eval", help="generate with vLLM and score with reward_fns")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="RLVR-format data mix YAML or file")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt (pass@k when > 1)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument(
        "--max-prompt-length",
        type=int,
        default=2048,
        help="longer prompts are dropped (capped to fit the model's context)",
    )
    p.add_argument("--temperature", type=float, default=None, help="default: 0 for 1 sample, 1.0 otherwise")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--reward-module", action="append", default=[], help="user reward spec file.py:fn")
    p.add_argument("--output", help="write per-sample results (JSONL) here")
    p.set_defaults(func=_lazy("open_instruct.evaluate:eval_command"))

    from reward_fns.cli import add_rewards_parser

    add_rewards_parser(sub)
    from .data.inspect import add_data_parser

    add_data_parser(sub)
    from .model.tiny import add_tiny_parser

    add_tiny_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import UserError

    try:
        code = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # reward_fns raises plain ValueError subclasses for bad user input (it does not import us)
        if type(e).__module__.startswith("reward_fns"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
