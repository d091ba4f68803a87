"""``mlof synth``: write a synthetic domain as an MPI-Sintel training tree (``python -m mlof.commands.synth``).

Unlike the other subcommands its options are argparse flags; ``mlof.cli`` parses them with :func:`add_arguments`
and hands them with the ``--config`` YAML and ``key=value`` settings to :func:`run_with_settings`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from mlof.config import ConfigError
from mlof.data.synthetic import DOMAINS, Domain, get_domain, write_tree

__all__ = ["add_arguments", "run", "run_with_settings", "main"]

_EPILOG = """domain parameters (--set KEY=VALUE; ranges as LOW,HIGH):
{params}

Every option is also a key=value (the flag's name without dashes, '-' as '_'), like the other subcommands.

Examples:
  mlof synth out=data/synth-target domain=target scenes=200 size=[436,1024] seed=0
  mlof synth out=data/custom domain=my_domain.yaml scenes=20 -q
  mlof synth --out data/custom --domain source --set noise_std=2,4 --set blur_sigma=1,1
Read back with mlof.data.build_dataset("sintel", OUT, pass_="final")."""


def _param_help() -> str:
    src, tgt = DOMAINS["source"], DOMAINS["target"]
    lines = []
    for f in dataclasses.fields(Domain):
        if f.name == "name":
            continue
        lines.append(f"  {f.name:24s} source={_fmt(getattr(src, f.name)):14s} target={_fmt(getattr(tgt, f.name))}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, tuple) else str(v)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` options to ``parser`` (every knob is documented in ``--help``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Generate synthetic frame sequences with exact optical flow, occlusion and validity, "
                          "written as an MPI-Sintel training tree (training/clean, final, flow, occlusions, "
                          "invalid) plus domain.json.")
    parser.epilog = _EPILOG.format(params=_param_help())
    parser.add_argument("--out", default=None, help="output folder (required; created; becomes the Sintel root)")
    parser.add_argument("--domain", default="source",
                        help="domain: 'source', 'target', or a YAML file of parameters (key 'base' picks the "
                             "defaults) (default: source)")
    parser.add_argument("--scenes", "-n", type=int, default=10,
                        help="number of scenes (sequences) to write (default: 10)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="frame height and width in pixels (default: 256 256)")
    parser.add_argument("--clip-length", type=int, default=2,
                        help="frames per scene; a scene of T frames has T-1 flow fields (default: 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="generator seed: scene k is always the same for a given seed (default: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a domain parameter, e.g. --set noise_std=1,3 (repeatable; see below)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out folder (files of the same name are replaced)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _parse_value(text: str) -> Any:
    parts = [p.strip() for p in text.split(",")]
    vals: list[Any] = []
    for p in parts:
        try:
            vals.append(int(p))
        except ValueError:
            try:
                vals.append(float(p))
            except ValueError:
                vals.append(p)
    return tuple(vals) if len(vals) > 1 else vals[0]


def _domain(args: argparse.Namespace):
    dom = get_domain(args.domain)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = _parse_value(value)
    if overrides:
        fields = {f.name: f for f in dataclasses.fields(Domain)}
        for k, v in list(overrides.items()):   # a single number for a range means (v, v)
            if k in fields and isinstance(getattr(dom, k, None), tuple) and not isinstance(v, tuple):
                overrides[k] = (v, v)
        dom = Domain.from_dict(overrides, base=dom)
    return dom


def run(args: argparse.Namespace) -> int:
    """Execute ``synth`` with parsed ``args``; returns the exit code (2 on bad arguments)."""

    try:
        if not args.out:
            raise ValueError("--out is required (the folder to write the tree to)")
        dom = _domain(args)
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(f"--out {out} exists and is not empty (pass --overwrite)")
        if args.scenes < 1 or args.clip_length < 2 or min(args.size) < 8:
            raise ValueError("--scenes must be >= 1, --clip-length >= 2 and --size at least 8 8")
    except ValueError as e:
        print(f"mlof synth: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    root = write_tree(out, dom, n=args.scenes, size=tuple(args.size), seed=args.seed,
                      clip_length=args.clip_length, progress=not args.quiet)
    dt = time.perf_counter() - t0
    pairs = args.scenes * (args.clip_length - 1)
    print(f"wrote {args.scenes} scenes ({pairs} pairs, domain {dom.name}, {args.size[0]}x{args.size[1]}) to "
          f"{root} in {dt:.1f} s ({pairs / max(dt, 1e-9):.2f} pairs/s)")
    return 0


def run_with_settings(args: argparse.Namespace, parser: argparse.ArgumentParser, config: str | None,
                      extra: Sequence[str]) -> int:
    """``run`` with the keys of the ``config`` YAML, then the ``key=value`` items of ``extra``, set on ``args``
    (key = a flag's name without dashes); an unknown key is a ``ConfigError``."""
    settings: dict[str, Any] = {}
    if config:
        if not Path(config).is_file():
            raise ConfigError(f"recipe {config} does not exist")
        loaded = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {config} must be a mapping of keys to values")
        settings.update(loaded)
    for item in extra:
        key, _, value = item.partition("=")
        settings[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    dests = {a.dest: a for a in parser._actions}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        if dest not in dests or dest in ("help", "config", "command"):
            raise ConfigError(f"synth: unknown key {key!r} (see mlof synth --help)")
        action = dests[dest]
        if action.type is not None and value is not None:
            value = [action.type(v) for v in value] if isinstance(value, list) else action.type(value)
        setattr(args, dest, value)
    return int(run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="mlof synth"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
