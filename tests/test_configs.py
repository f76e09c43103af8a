"""Published configs stand on their own: every file in configs/ sets every config key (no preset
under it, so editing a CPU preset cannot move a published row), and every table row resolves to
the config.yaml shipped with its cells."""

from __future__ import annotations

import pytest
import yaml

from tune_distill import Config, make_config
from tune_distill.recipe.config import load_config_file
from tune_distill.recipe.table import cell_dir, load_table

from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TABLES = sorted((REPO / "tables").glob("*.yaml"))
DEFAULTS = Config().model_dump()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_published_config_sets_every_key_and_builds_on_no_preset(path):
    values = load_config_file(path)
    assert "preset" not in values
    assert set(values) == set(Config.model_fields) - {"seed"}
    assert make_config(values).model_dump() == {**values, "seed": 0}


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_every_table_row_resolves_to_the_config_shipped_with_its_cells(path):
    spec = load_table(path)
    root = REPO / "distilled" / spec.name
    checked = 0
    for row in spec.rows:
        for ipc in spec.ipcs:
            for seed in spec.seeds:
                shipped = cell_dir(root, row, ipc, seed) / "config.yaml"
                if row.runs_at(ipc) and shipped.is_file():
                    # Keys added since a cell was run are absent from its file: they had their defaults.
                    assert spec.config(row, ipc, seed).model_dump() == DEFAULTS | yaml.safe_load(shipped.read_text()), shipped
                    checked += 1
    assert checked or spec.name == "ablation"
