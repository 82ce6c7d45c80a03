"""MkDocs hook: the configuration reference, generated at build time from the typed schema.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``; this hook replaces it
with :func:`dfad_lightning.tasks.schema.reference` of the default config, so that the page
cannot drift from the rules the code checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Fill the configuration page's marker with the generated reference."""
    if MARKER not in markdown:
        return markdown
    from hydra import compose, initialize_config_dir

    from dfad_lightning.tasks.schema import reference

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train")
    return markdown.replace(MARKER, reference(cfg))
