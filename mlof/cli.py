"""The ``mlof`` command line: ``mlof <subcommand> [--config recipes/X.yaml] [key=value ...]``.

Subcommands: pretrain, meta-train, adapt (meta-inference), evaluate, experiment, infer, bench, synth, models, weights,
fetch, export; each lives in ``mlof.commands.<name>`` with its configuration dataclass. This module only parses
and dispatches.
Configuration = the subcommand's defaults <- the YAML recipe <- ``key=value`` overrides (OmegaConf dotlist:
``steps=200``, ``model.options.corr=ondemand``, ``sizes=[[224,320]]``); an unknown key is an error naming it.
``mlof <subcommand> --help`` lists every key with its default, one help line each (``mlof.cli_help``),
and examples. Outputs go to ``runs/<name>/``.
User errors print one line (``mlof <subcommand>: error: ...``) and exit with status 2; ``MLOF_DEBUG=1``
shows the traceback. Multi-process training: ``torchrun --nproc_per_node=2 -m mlof.cli pretrain ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from mlof import __version__
from mlof.checkpoint import CheckpointError
from mlof.cli_help import annotated_listing, examples_text
from mlof.commands import (adapt, bench, evaluate, experiment, export, fetch, infer, meta_train, models, pretrain,
                           synth, weights)
from mlof.config import resolve
from mlof.train.distributed import shutdown

__all__ = ["main", "build_parser", "COMMANDS"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, its configuration dataclass and its entry ``run(cfg, progress) -> status``
    (``synth`` has neither: its options are flags)."""

    help: str
    config: Optional[type]
    run: Optional[Callable[[DictConfig, bool], int]]
    training: bool = False


COMMANDS: dict[str, Command] = {
    "pretrain": Command("supervised training of a flow network (RAFT/GMA recipe)", pretrain.PretrainConfig,
                        pretrain.main, training=True),
    "meta-train": Command("MLOF meta-training on annotated target-domain tasks", meta_train.MetaTrainConfig,
                          meta_train.main, training=True),
    "adapt": Command("meta-inference: unsupervised test-time adaptation per pair or online along a video",
                     adapt.AdaptConfig, adapt.main),
    "evaluate": Command("RAFT-protocol evaluation on a dataset (optionally after adaptation)",
                        evaluate.EvaluateConfig, evaluate.main),
    "infer": Command("flow for frames, folders and videos -> flow files and colour images", infer.InferConfig,
                     infer.main),
    "experiment": Command("MLOF's six columns (theta0, theta0*, ft, ft*, ml, ml*) on a target dataset: table + plot",
                          experiment.ExperimentConfig, experiment.main),
    "bench": Command("speed and peak memory of inference and adaptation", bench.BenchConfig, bench.main),
    "synth": Command("write a synthetic data set with exact flow (Sintel layout)", None, None),
    "models": Command("list the networks with their parameter counts", models.ModelsConfig, models.main),
    "weights": Command("list the official checkpoints (URL, licence, training settings, checksum)",
                       weights.WeightsConfig, weights.main),
    "fetch": Command("download official checkpoints into MLOF_HOME (~/.cache/mlof), verified", fetch.FetchConfig,
                     fetch.main),
    "export": Command("export a network to ONNX (checked against torch with onnxruntime)", export.ExportConfig,
                      export.main),
}

# subcommands that write a run folder <out_dir>/<name>/ (refused when it holds a run, see RunDir)
RUN_FOLDER_COMMANDS = ("pretrain", "meta-train", "adapt", "evaluate", "infer", "bench")


def _defaults(kind: str) -> Any:
    """The configuration dataclass of subcommand ``kind``."""
    config = COMMANDS[kind].config
    if config is None:
        raise KeyError(kind)
    return config


_STREAMING = ("adapt", "infer", "evaluate")   # commands that write per pair and can --resume


