"""The architecture's rules: who may import whom, an engine free of Ray and pandas, caches keyed by
the code that wrote them, renamed config keys that say their new name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tune_distill import make_config
from tune_distill.core.errors import UserError

from conftest import REPO

PACKAGE = REPO / "tune_distill"
# ../shared/DESIGN.md: cli -> tune, recipe; tune -> recipe; recipe -> methods, evaluate, nets, data;
# methods -> nets, sparse, data; evaluate -> nets, data; nets -> sparse; everyone -> core;
# sparse and data -> core only.
ALLOWED = {
    "cli": {"tune", "recipe"}, "tune": {"recipe"}, "recipe": {"methods", "evaluate", "nets", "data"},
    "methods": {"nets", "sparse", "data"}, "evaluate": {"nets", "data"}, "nets": {"sparse"},
    "sparse": set(), "data": set(), "core": set(), "__init__": {"recipe", "tune"},
}


def _internal_imports(path: Path) -> set[str]:
    """The top-level tune_distill packages a module imports (relative or absolute)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    here = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tune_distill."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tune_distill.")}
    return found


def test_every_module_imports_only_what_the_layering_allows():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        layer = parts[0]
        for target in _internal_imports(path) - {layer, "core"}:
            if target not in ALLOWED[layer]:
                broken.append(f"{path.relative_to(REPO)} imports {target}")
    assert not broken


def test_the_engine_loads_neither_ray_nor_pandas_nor_the_search():
    # Every module below tune/ and cli.py, found by walking the package: a new module is checked
    # without anyone adding it to a list.
    engine = sorted(".".join(("tune_distill",) + p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                    for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("tune", "cli.py"))
    assert "tune_distill.recipe.artifacts" in engine and "tune_distill.sparse.minkowski" in engine
    code = ("import importlib, sys\n"
            f"for name in {engine!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'pandas', 'optuna')\n"
            "       or m.startswith(('tune_distill.tune', 'tune_distill.cli'))]\n"
            "print(','.join(bad))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_a_cache_entry_written_by_other_code_is_not_reused(tmp_path):
    # The same call in a copy of the package whose distillation loop differs by one line: its
    # cache key, and so its entry, is another one; the original code's entry is not read by it.
    copy = tmp_path / "other"
    shutil.copytree(PACKAGE, copy / "tune_distill", ignore=shutil.ignore_patterns("__pycache__"))
    loop = copy / "tune_distill" / "methods" / "loop.py"
    loop.write_text(loop.read_text() + "\n# another version of the loop\n")
    code = ("import json, sys, torch\n"
            "from tune_distill.core.cache import cache_path, cached\n"
            "from tune_distill.core.types import Clouds\n"
            "from tune_distill.recipe.run import STAGE_CODE\n"
            "clouds = Clouds(torch.zeros(3, 3, dtype=torch.int16), torch.tensor([0, 1, 3]), torch.tensor([0, 1]))\n"
            "path = cache_path('stages', {'lr': 0.1}, clouds, STAGE_CODE)\n"
            "value = cached(path, lambda: sys.argv[1])\n"
            "print(json.dumps([str(path), value]))\n")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}

    def call(root: Path, tag: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", code, tag], capture_output=True, text=True, cwd=root,
                              env=env | {"PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr
        import json

        return json.loads(proc.stdout)

    original = call(REPO, "written by this code")
    assert call(REPO, "again") == original  # the same code finds its own entry
    other = call(copy, "written by other code")
    assert other[0] != original[0] and other[1] == "written by other code"  # not the stale entry
    assert call(REPO, "third") == original


def test_a_renamed_config_key_names_its_new_name():
    with pytest.raises(UserError, match="config key 'objective' is now called 'matching'"):
        make_config({"objective": "distribution"})
    assert make_config({"matching": "distribution"}).matching == "distribution"


def test_point_network_options_are_checked_together():
    with pytest.raises(UserError, match="family=pointnet .* encoding=points"):
        make_config({"family": "pointnet"})
    with pytest.raises(UserError, match="snap_final works on image datasets"):
        make_config({"dataset": "modelnet10", "snap_final": True}, preset="modelnet10-quick")
    with pytest.raises(UserError, match="init=full .* iterations=0"):
        make_config({"init": "full"}, preset="modelnet10-quick")
