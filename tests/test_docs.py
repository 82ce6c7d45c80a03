"""The documentation: the site builds strictly, and the rules the guide issue set for the code and tests hold."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import CONF, ROOT

from dfad_lightning.rules import Rule
from dfad_lightning.tasks.schema import SCHEMA, reference


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_link_and_reference(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "system.learning.steps" in page and "config-reference" not in page  # the marker was filled
    assert "DFAD" in (tmp_path / "site" / "reference" / "api" / "index.html").read_text()


def test_the_configuration_reference_documents_every_rule(make_cfg):
    text = reference(make_cfg(tiny=False))
    for rule in SCHEMA:
        assert f"| `{rule.key}` |" in text, rule.key
        assert rule.doc, f"{rule.key} has no doc line for the reference"
    assert "| `data.batch_size` | `128` | an integer, at least 2 (BatchNorm needs 2 samples) |" in text
    assert "| `system.learning.replay_size` | `4096` |" in text  # the embedded default's recipe
    row = next(line for line in text.splitlines() if line.startswith("| `system.objective.activation`"))
    assert "set by the options that use it" in row


def test_a_rule_s_table_cell_escapes_pipes():
    from omegaconf import OmegaConf

    text = reference(OmegaConf.create({"x": "a|b"}), [Rule("x", str, choices=("a|b",), doc="one | two")])
    assert "one \\| two" in text and "a\\|b" in text


def test_no_test_module_imports_another():
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.split(".")[0].startswith("test_") for n in names), f"{path.name} imports {names}"


def test_the_recipe_config_fits_on_a_screen():
    lines = (CONF / "recipe" / "robust.yaml").read_text().splitlines()
    assert sum(line.lstrip().startswith("#") for line in lines) <= 10 and len(lines) <= 40


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "../shared" not in readme
    dates = re.findall(r"20\d\d-\d\d-\d\d", readme)
    footnotes = [line for line in readme.splitlines() if line.startswith(("¹", "Measured"))]
    assert all(any(d in f for f in footnotes) for d in dates), "dates only in the results table's footnote"
