"""The package's shape: imports only point down the layers (docs/design.md, "Layers"), no import cycle
(function-local imports count, so none can hide one), and domain knowledge and snapshot file names stay
in their modules."""

import ast
import tomllib
from pathlib import Path

import pytest
import torchrl

from mlr_lightning.data.torchrl_internals import CHECKED_AGAINST
from mlr_lightning.domains import DOMAINS

PACKAGE = Path(__file__).resolve().parents[1] / "mlr_lightning"

# Bottom to top: a module may import its own layer's package and anything below, never above. Keep in
# step with docs/design.md. ``plots`` (matplotlib figures) and ``config`` (the loader and the shared
# schema) know nothing of the rest of the package.
LAYERS = [
    {"config", "plots"},
    {"run_identity"},
    {"envs"},
    {"data"},
    {"models"},
    {"mlr"},
    {"agents"},
    {"domains"},
    {"training"},
    {"reporting"},
    {"sweep"},
    {"cli"},
    {"__main__"},
]


def module_name(path: Path) -> str:
    parts = ["mlr_lightning", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mlr_lightning"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name for name in names if name in MODULES} | ({node.module} & MODULES.keys())
            if any(name not in MODULES for name in names) and node.module in MODULES:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{module}: relative import; the package imports by absolute name")
    return found - {module}


GRAPH = {module: imports_of(module) for module in MODULES}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else None
    if top is None:  # the package itself: torch/tensordict/torchrl import order only, below everything
        return -1
    matches = [i for i, names in enumerate(LAYERS) if top in names]
    assert matches, f"{module} belongs to no layer: add its package to LAYERS and to docs/design.md"
    return matches[0]


def test_every_module_has_a_layer_and_the_graph_sees_real_imports():
    for module in MODULES:
        layer(module)
    # The walk finds what is there: a top-level and a function-local import.
    assert "mlr_lightning.domains" in GRAPH["mlr_lightning.training.experiment"]
    assert "mlr_lightning.sweep.runner" in GRAPH["mlr_lightning.cli"]  # imported inside run_sweep


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or of another package of the same layer."""
    return [f"{module} -> {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer(target) > layer(module)
            or (layer(target) == layer(module) and target.split(".")[1] != module.split(".")[1])]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a depth-first search), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done and (cycle := visit(target, [*path, target])):
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module, [module])):
            return cycle
    return None


def test_imports_only_point_down_the_layers():
    assert upward_imports(GRAPH) == []


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    """The cycle the package once had (config -> domains -> training -> config) and its upward import."""
    graph = {**GRAPH, "mlr_lightning.config": {"mlr_lightning.domains"},
             "mlr_lightning.domains": {"mlr_lightning.training.snapshot"},
             "mlr_lightning.training.snapshot": {"mlr_lightning.config"}}
    assert find_cycle(graph) == ["mlr_lightning.config", "mlr_lightning.domains", "mlr_lightning.training.snapshot",
                                 "mlr_lightning.config"]
    assert upward_imports(graph)[:2] == ["mlr_lightning.config -> mlr_lightning.domains",
                                         "mlr_lightning.domains -> mlr_lightning.training.snapshot"]


def test_config_knows_no_domain():
    source = MODULES["mlr_lightning.config"].read_text()
    assert not GRAPH["mlr_lightning.config"], "config imports nothing of the package"
    for name in DOMAINS:
        assert f'"{name}"' not in source
    for domain in DOMAINS.values():
        assert domain.schema.__module__ == type(domain).__module__, "a domain's schema lives in its own module"


@pytest.mark.parametrize("needle", [*(f'"{name}"' for name in DOMAINS), "stream-rank", "last.ckpt"])
def test_domain_names_and_snapshot_file_names_stay_in_their_modules(needle):
    """Outside domains/ nothing names a domain; outside training/snapshot.py nothing names a snapshot file."""
    allowed = {PACKAGE / "training" / "snapshot.py"}
    found = [f"{path.relative_to(PACKAGE)}:{number}" for path in MODULES.values()
             if path.parent != PACKAGE / "domains" and path not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert found == []


def test_torchrl_is_the_version_its_internals_were_checked_against():
    """data/torchrl_internals.py reaches into TorchRL's private attributes: an upgrade fails here, in one
    place, until that file is re-checked and CHECKED_AGAINST moves with the pin."""
    requirements = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    torchrl_requirement = next(r for r in requirements if r.startswith("torchrl"))
    assert torchrl_requirement.startswith((f"torchrl=={CHECKED_AGAINST}", f"torchrl>={CHECKED_AGAINST}"))
    assert torchrl.__version__.split("+")[0] == CHECKED_AGAINST
