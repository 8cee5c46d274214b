"""Train and serve apart (../shared/DESIGN.md, "Layers"): serving loads no training code and no
torch; training, the servables and the lower layers import nothing of serving."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recstack"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            out.add(base)
    return out


def test_serving_loads_no_training_code_and_no_torch() -> None:
    code = (
        "import sys\n"
        "import recstack.serving.api, recstack.serving.graph, recstack.serving.worker\n"
        "import recstack.serving.service, recstack.servables.bundle\n"
        "train = ('recstack.train', 'recstack.tasks')\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(train)]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"serving loaded: {result.stdout.strip()}"


def test_no_layer_below_serving_imports_it() -> None:
    below = ["train", "tasks", "servables", "models", "layers", "features", "index", "events", "data", "eval"]
    offenders = []
    for folder in below:
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            serving = sorted(m for m in imported_modules(path) if m.startswith("recstack.serving"))
            if serving:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {', '.join(serving)}")
    assert not offenders, "imports of recstack.serving from below it:\n" + "\n".join(offenders)


def test_serving_and_servables_import_no_training_code_even_lazily() -> None:
    offenders = []
    for path in sorted([*(PACKAGE / "servables").rglob("*.py"), *(PACKAGE / "serving").rglob("*.py")]):
        bad = sorted(m for m in imported_modules(path) if m.startswith(("recstack.train", "recstack.tasks")))
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {', '.join(bad)}")
    assert not offenders, offenders
