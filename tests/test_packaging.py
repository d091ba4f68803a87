"""Packaging: setup.cfg is sound, the packages import, the console script and torch range are right."""
from __future__ import annotations

import configparser
import importlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    assert cfg.read(REPO / "setup.cfg"), "setup.cfg missing"
    return cfg


def _lines(value: str) -> list[str]:
    return [x.strip() for x in value.strip().splitlines() if x.strip()]


def test_setup_cfg_metadata():
    cfg = _cfg()
    assert cfg["metadata"]["name"] == "mlof"
    Version(cfg["metadata"]["version"])                      # a valid version string
    opts = cfg["options"]
    assert opts["packages"].strip() == "find:"
    assert Requirement("python" + opts["python_requires"].strip()).specifier.contains("3.10")
    include = _lines(cfg["options.packages.find"]["include"])
    assert {"mlof", "mlof.*", "backbones", "backbones.*"} <= set(include)
    extras = cfg["options.extras_require"]
    assert any(Requirement(r).name == "pytest" for r in _lines(extras["test"]))
    assert any(Requirement(r).name == "higher" for r in _lines(extras["higher"]))
    assert {Requirement(r).name for r in _lines(extras["export"])} == {"onnx", "onnxruntime"}


def test_torch_range_admits_2_13_and_nothing_pulls_another_torch():
    reqs = [Requirement(r) for r in _lines(_cfg()["options"]["install_requires"])]
    names = {r.name.lower() for r in reqs}
    torch_req = next(r for r in reqs if r.name.lower() == "torch")
    assert torch_req.specifier.contains("2.13.0")
    # torchvision / torchaudio pin their own torch and would replace the installed one
    assert not names & {"torchvision", "torchaudio", "learn2learn"}
    assert "opencv-python-headless" in names                 # mlof.io needs OpenCV (16-bit PNG)


def test_console_script_declared():
    scripts = _lines(_cfg()["options.entry_points"]["console_scripts"])
    entries = dict(x.replace(" ", "").split("=", 1) for x in scripts)
    assert entries.get("mlof") == "mlof.cli:main"
    if importlib.util.find_spec("mlof.cli") is None:
        pytest.skip("mlof/cli.py is not written yet")
    assert callable(importlib.import_module("mlof.cli").main)


def test_pyproject_is_build_system_only():
    import tomllib
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(data) == {"build-system"}
    assert "setuptools.build_meta" in data["build-system"]["build-backend"]


@pytest.mark.parametrize("module", ["mlof", "backbones", "mlof.io", "mlof.metrics", "mlof.viz", "mlof.samples"])
def test_packages_import(module):
    mod = importlib.import_module(module)
    assert mod.__file__.startswith(str(REPO))


def test_assets_are_package_data():
    data = _lines(_cfg()["options.package_data"]["mlof"].replace(",", "\n"))
    assert "assets/*" in data
    assets = sorted(p.name for p in (REPO / "mlof" / "assets").iterdir())
    for name in ("README.md", "clip.json", "flow_frame_0002.flo", "frame_0001.png", "occ_frame_0002.png"):
        assert name in assets
    total = sum(p.stat().st_size for p in (REPO / "mlof" / "assets").iterdir())
    assert total < 2_000_000, "the bundled clip should stay small"


@pytest.mark.slow
def test_wheel_contains_packages_and_assets(tmp_path: Path):
    """Build the wheel offline (no isolation, no deps) from a copy of the tree (pip builds in place and
    would leave build/ and *.egg-info behind), and look inside."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("mlof", "backbones"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "wheel" in proc.stderr and "No module named" in proc.stderr:
        pytest.skip("the 'wheel' build dependency is not installed here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = tmp_path.glob("mlof-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for required in ("mlof/__init__.py", "mlof/io.py", "backbones/__init__.py", "mlof/assets/clip.json",
                     "mlof/assets/frame_0001.png", "mlof/assets/flow_frame_0002.flo", "mlof/checkpoints/mlof_default.pt"):
        assert required in names, required
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mlof = mlof.cli:main" in zipfile.ZipFile(whl).read(entry).decode()


def _copy_source_tree(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("mlof", "backbones"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dst / name)
    return dst


@pytest.mark.slow
def test_non_editable_install_loads_the_default_checkpoint_from_another_directory(tmp_path: Path):
    """``pip install .`` (not editable) into a fresh venv (without its own pip/setuptools: the system's, with torch,
    are used through --system-site-packages), then from a folder outside the source tree: the
    installed package (not the source tree) is imported, ``mlof.load("default")`` works, and the README's
    meta-inference command runs (``mlof adapt model.checkpoint=default`` on the bundled clip, one pair)."""
    src = _copy_source_tree(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "wheel" in proc.stderr and "No module named" in proc.stderr:
        pytest.skip("the 'wheel' build dependency is not installed here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.rmtree(src)                   # nothing may still point at the source copy
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    probe = ("import mlof, backbones, pathlib; m = mlof.load('default'); "
             "print(pathlib.Path(mlof.__file__).resolve().is_relative_to(pathlib.Path(r'%s').resolve()), "
             "type(m).__name__)" % venv)
    run = subprocess.run([str(py), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "RAFTSmall"], run.stdout
    cli = subprocess.run([str(venv / "bin" / "mlof"), "adapt", "--quiet", "model.checkpoint=default", "pairs=[1]",
                          "iters=2", "images=false", f"out_dir={elsewhere / 'runs'}", "name=readme"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "EPE after adaptation" in cli.stdout and (elsewhere / "runs" / "readme" / "metrics.json").is_file()
