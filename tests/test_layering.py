"""One direction through the house: the library (zoo/) never imports the application (training/, the CLI), the
application uses only the library's public API (no ``zoo._private`` names), and no package's modules import each
other in a circle."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str = '') -> list[str]:
    """Every module a file imports, each name of a ``from`` import as ``module.name`` (relative imports resolved
    against ``package``, the file's own package), and every ``zoo._x`` attribute the file reaches for. Imports inside
    functions and under ``TYPE_CHECKING`` count: deferring an import hides a dependency, it does not remove it."""
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split('.')[: len(package.split('.')) - node.level + 1] if node.level else []
            module = '.'.join([*base, *([node.module] if node.module else [])])
            names += [f'{module}.{alias.name}' for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'zoo':
            names.append(f'zoo.{node.attr}')
    return names


def import_circle(package: Path) -> list[str]:
    """A circle of imports between the modules of the package in folder ``package`` (``[]`` when there is none):
    ``[a, b, ..., a]``, each importing the next. Every import counts (see ``_imports``); an edge goes to the module
    an imported name belongs to (``from a import f``: ``a``; ``from a import b``, ``b`` a module: ``a.b``)."""
    modules = {}
    for path in package.rglob('*.py'):
        parts = path.relative_to(package.parent).with_suffix('').parts
        modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    graph = {}
    for module, path in modules.items():
        own_package = module if path.name == '__init__.py' else module.rpartition('.')[0]
        targets = set()
        for name in _imports(path, own_package):
            while name and name not in modules:
                name = name.rpartition('.')[0]
            targets.add(name)
        graph[module] = targets - {'', module}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))
    return []


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


def test_import_circle_finds_circles_that_deferred_imports_hide(tmp_path):
    package = tmp_path / 'package'
    (package / 'sub').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'sub' / '__init__.py').write_text('')
    (package / 'errors.py').write_text('class Problem(Exception): ...\n')
    (package / 'schema.py').write_text('from .errors import Problem\nfrom .sub import tasks\n')
    (package / 'sub' / 'tasks.py').write_text('def build():\n    from ..schema import Problem\n')
    assert import_circle(package) == ['package.schema', 'package.sub.tasks', 'package.schema']
    (package / 'sub' / 'tasks.py').write_text('def build():\n    from ..errors import Problem\n')
    assert import_circle(package) == []
    (package / 'errors.py').write_text(
        'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import schema\n'
    )
    assert import_circle(package) == ['package.errors', 'package.schema', 'package.errors']


def test_the_application_imports_in_one_direction():
    assert import_circle(REPO / 'training') == []


def test_the_library_imports_in_one_direction():
    assert import_circle(REPO / 'zoo') == []
