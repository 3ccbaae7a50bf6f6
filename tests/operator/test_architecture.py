"""docs/architecture.md matches the code: a paragraph for every module of both packages, and no module named there
that does not exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"Operator": REPO / "operator" / "finetune_operator", "Trainer": REPO / "trainer_image" / "finetune_trainer"}


def test_every_module_has_a_paragraph_and_every_paragraph_a_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    for heading, root in PACKAGES.items():
        section = page.split(f"## {heading} modules", 1)[1].split("\n## ", 1)[0]
        described = set(re.findall(r"\*\*([\w/]+\.py)\*\*", section))
        modules = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.name != "__init__.py"}
        assert described == modules, (heading, sorted(modules - described), sorted(described - modules))
