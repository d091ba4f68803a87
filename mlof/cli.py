"""The ``mlof`` command line: ``mlof <subcommand> [--config recipes/X.yaml] [key=value ...]``.

Subcommands: pretrain, meta-train, adapt (meta-inference), evaluate, infer, bench, synth, models, weights,
fetch, export.
Configuration = the subcommand's defaults <- the YAML recipe <- ``key=value`` overrides (OmegaConf dotlist:
``steps=200``, ``model.options.corr=ondemand``, ``sizes=[[224,320]]``); an unknown key is an error naming it.
``mlof <subcommand> --help`` lists every key with its default, one help line each (``mlof.cli_help``),
and examples. Outputs go to ``runs/<name>/``.
User errors print one line (``mlof <subcommand>: error: ...``) and exit with status 2; ``MLOF_DEBUG=1``
shows the traceback. Multi-process training: ``torchrun --nproc_per_node=2 -m mlof.cli pretrain ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap  # noqa: F401
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from omegaconf import OmegaConf

__all__ = ["main", "build_parser", "COMMANDS"]


# --------------------------------------------------------------------------------------- subcommand handlers
def _defaults(kind: str) -> Any:
    if kind == "pretrain":
        from mlof.commands.pretrain import PretrainConfig
        return PretrainConfig
    if kind == "meta-train":
        from mlof.commands.meta_train import MetaTrainConfig
        return MetaTrainConfig
    if kind == "adapt":
        from mlof.commands.adapt import AdaptConfig
        return AdaptConfig
    if kind == "infer":
        from mlof.commands.adapt import InferConfig
        return InferConfig
    if kind == "evaluate":
        from mlof.commands.evaluate import EvaluateConfig
        return EvaluateConfig
    if kind == "bench":
        from mlof.commands.bench import BenchConfig
        return BenchConfig
    if kind == "models":
        return ModelsConfig
    if kind == "weights":
        from mlof.commands.fetch import WeightsConfig
        return WeightsConfig
    if kind == "fetch":
        from mlof.commands.fetch import FetchConfig
        return FetchConfig
    if kind == "export":
        from mlof.commands.export import ExportConfig
        return ExportConfig
    raise KeyError(kind)


def _say(msg: str = "") -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


def _train(kind: str, cfg: Any, args: argparse.Namespace) -> int:
    from mlof.train.runner import run_training

    if kind == "pretrain":
        from mlof.commands.pretrain import PretrainJob as Job
    else:
        from mlof.commands.meta_train import MetaTrainJob as Job
    summary = run_training(Job, cfg, resume=cfg.resume, overwrite=cfg.overwrite, progress=not args.quiet)
    train = summary.get("train") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(train.items())[:4])
    _say(f"{kind}: {summary['step']} steps done ({summary['world_size']} process(es), "
         f"{summary['wall_time_s']:.0f} s){': ' + shown if shown else ''}")
    _say(f"  run folder:  {summary['run_dir']}   (tensorboard --logdir {summary['run_dir']})")
    _say(f"  checkpoint:  {summary['checkpoint']}")
    return 0


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _adapt(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.adapt import run_adapt

    s = run_adapt(cfg, progress=not args.quiet, resume=cfg.resume, overwrite=cfg.overwrite)
    _say(f"adapt ({s['mode']}) on {s['input']}: {s['pairs']} pair(s), iters {s['iters']}, padding "
         f"{s['padding']}, {s['seconds']:.1f} s")
    if s["scored_pairs"]:
        _say(f"  EPE before adaptation: {_fmt(s['epe_before'])} px")
        _say(f"  EPE after adaptation:  {_fmt(s['epe_after'])} px   (mean over {s['scored_pairs']} pair(s) "
             f"with ground truth)")
    _say(f"  outputs: {s['run_dir']}  (flows/, flows_before/, images/, metrics.json, TensorBoard events)")
    return 0


def _infer(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.adapt import run_infer

    s = run_infer(cfg, progress=not args.quiet, resume=cfg.resume, overwrite=cfg.overwrite)
    _say(f"infer on {s['input']}: {s['pairs']} pair(s), iters {s['iters']}, {s['seconds_per_pair']:.2f} s per pair"
         + (f", EPE {s['epe']:.3f} px" if s.get("epe") is not None else ""))
    _say(f"  flows: {s['flows']}")
    return 0


def _evaluate(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.evaluate import run_evaluate

    summary = run_evaluate(cfg, progress=not args.quiet, resume=cfg.resume, overwrite=cfg.overwrite)

    def head(s: dict) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in s["headline"].items())

    _say(f"evaluate on {summary['dataset']} ({summary['num_images']} pairs, iters {summary['iters']}, padding "
         f"{summary['padding']}{', adapted' if summary['adapted'] else ''}): {head(summary)}")
    if summary.get("before"):
        _say(f"  before adaptation (same run, same settings): {head(summary['before'])}")
    _say(f"  metrics: {summary['metrics_path']}")
    return 0


def _bench(cfg: Any, args: argparse.Namespace) -> int:
    import torch

    from mlof.commands.bench import BenchConfig, bench, format_markdown
    from mlof.utils import atomic_open
    from mlof.train.distributed import resolve_device
    from mlof.runs.rundir import RunDir

    obj: BenchConfig = OmegaConf.to_object(cfg)
    run = RunDir.for_config(cfg)
    if obj.threads > 0:
        torch.set_num_threads(obj.threads)
    device = resolve_device(obj.device)
    rows = bench(obj, device, progress=None if args.quiet else (lambda m: print(f"  measuring {m}", flush=True)))
    run.save_config(cfg)
    info = {"device": str(device), "torch": torch.__version__, "threads": obj.threads or torch.get_num_threads(),
            "cpus": os.cpu_count(), "rows": rows}
    run.write_json("bench.json", info)
    run.write_metrics(info)
    table = format_markdown(rows)
    with atomic_open(run.path / "bench.md", "w") as f:
        f.write(table + "\n")
    run.close()
    print(table)
    _say(f"  json: {run.path / 'bench.json'}, markdown: {run.path / 'bench.md'}")
    return 0


@dataclass
class ModelsConfig:
    """``mlof models``: the available networks with their parameter counts."""

    name: str = "models"
    out_dir: str = "runs"
    names: Any = None        # list of names; None: every available network
    format: str = "table"    # table | json


def _models(cfg: Any, args: argparse.Namespace) -> int:
    import backbones
    from mlof.runs.rundir import RunDir

    if cfg.format not in ("table", "json"):
        from mlof.config import ConfigError
        raise ConfigError(f"format: {cfg.format!r} is not one of table, json")
    names = list(cfg.names) if cfg.names else backbones.available()
    rows = []
    for name in names:
        model = backbones.build(name)
        groups = backbones.param_groups(model)
        rows.append({"name": name, "parameters": backbones.count_parameters(model),
                     "groups": sorted(g for g in groups if g != "all")})
    run = RunDir(cfg.out_dir, cfg.name, tensorboard=False, overwrite=True)   # a listing: replaced each time
    run.save_config(cfg)
    run.write_json("models.json", rows)
    run.close()
    if cfg.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows) if rows else 4
        print(f"{'name'.ljust(width)}  {'parameters':>12}  parameter groups")
        for r in rows:
            print(f"{r['name'].ljust(width)}  {r['parameters']:>12,}  {', '.join(r['groups'])}")
    return 0


def _weights(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.fetch import run_weights

    return run_weights(OmegaConf.to_object(cfg))


def _fetch(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.fetch import run_fetch

    return run_fetch(OmegaConf.to_object(cfg), progress=not args.quiet)


def _export(cfg: Any, args: argparse.Namespace) -> int:
    from mlof.commands.export import run_export

    run_export(OmegaConf.to_object(cfg), say=_say)
    return 0


# ------------------------------------------------------------------------------------------------ synth glue
def _synth(args: argparse.Namespace, parser: argparse.ArgumentParser, extra: Sequence[str]) -> int:
    from mlof.commands import synth as synth_cli

    settings: dict[str, Any] = {}
    if args.config:
        from mlof.config import ConfigError
        if not os.path.isfile(args.config):
            raise ConfigError(f"recipe {args.config} does not exist")
        loaded = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {args.config} must be a mapping of keys to values")
        settings.update(loaded)
    for item in extra:
        key, _, value = item.partition("=")
        settings[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    dests = {a.dest: a for a in parser._actions}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        if dest not in dests or dest in ("help", "config", "command"):
            from mlof.config import ConfigError
            raise ConfigError(f"synth: unknown key {key!r} (see mlof synth --help)")
        action = dests[dest]
        if action.type is not None and value is not None:
            value = [action.type(v) for v in value] if isinstance(value, list) else action.type(value)
        setattr(args, dest, value)
    return int(synth_cli.run(args) or 0)


# ----------------------------------------------------------------------------------------------------- parser
@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[Any, argparse.Namespace], int]
    training: bool = False


# subcommands that write a run folder <out_dir>/<name>/ (refused when it holds a run, see RunDir)
RUN_FOLDER_COMMANDS = ("pretrain", "meta-train", "adapt", "evaluate", "infer", "bench")

COMMANDS: dict[str, Command] = {
    "pretrain": Command("supervised training of a flow network (RAFT/GMA recipe)",
                        lambda c, a: _train("pretrain", c, a), training=True),
    "meta-train": Command("MLOF meta-training on annotated target-domain tasks",
                          lambda c, a: _train("meta-train", c, a), training=True),
    "adapt": Command("meta-inference: unsupervised test-time adaptation per pair or online along a video", _adapt),
    "evaluate": Command("RAFT-protocol evaluation on a dataset (optionally after adaptation)", _evaluate),
    "infer": Command("flow for frames, folders and videos -> flow files and colour images", _infer),
    "bench": Command("speed and peak memory of inference and adaptation", _bench),
    "synth": Command("write a synthetic data set with exact flow (Sintel layout)", lambda c, a: 0),
    "models": Command("list the networks with their parameter counts", _models),
    "weights": Command("list the official checkpoints (URL, licence, training settings, checksum)", _weights),
    "fetch": Command("download official checkpoints into MLOF_HOME (~/.cache/mlof), verified", _fetch),
    "export": Command("export a network to ONNX (checked against torch with onnxruntime)", _export),
}


_STREAMING = ("adapt", "infer", "evaluate")   # commands that write per pair and can --resume


def _config_listing(kind: str) -> str:
    from mlof.cli_help import annotated_listing, examples_text

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
    try:
        from mlof.commands import synth as synth_cli
        synth_cli.add_arguments(p)
    except ImportError as e:
        p.set_defaults(_synth_missing=str(e))
    if not any(a.dest == "config" for a in p._actions):
        p.add_argument("--config", "-c", metavar="YAML", help="YAML of settings (keys = flag names)")


def _version() -> str:
    import mlof
    return f"mlof {mlof.__version__}"


class UserError(Exception):
    """Raised for invalid command-line use outside argparse."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from mlof.checkpoint import CheckpointError
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
            if getattr(args, "_synth_missing", None):
                raise UserError(f"mlof.commands.synth is not available: {args._synth_missing}")
            return _synth(args, synth_parser, extra)
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
        from mlof.config import resolve

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
        return COMMANDS[args.command].run(cfg, args)
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
        from mlof.train.distributed import shutdown
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
