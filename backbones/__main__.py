"""``python -m backbones``: the networks this install provides, with their parameter counts."""
from __future__ import annotations

import sys

from backbones.builder import build
from backbones.registry import available, count_parameters


def main() -> int:
    rows = []
    for name in available():
        try:
            model = build(name)
            rows.append((name, f"{count_parameters(model):,}", type(model).__name__))
        except Exception as e:  # one broken network must not hide the others
            rows.append((name, "error", f"{type(e).__name__}: {e}"))
    width = max([len("model")] + [len(r[0]) for r in rows])
    print(f"{'model':<{width}}  {'parameters':>12}  class")
    for name, params, cls in rows:
        print(f"{name:<{width}}  {params:>12}  {cls}")
    return 0 if all(r[1] != "error" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
