"""`open-instruct`: one entry point for every stage and tool.

    open-instruct run RECIPE [--set stage.key=value ...] [--dry-run] [--output DIR]   (a file or a shipped name)
    open-instruct recipes                                  the shipped recipes, one line each
    open-instruct sft  --config FILE.yaml | --model M --data D --output DIR  [--set key=value ...]
    open-instruct dpo  --config FILE.yaml | --model M --data prefs.jsonl --output DIR  [--set ...]
    open-instruct rlvr --config FILE.yaml [--set ...]
    open-instruct eval --model DIR --data MIX.yaml [--samples K]
    open-instruct push DIR --repo-id ORG/NAME [--private] [--revision BRANCH]   (a stage or recipe run dir)
    open-instruct rewards list | score | check
    open-instruct data inspect MIX.yaml --tokenizer DIR
    open-instruct tiny --out DIR [--arch llama|olmo2] [--seed N]

Heavy imports (torch, vLLM) happen inside the handlers so `--help` and config errors are instant.
User errors print one line, `error: ...`, and exit 2; Ctrl-C prints where the run stopped and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys


def _lazy(target: str):
    """Handler `module:function` imported only when the command runs."""

    def run(args) -> int:
        import importlib

        mod, fn = target.split(":")
        return getattr(importlib.import_module(mod), fn)(args)

    return run


def _verbosity() -> argparse.ArgumentParser:
    """-v / -q, accepted before and after the subcommand (SUPPRESS: a subcommand that does not see
    the flag leaves the top-level value alone)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging, and the start-up logs of vLLM/Ray/DeepSpeed on the console",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only"
    )
    return p


def _config_keys(stage: str) -> str:
    """The stage's config keys with type, default and one line each, from its dataclass."""
    from .config import field_docs
    from .recipe.stages import STAGE_TYPES

    rows = field_docs(STAGE_TYPES[stage].config_cls())
    width = max(len(name) for name, *_ in rows)
    lines = ["config keys (YAML for --config, or --set KEY=VALUE; nested keys with dots):"]
    for name, typ, default, doc in rows:
        lines.append(
            f"  {name:<{width}}  {typ}, default {default}" + (f"\n  {'':<{width}}    {doc}" if doc else "")
        )
    return "\n".join(lines)


def _add_stage(sub, parent, name: str) -> argparse.ArgumentParser:
    from .recipe.stages import STAGE_TYPES

    st = STAGE_TYPES[name]
    p = sub.add_parser(
        name,
        help=st.help,
        parents=[parent],
        epilog=_config_keys(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="stage config YAML")
    p.add_argument("--model", help="short form of model_name_or_path: a model dir or hub id")
    p.add_argument("--data", help="short form of dataset_mix: a data file or data-mix YAML")
    p.add_argument("--output", help="short form of output_dir")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable; dotted keys for nested values)",
    )
    # the stage, then its push_to_hub (recipe/push.py)
    p.set_defaults(func=_lazy("open_instruct.recipe.push:stage_command"))
    return p


def _version() -> str:
    from .versions import version_report

    return version_report()


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print the toolkit's and the key dependencies' versions",
        )

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parent = _verbosity()
    parser = argparse.ArgumentParser(
        prog="open-instruct", description="SFT -> DPO -> RLVR post-training.", parents=[parent]
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run", help="run a recipe: SFT -> DPO -> RLVR stages, resuming where it stopped", parents=[parent]
    )
    p.add_argument("recipe", help="recipe YAML, or the name of a shipped recipe (open-instruct recipes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    p.add_argument("--output", help="run directory (overrides the recipe's output_dir)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    p.set_defaults(func=_lazy("open_instruct.recipe.run:run_command"))

    p = sub.add_parser(
        "recipes", help="list the shipped recipes (run one by name: open-instruct run NAME)", parents=[parent]
    )
    p.set_defaults(func=_recipes_command)

    for name in ("sft", "dpo", "rlvr"):
        _add_stage(sub, parent, name)

    p = sub.add_parser("eval", help="generate with vLLM and score with reward_fns", parents=[parent])
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
    p.set_defaults(func=_lazy("open_instruct.generation.evaluate:eval_command"))

    p = sub.add_parser(
        "push",
        help="upload a published model (+ a model card from its lineage) to the Hugging Face Hub",
        parents=[parent],
    )
    p.add_argument("model_dir", help="a stage's output dir, or a recipe run dir (its final stage is pushed)")
    p.add_argument("--repo-id", required=True, help="hub repo: org/name, or name for your own namespace")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to push to (created when missing; default main)")
    p.set_defaults(func=_lazy("open_instruct.recipe.push:push_command"))

    from reward_fns.cli import add_rewards_parser

    add_rewards_parser(sub)
    from .data.inspect import add_data_parser

    add_data_parser(
        sub, known_verifier=_known_verifier, label_check=_label_check, check_source=_check_tokenizer_source
    )
    from .model.tiny import add_tiny_parser

    add_tiny_parser(sub)
    for name in ("rewards", "data", "tiny"):  # parsers added by other modules take -v/-q too
        _add_verbosity(sub.choices[name], parent)
    return parser


def _add_verbosity(p: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    for action in parent._actions:
        if not any(s in p._option_string_actions for s in action.option_strings):
            p._add_action(action)
    for sub_action in p._subparsers._group_actions if p._subparsers else []:
        for child in getattr(sub_action, "choices", {}).values():
            _add_verbosity(child, parent)


def _known_verifier(name: str) -> bool:
    from reward_fns import get_spec

    try:
        get_spec(name)
        return True
    except ValueError:
        return False


def _check_tokenizer_source(path: str, flag: str) -> None:
    from .model.source import check_model_source

    check_model_source(path, flag, kind="tokenizer")


def _label_check(dataset: str, ground_truth) -> str | None:
    from .generation.evaluate import label_check

    return label_check(dataset, ground_truth)


def _recipes_command(args) -> int:
    from .shipped import list_recipes

    rows = list_recipes()
    width = max(len(name) for name, _, _ in rows)
    for name, _, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\nrun one: open-instruct run NAME [--dry-run]   (a recipe file path works too)")
    return 0


def _setup_logging(verbose: bool, quiet: bool, command: str = "open-instruct") -> None:
    """Our own INFO lines on the console; other libraries' (Ray, vLLM, DeepSpeed, transformers) in
    <output>/logs/<command>.log once the command knows its output (open_instruct/logs.py); -v: all here."""
    from .logs import setup

    if verbose:
        os.environ["OPEN_INSTRUCT_VERBOSE"] = "1"  # child processes (engines, launched stages) follow
    if quiet:
        os.environ.setdefault("OPEN_INSTRUCT_NO_PROGRESS", "1")
    setup(verbose, quiet, command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False), args.command)
    if args.command == "eval" and args.output:  # its engines' logs beside the results file
        from pathlib import Path

        from .logs import use_log_dir

        try:
            use_log_dir(Path(args.output).resolve().parent / "logs")
        except OSError:  # an --output under a file: eval's own check says so in one line
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import Interrupted, UserError
    from .logs import teardown

    try:
        code = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            f"interrupted: open-instruct {args.command} stopped; rerun the same command to continue "
            f"(finished stages, checkpoints and cached results are kept)",
            file=sys.stderr,
        )
        return 130
    except ValueError as e:
        # reward_fns raises plain ValueError subclasses for bad user input (it does not import us)
        if type(e).__module__.startswith("reward_fns"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        teardown()  # an in-process caller (tests) gets its logging and environment back
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
