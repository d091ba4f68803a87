"""``mlof synth``: write a synthetic domain as an MPI-Sintel training tree (``python -m mlof.commands.synth``).

``mlof.cli`` dispatches the ``synth`` subcommand here through :func:`add_arguments` and :func:`run`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Sequence

__all__ = ["add_arguments", "run", "main"]

_EPILOG = """domain parameters (--set KEY=VALUE; ranges as LOW,HIGH):
{params}

Every option is also a key=value (the flag's name without dashes, '-' as '_'), like the other subcommands.

Examples:
  mlof synth out=data/synth-target domain=target scenes=200 size=[436,1024] seed=0
  mlof synth out=data/custom domain=my_domain.yaml scenes=20 -q
  mlof synth --out data/custom --domain source --set noise_std=2,4 --set blur_sigma=1,1
Read back with mlof.data.build_dataset("sintel", OUT, pass_="final")."""


def _param_help() -> str:
    from mlof.data.synthetic import DOMAINS, Domain

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
    from mlof.data.synthetic import Domain, get_domain

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
    from pathlib import Path

    from mlof.data.synthetic import write_tree

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="mlof synth"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
