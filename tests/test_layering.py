"""One direction through the house: the library (zoo/) never imports the application (training/, the CLI), and
the application uses only the library's public API (no ``zoo._private`` names)."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    """Every module a file imports, and every ``zoo._x`` attribute it reaches for."""
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'zoo':
            names.append(f'zoo.{node.attr}')
    return names


def test_the_library_never_imports_the_application():
    offenders = [
        f'{path.relative_to(REPO)}: {name}'
        for path in sorted(REPO.glob('zoo/**/*.py'))
        for name in _imports(path)
        if name == 'training' or name.startswith('training.')
    ]
    assert not offenders, offenders


def test_importing_the_whole_library_loads_no_application_module():
    modules = [p.relative_to(REPO).with_suffix('').as_posix().replace('/', '.') for p in REPO.glob('zoo/**/*.py')]
    modules = [m.removesuffix('.__init__') for m in modules]
    script = (
        f'import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n'
        "print([m for m in sys.modules if m == 'training' or m.startswith('training.')])"
    )
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == '[]'


def test_the_application_uses_only_public_library_names():
    offenders = []
    for path in sorted([*REPO.glob('training/**/*.py'), *REPO.glob('benchmarks/*.py'), REPO / 'hubconf.py']):
        for name in _imports(path):
            parts = name.split('.')
            if parts[0] == 'zoo' and any(part.startswith('_') for part in parts[1:]):
                offenders.append(f'{path.relative_to(REPO)}: {name}')
    assert not offenders, offenders
