"""One direction through the house: the library (zoo/) never imports the application (training/, the CLI), the
application uses only the library's public API (no ``zoo._private`` names), and inside a package every
dependency runs one way (no import circles)."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def import_circles(package: Path) -> list[list[str]]:
    """The import circles among the modules of a package folder (each a sorted list of module names).

    Every import statement counts, at module level or inside a function (a deferred import only hides a
    circle). ``from . import x`` depends on the module ``x`` when there is one, otherwise on the package that
    holds the name; importing a module's parent packages first is Python's doing, not a dependency."""
    package = Path(package)

    def module_name(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix('').parts
        return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

    files = {module_name(p): p for p in package.rglob('*.py')}

    def resolve(name: str) -> str | None:  # the module that defines ``name``: itself, or the nearest package
        while name and name not in files:
            name = name.rpartition('.')[0]
        return name or None

    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
                    base = '.'.join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets.update(resolve(f'{base}.{alias.name}') for alias in node.names)
        graph[name] = targets - {None, name}

    # Tarjan's strongly connected components: each component of more than one module is a circle.
    index, low, stack, circles = {}, {}, [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_the_library_has_no_import_circles():
    assert import_circles(REPO / 'zoo') == []


def test_import_circles_are_found(tmp_path):
    package = tmp_path / 'pkg'
    (package / 'sub').mkdir(parents=True)
    (package / '__init__.py').write_text('from . import a\n')
    (package / 'a.py').write_text('from .sub import b\n')
    (package / 'sub' / '__init__.py').write_text('')
    (package / 'sub' / 'b.py').write_text('def late():\n    from ..a import x\n')  # deferred: still a circle
    (package / 'c.py').write_text('import pkg.a\nfrom . import __version__\n')  # one way: no circle
    assert import_circles(package) == [['pkg.a', 'pkg.sub.b']]


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
