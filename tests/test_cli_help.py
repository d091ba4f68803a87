"""The CLI explains itself: one help line per key, per-subcommand examples that parse, hints in CLI syntax
(`--input x` -> `input=x`, KITTI's `data.options.flow=noc`), `key=value` and `-q` everywhere (synth too)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mlof.cli import COMMANDS, _defaults, main
from mlof.cli_help import EXAMPLES, annotated_listing, flat_keys, key_help
from mlof.commands.setup import _official_entry

CONFIG_COMMANDS = [c for c in COMMANDS if c != "synth"]
REPO = Path(__file__).resolve().parents[1]


def _help(capsys, sub: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("sub", CONFIG_COMMANDS)
def test_every_key_has_one_help_line(sub, capsys):
    text = _help(capsys, sub)
    keys = flat_keys(OmegaConf.to_container(OmegaConf.structured(_defaults(sub))))
    assert keys
    missing = [k for k in keys if not key_help(sub, k, _defaults(sub))]
    assert not missing, f"{sub}: keys without a help line: {missing}"
    listing = annotated_listing(sub, _defaults(sub))
    for key in keys:
        leaf = key.split(".")[-1]
        depth = key.count(".") + 1
        line = next(ln for ln in listing.splitlines() if re.match(rf"^{'  ' * depth}{re.escape(leaf)}:", ln))
        assert "# " in line, (sub, key, line)
        assert line.split("# ", 1)[1].strip(), (sub, key)
    assert listing in text


@pytest.mark.parametrize("sub", list(COMMANDS))
def test_help_has_own_examples_and_recipe(sub, capsys):
    text = _help(capsys, sub)
    assert "examples:" in text.lower() or "Examples:" in text
    examples = EXAMPLES[sub]
    assert examples and all(e.split("#")[0].split()[:2] == ["mlof", sub] or "mlof " + sub in e for e in examples)
    if sub not in ("pretrain",):
        assert "recipes/quick_pretrain.yaml" not in text  # each subcommand names its own recipe, not the pretraining one
    if sub in ("infer", "adapt"):
        assert re.search(rf"mlof {sub} input=", text)


def test_key_meanings_are_spelled_out(capsys):
    adapt = _help(capsys, "adapt")
    assert re.search(r"input: null +# frames to process: null or clip", adapt)
    assert re.search(r"pairs: null +# only these pair indices", adapt)
    assert re.search(r"options: \{\} +# adaptation settings of mlof.adapt", adapt)
    evaluate = _help(capsys, "evaluate")
    assert re.search(r"padding: null +# sintel \| kitti", evaluate)
    assert re.search(r"adapt: null +# score after per-pair unsupervised adaptation", evaluate)
    assert re.search(r"images: 4 +# ", evaluate)
    assert re.search(r"    options: \{\} +# reader options, e\.g\. ", evaluate) and "data.options.flow=noc" in evaluate


def _example_argv(example: str) -> list[str]:
    words = shlex.split(example.split("  #")[0])
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # environment assignments
    assert words[0] == "mlof"
    return words[1:]


@pytest.mark.parametrize("sub", CONFIG_COMMANDS)
def test_examples_parse(sub, capsys, tmp_path, monkeypatch):
    """Every example is valid: its recipe exists and its keys resolve (--print-config, nothing runs)."""
    for example in EXAMPLES[sub]:
        argv = [a for a in _example_argv(example) if a not in ("--online", "--resume", "-q")]
        for i, a in enumerate(argv):
            if a == "--config":
                assert (REPO / argv[i + 1]).is_file(), example
        monkeypatch.chdir(REPO)
        assert main(argv + ["--print-config"]) == 0, (example, capsys.readouterr().err)
        cfg = yaml.safe_load(capsys.readouterr().out)
        model = cfg.get("model") or {}
        if model.get("checkpoint") and not Path(model["checkpoint"]).suffix:
            # a registry name must fit the network the example builds (checked without downloading)
            _official_entry(model["checkpoint"], model.get("name"))
    capsys.readouterr()


def test_flag_for_a_key_hints_key_value(capsys):
    assert main(["infer", "--input", "frames/"]) == 2
    assert "did you mean input=frames/?" in capsys.readouterr().err
    assert main(["adapt", "--input=clip.mp4", "-q"]) == 2
    assert "did you mean input=clip.mp4?" in capsys.readouterr().err
    assert main(["evaluate", "--max-samples", "3"]) == 2
    assert "did you mean max_samples=3?" in capsys.readouterr().err
    assert main(["export", "--size"]) == 2
    assert "did you mean size=VALUE?" in capsys.readouterr().err


@pytest.mark.parametrize("sub", CONFIG_COMMANDS)
def test_quiet_everywhere(sub, capsys):
    assert main([sub, "-q", "--print-config"]) == 0
    capsys.readouterr()


def test_synth_takes_key_value_and_q(tmp_path, capsys):
    out = tmp_path / "kv"
    assert main(["synth", f"out={out}", "scenes=1", "size=[32,48]", "-q"]) == 0
    assert (out / "training" / "clean").is_dir()
    old = tmp_path / "flags"
    assert main(["synth", "--out", str(old), "--scenes", "1", "--size", "32", "48", "--quiet"]) == 0
    assert sorted(p.name for p in (old / "training" / "flow").rglob("*.flo")) == \
        sorted(p.name for p in (out / "training" / "flow").rglob("*.flo"))
    assert main(["synth", "bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err


def test_kitti_hint_uses_cli_syntax(tmp_path):
    from mlof.data import build_dataset

    root = tmp_path / "KITTI"
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "flow_noc").mkdir()
    for suffix in ("10", "11"):
        (root / "training" / "image_2" / f"000000_{suffix}.png").write_bytes(b"")
    with pytest.raises(Exception, match=r"data\.options\.flow=noc"):
        build_dataset("kitti15", str(root))