def _config_listing(kind: str) -> str:
    try:
        text = annotated_listing(kind, _defaults(kind))
    except Exception as e:  # a part of mlof is missing: --help still works
        text = f"  (configuration keys unavailable: {e})"
    return ("configuration keys (default  # meaning); set them with key=value or in a --config YAML:\n"
            + text + "\n\n" + examples_text(kind))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlof", description="Test-time adaptation and meta-learning of optical-flow networks.",
        epilog="Every subcommand takes --config recipes/X.yaml and key=value overrides; see `mlof SUB --help`.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, cmd in COMMANDS.items():
        if name == "synth":
            p = sub.add_parser(name, help=cmd.help, description=cmd.help + ". Options as flags, or as keys of "
                               "--config YAML / key=value (key = the flag's name without dashes).")
            _add_synth(p)
            continue
        p = sub.add_parser(name, help=cmd.help, description=cmd.help + ".",
                           epilog=_config_listing(name), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
        p.add_argument("--config", "-c", metavar="YAML", help=_config_help(name))
        p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        if name == "adapt":
            p.add_argument("--online", action="store_true",
                           help="adapt along the sequence, carrying the weights (= online=true)")
        if cmd.training:
            p.add_argument("--resume", action="store_true",
                           help="continue runs/<name> from checkpoints/latest.pt (same recipe; = resume=true)")
            p.add_argument("--overwrite", action="store_true",
                           help="start runs/<name> over, deleting what it holds (= overwrite=true)")
        elif name == "experiment":
            p.add_argument("--resume", action="store_true",
                           help="continue runs/<name>: finished parts are kept, an interrupted training resumes "
                                "(= resume=true)")
            p.add_argument("--overwrite", action="store_true",
                           help="start runs/<name> over, deleting what it holds (= overwrite=true)")
        elif name in _STREAMING:
            p.add_argument("--resume", action="store_true",
                           help="continue an interrupted runs/<name>: finished pairs are not redone (same config)")
            p.add_argument("--overwrite", action="store_true", help="start runs/<name> over (= overwrite=true)")
        elif name in RUN_FOLDER_COMMANDS:
            p.add_argument("--overwrite", action="store_true",
                           help="start runs/<name> over, deleting what it holds (= overwrite=true)")
    return parser


_RECIPE_EXAMPLES = {"pretrain": "recipes/quick_pretrain.yaml", "meta-train": "recipes/quick_meta_train.yaml",
                    "adapt": "recipes/quick_meta_inference.yaml", "evaluate": "my_evaluate.yaml",
                    "experiment": "recipes/experiment_cpu.yaml",
                    "infer": "my_infer.yaml", "bench": "my_bench.yaml", "models": "my_models.yaml",
                    "weights": "my_weights.yaml", "fetch": "my_fetch.yaml", "export": "my_export.yaml"}


def _config_help(name: str) -> str:
    """--config help of subcommand ``name``, naming a recipe that fits it."""
    example = _RECIPE_EXAMPLES.get(name, f"my_{name}.yaml")
    return f"YAML of settings, the keys listed below (e.g. {example}); key=value overrides it"


def _flag_hint(cmd: str, argv: Sequence[str]) -> Optional[str]:
    """'did you mean input=x?' for ``--input x`` / ``--input=x`` where ``input`` is a configuration key."""
    if cmd not in COMMANDS or cmd == "synth":
        return None
    try:
        keys = set(OmegaConf.to_container(OmegaConf.structured(_defaults(cmd))))
    except Exception:
        return None
    known_flags = {"--config", "--print-config", "--quiet", "--online", "--resume", "--overwrite", "--help"}
    for i, tok in enumerate(argv):
        if not tok.startswith("--") or tok in known_flags:
            continue
        flag, eq, value = tok[2:].partition("=")
        key = flag.replace("-", "_")
        if key.split(".")[0] not in keys:
            continue
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            value = nxt if nxt and not nxt.startswith("-") and "=" not in nxt else "VALUE"
        return f"{tok} is not a flag: configuration keys are set as key=value; did you mean {key}={value}?"
    return None


def _add_synth(p: argparse.ArgumentParser) -> None:
    synth.add_arguments(p)
    if not any(a.dest == "config" for a in p._actions):
        p.add_argument("--config", "-c", metavar="YAML", help="YAML of settings (keys = flag names)")


def _version() -> str:
    return f"mlof {__version__}"


class UserError(Exception):
    """Raised for invalid command-line use outside argparse."""


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, CheckpointError, UserError)


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line hints joined with ' | ')."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(e).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    cmd_name = argv[0]
    try:
        if cmd_name == "synth":
            synth_parser = argparse.ArgumentParser(prog="mlof synth")
            _add_synth(synth_parser)
            # flags (with their values, e.g. --set noise_std=1,3) go to the parser; what is left are key=value
            args, extra = synth_parser.parse_known_args(argv[1:])
            bad = [a for a in extra if "=" not in a or a.startswith("-")]
            if bad:
                synth_parser.error(f"unrecognized arguments: {' '.join(bad)}")
            return synth.run_with_settings(args, synth_parser, args.config, extra)
        hint = _flag_hint(cmd_name, argv[1:])
        if hint:
            print(f"mlof {cmd_name}: error: {hint}", file=sys.stderr)
            return 2
        # key=value overrides may come after flags too (`adapt --config X a=1 -q b=2`): argparse takes one
        # run of positionals, so the later runs come back unparsed and are added here
        args, rest = parser.parse_known_args(argv)
        stray = [a for a in rest if a.startswith("-") or ("=" not in a and cmd_name != "fetch")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        if rest:
            args.overrides = list(getattr(args, "overrides", None) or []) + rest
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "fetch":  # `mlof fetch raft-things gma-things`: bare names are registry names
            bare = [o for o in args.overrides if "=" not in o]
            if bare:
                args.overrides = [o for o in args.overrides if "=" in o] + [f"names=[{','.join(bare)}]"]
        overrides = list(args.overrides) + (["online=true"] if getattr(args, "online", False) else [])
        # the flags are the last word (a script's default overwrite=true yields to an explicit --resume)
        if getattr(args, "resume", False) and getattr(args, "overwrite", False):
            raise UserError("--resume and --overwrite exclude each other: continue the run or start it over")
        overrides += ["resume=true", "overwrite=false"] if getattr(args, "resume", False) else []
        overrides += ["overwrite=true", "resume=false"] if getattr(args, "overwrite", False) else []
        cfg = resolve(_defaults(args.command), args.config, overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        return COMMANDS[args.command].run(cfg, not args.quiet)
    except KeyboardInterrupt:
        print(f"mlof {cmd_name}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if os.environ.get("MLOF_DEBUG"):
            raise
        print(f"mlof {cmd_name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:   # the machine, not the user: disk full, permissions (one line, status 1)
        if os.environ.get("MLOF_DEBUG"):
            raise
        print(f"mlof {cmd_name}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
