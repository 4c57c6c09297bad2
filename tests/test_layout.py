"""The package's layout keeps its promises (issue 18): no import cycles, no module over 500 lines,
analysis and the core values import no torch, and a model family is one file."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO
from sweeper.experiments.train.loop import run_trial
from sweeper.experiments.train.model import build_model, count
from sweeper.experiments.train.spec import TrainSpec
from sweeper.experiments.train.subsets import SUBSETS
from sweeper.models import FAMILIES, Family
from sweeper.models.roles import LayerRoles

PACKAGE = REPO / "sweeper"

# Known cycles (none today: phase 2 of issue 18 removed the last, sweeper.data <-> imagenet_stream).
CYCLE_EXEMPT: list[set[str]] = []

# Modules allowed over 500 lines: none since phase 2 of issue 18.
LENGTH_EXEMPT: set[str] = set()
MAX_LINES = 500


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions. A package's
    `__init__` is its own node. `from X import name` depends on module X.name when that is a
    module, else on X itself (the parent packages Python runs on the way are not edges)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                subs = [f"{module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules]
                if len(targets) < len(subs):
                    targets.append(module)
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    graph = import_graph()
    assert "sweeper.experiments" in graph["sweeper.trial"]  # a module-level import
    assert "sweeper.experiments.train.model" in graph["sweeper.experiments.train.spec"]  # inside a method


def test_no_import_cycles_inside_the_package():
    found = [c for c in cycles(import_graph()) if c not in CYCLE_EXEMPT]
    assert found == []


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert {k: v for k, v in long.items() if k not in LENGTH_EXEMPT} == {}


def ray_imports(tree: ast.AST) -> list[int]:
    """Line numbers of the imports of `ray` or any `ray.*` module, at module level or inside a
    function (absolute imports only: a relative import is the package's own)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(n == "ray" or n.startswith("ray.") for n in names):
            lines.append(node.lineno)
    return lines


def test_the_ray_import_finder_sees_every_form():
    code = "import os\nimport ray\ndef f():\n    from ray import tune\n    import ray.util as u\n" \
           "class C:\n    def g(self):\n        from ray.tune.search import optuna\nimport raytracer\n"
    assert ray_imports(ast.parse(code)) == [2, 4, 5, 8]


def test_only_the_orchestration_package_imports_ray():
    """Ray stays behind one door (issue 18): sweeper.orchestration. Bench and slurm call into it."""
    modules = _modules()
    outside = {name: found for name, (path, _) in modules.items()
               if not (name == "sweeper.orchestration" or name.startswith("sweeper.orchestration."))
               and (found := ray_imports(ast.parse(path.read_text())))}
    assert outside == {}
    inside = [name for name, (path, _) in modules.items()
              if name.startswith("sweeper.orchestration.") and ray_imports(ast.parse(path.read_text()))]
    assert {"sweeper.orchestration.sweep", "sweeper.orchestration.connect"} <= set(inside)


def test_analysis_report_and_the_core_never_import_torch_or_ray():
    analysis = sorted(m for m in _modules() if m.startswith("sweeper.analysis"))
    report = sorted(m for m in _modules() if m.startswith("sweeper.report"))
    core = ["sweeper", "sweeper.errors", "sweeper.registry", "sweeper.spec", "sweeper.callspec", "sweeper.study",
            "sweeper.store", "sweeper.version", "sweeper.trial", "sweeper.experiment", "sweeper.experiments",
            "sweeper.seeds", "sweeper.preflight"]
    assert len(analysis) >= 10 and len(report) >= 6
    code = (f"import importlib, sys\nfor m in {analysis + report + core!r}: importlib.import_module(m)\n"
            "from sweeper.analysis import figures\nfigures()\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


# -- a model family is one file ------------------------------------------------------------------------
class TwoBranchNet(nn.Module, LayerRoles):
    """A family whose layer names follow none of the shipped families' conventions: a stem conv
    and a 1x1 skip conv, each with a norm, summed, pooled, and a classifier named `head`."""

    def __init__(self, depth, width, act, norm, in_channels, num_classes, input_size, residual_init):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_norm = norm(width)
        self.act = act()
        self.skip = nn.Conv2d(in_channels, width, 1, bias=False)
        self.skip_norm = norm(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem_norm(self.stem(x))) + self.skip_norm(self.skip(x))
        return self.head(torch.flatten(self.pool(h), 1))

    def output_layer_names(self) -> list[str]:
        return ["head"]

    def shortcut_layer_names(self) -> list[str]:
        return ["skip"]

    def stage_of(self, norm_layer: str) -> tuple[int, int, str]:
        return {"stem_norm": (1, 0, "main"), "skip_norm": (1, 0, "skip")}[norm_layer]


@pytest.fixture
def two_branch(monkeypatch):
    family = Family(TwoBranchNet, default_width=4, norm_dims=2, check=lambda depth, width: None,
                    short_name=lambda depth, width: f"twobranch-{depth}-{width}")
    monkeypatch.setitem(FAMILIES._entries, "twobranch", family)  # registered for this test only
    return {"family": "twobranch", "depth": 1, "width": 4, "dataset": "digits"}


def test_a_family_declaring_its_roles_gets_subsets_counts_and_bn_stages(two_branch):
    spec = TrainSpec.from_values({**two_branch, "trainable": "bn"})
    assert spec.model == "twobranch-1-4"
    model = build_model(spec)
    select = lambda subset: set(SUBSETS[subset].select(model, 1, 0))  # noqa: E731
    assert select("bn") == {"stem_norm.weight", "stem_norm.bias", "skip_norm.weight", "skip_norm.bias"}
    assert select("output") == {"head.weight", "head.bias"}
    assert select("shortcut") == {"skip.weight"}
    assert select("random") == {"stem.weight", "skip.weight"}  # the features, not the classifier

    c = count(spec)  # what `sweeper params` prints
    assert c == {"total": 9 * 4 + 4 + 2 * 8 + (4 * 10 + 10), "batchnorm": 16, "output": 50, "shortcut": 4,
                 "trainable": 16}
    assert count(TrainSpec.from_values({**two_branch, "trainable": "random", "random_k": 1}))["trainable"] == 8

    result = run_trial(TrainSpec.from_values({**two_branch, "trainable": "bn", "epochs": 1, "measure": ["bn"],
                                              "train_size": 100, "test_size": 50, "batch_size": 50,
                                              "augment": "none"}), threads=1)
    layers = result.tables["bn"].drop_duplicates("layer")[["layer", "stage", "block", "role"]]
    assert layers.values.tolist() == [["stem_norm", 1, 0, "main"], ["skip_norm", 1, 0, "skip"]]
    assert result.row["shortcut_params"] == 4 and result.row["output_params"] == 50
