"""The layer diagram: which package may import which. Imports run downwards only.

    run.py                       the commands, imported by name when one runs
    tuning                       sweeps of whole training runs on Ray Tune, ranked with the report's metrics
    reporting  perf  experiments what users run on top: reports, benchmarks, the paper's supervised experiments
    training                     the distribution layer: config, schedule, task ids, pacing, strategies, Ray actors, the trainer
    agents                       the DQN agent: networks, losses, Fisher, consolidation, learner, actor; replay, optimiser
    ewc  envs  fmn               the EWC core, the environments, forget-me-not task inference
    common                       errors, result files, figures
"""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

ALLOWED = {
    "common": set(),
    "ewc": {"common"},
    "envs": {"common"},
    "fmn": {"common"},
    "agents": {"common", "ewc", "envs"},
    "training": {"common", "ewc", "envs", "fmn", "agents"},
    "reporting": {"common", "ewc", "envs", "agents", "training"},
    "experiments": {"common", "ewc"},
    "perf": {"common", "ewc", "envs", "fmn", "agents", "training", "experiments"},
    "tuning": {"common", "envs", "agents", "training", "reporting"},
}


def imported_packages(path) -> set[str]:
    """Our top-level packages that a module imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules in {package}/"
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package] - {package})
        for path in modules
    }
    assert not {module: bad for module, bad in offending.items() if bad}


def test_every_package_is_in_the_diagram():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in {"tests", "configs"}}
    assert packages == set(ALLOWED)


def test_run_py_imports_commands_only_by_name():
    assert imported_packages(ROOT / "run.py") <= {"common"}


MAX_CLASS_LINES = 300  # a class past this is two classes
MAX_TRAINER_LINES = 250  # training/loop.py is the loop that wires the trainer's parts, nothing more


def class_sizes(path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def test_no_class_outgrows_a_few_screens_and_the_trainer_stays_small():
    assert dict(class_sizes(ROOT / "perf" / "command.py"))["Bench"] > 100  # it measures real classes
    sources = [path for package in ALLOWED for path in (ROOT / package).rglob("*.py")] + [ROOT / "run.py"]
    too_big = [f"{path.relative_to(ROOT)}: {name} has {lines} lines" for path in sources
               for name, lines in class_sizes(path) if lines > MAX_CLASS_LINES]
    assert not too_big, too_big
    assert len((ROOT / "training" / "loop.py").read_text().splitlines()) <= MAX_TRAINER_LINES
