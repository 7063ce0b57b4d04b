"""The layout of the package, read from the ASTs of tbot/*.py: layers point down (no import cycle, nothing imports `tbot.cli`),
no private names across modules, in-package imports at the top, no module over 600 lines, and `import tbot.cli` works.
Each check is also run on a small synthetic package that breaks it, so each can be seen to fail."""
import ast, subprocess, sys, textwrap
from pathlib import Path
import pytest
from conftest import ROOT

PKG = ROOT / 'tbot'
MAX_LINES = 600
IMPORTERS = ('__import__', 'import_module')  # __import__('tbot.x'), importlib.import_module('tbot.x')

def modules(pkg:Path) -> dict:
    "Module name -> path for every .py file of the package folder `pkg` (its `__init__` is the package itself)."
    name = pkg.name
    return {name if p.stem == '__init__' else f'{name}.{p.stem}': p for p in sorted(pkg.glob('*.py'))}

def _target(node, mod:str, pkg:str, mods:dict) -> list:
    "The (module, imported names) of one import node when it imports from package `pkg`, else []."
    if isinstance(node, ast.Import):
        return [(a.name, [], a.asname) for a in node.names if a.name == pkg or a.name.startswith(pkg + '.')]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod if mod == pkg else mod.rsplit('.', 1)[0]  # every module here sits right under the package
            src = '.'.join(filter(None, [base, node.module]))
        else: src = node.module or ''
        if not (src == pkg or src.startswith(pkg + '.')): return []
        out = []
        for a in node.names:  # `from tbot import data` imports the module tbot.data
            sub = f'{src}.{a.name}'
            out.append((sub, [], a.asname or a.name) if sub in mods else (src, [a.name], None))
        return out
    if isinstance(node, ast.Call) and getattr(node.func, 'id', getattr(node.func, 'attr', None)) in IMPORTERS and node.args \
            and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(pkg):
        return [(node.args[0].value, [], None)]
    return []

def imports(pkg:Path) -> list:
    "Every import of an in-package module: dicts of importer, target, names, alias, line and whether it is inside a def/class."
    mods = modules(pkg); out = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        def walk(node, nested):
            for child in ast.iter_child_nodes(node):
                for tgt, names, alias in _target(child, mod, pkg.name, mods):
                    out.append(dict(importer=mod, target=tgt, names=names, alias=alias, line=child.lineno, nested=nested))
                walk(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)))
        walk(tree, False)
    return out

def graph(pkg:Path) -> dict:
    "Module -> set of in-package modules it imports (anywhere in the file)."
    g = {m: set() for m in modules(pkg)}
    for i in imports(pkg):
        if i['target'] != i['importer'] and i['target'] in g: g[i['importer']].add(i['target'])
    return g

def find_cycle(g:dict) -> list|None:
    "One import cycle of the graph `g` as a list of modules (first == last), or None."
    state, stack = {}, []
    def visit(n):
        state[n] = 'open'; stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 'open': return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = 'done'; stack.pop()
    for n in sorted(g):
        if n not in state and (c := visit(n)): return c
    return None

def _private(name:str) -> bool: return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))

def private_uses(pkg:Path) -> list:
    "Private names taken from another in-package module: `from .x import _y` and `x._y` on an imported module."
    imps = imports(pkg); out = []
    out += [f"{i['importer']}:{i['line']} imports {n} from {i['target']}" for i in imps for n in i['names']
            if _private(n) and i['target'] != i['importer']]
    for mod, path in modules(pkg).items():
        bound = {i['alias'] or i['target']: i['target'] for i in imps if i['importer'] == mod and not i['names'] and i['target'] != mod}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr) and ast.unparse(node.value) in bound:
                out.append(f"{mod}:{node.lineno} uses {ast.unparse(node)} of {bound[ast.unparse(node.value)]}")
    return out

def cli_importers(pkg:Path) -> list:
    "Modules that import the command line module (nothing may: it only dispatches)."
    cli = f'{pkg.name}.cli'
    return sorted({f"{i['importer']}:{i['line']}" for i in imports(pkg) if i['target'] == cli and i['importer'] not in (cli, f'{pkg.name}.__main__')})

def local_imports(pkg:Path) -> list:
    "In-package imports made inside a function or class instead of at the top of the module."
    return sorted(f"{i['importer']}:{i['line']} imports {i['target']}" for i in imports(pkg) if i['nested'])

def long_modules(pkg:Path, limit:int=MAX_LINES) -> list:
    "Modules longer than `limit` lines (not nbdev's generated symbol index, `_modidx`)."
    return [f'{m} has {n} lines' for m, p in modules(pkg).items() if not m.endswith('._modidx') and (n := len(p.read_text().splitlines())) > limit]

# --- the real package -------------------------------------------------------------------------------------------------------

def test_the_import_graph_has_no_cycle():
    g = graph(PKG)
    assert {'tbot.cli', 'tbot.data', 'tbot.config'} <= set(g) and 'tbot.config' in g['tbot.data']  # the graph is really read
    assert find_cycle(g) is None, ' -> '.join(find_cycle(g))

def test_no_private_name_crosses_modules():
    found = private_uses(PKG)
    assert found == [], '\n'.join(found)

def test_nothing_imports_the_cli():
    found = cli_importers(PKG)
    assert found == [], '\n'.join(found)

def test_in_package_imports_sit_at_the_top():
    found = local_imports(PKG)
    assert found == [], '\n'.join(found)

def test_no_module_is_over_600_lines():
    found = long_modules(PKG)
    assert found == [], '\n'.join(found)

def test_import_tbot_cli_works_in_a_fresh_interpreter():
    p = subprocess.run([sys.executable, '-c', 'import tbot.cli'], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0 and p.stderr == '', p.stderr

# --- each check can fail ----------------------------------------------------------------------------------------------------

def fake_package(tmp_path:Path, files:dict) -> Path:
    "A throwaway package `tbot` in `tmp_path` made of `files` (name -> source)."
    pkg = tmp_path / 'tbot'; pkg.mkdir()
    (pkg / '__init__.py').write_text('__version__ = "0"\n')
    for name, src in files.items(): (pkg / f'{name}.py').write_text(textwrap.dedent(src))
    return pkg

def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None
    assert find_cycle({'a': {'a'}}) == ['a', 'a']

def test_each_check_fails_on_a_package_that_breaks_it(tmp_path):
    pkg = fake_package(tmp_path, {
        'config': 'def _hidden(): pass\n',
        'data': 'from .config import _hidden\nfrom . import config as cf\nx = cf._hidden\n',
        'regime': 'import tbot.data\ndef f():\n    from tbot.cli import main\n    return main\n',
        'cli': 'from . import regime\ndef main(): pass\n',
        'big': 'x = 1\n' * (MAX_LINES + 1),
        'lazy': 'def g():\n    return __import__("tbot.big")\n'})
    g = graph(pkg)
    assert g['tbot.data'] == {'tbot.config'} and g['tbot.regime'] == {'tbot.data', 'tbot.cli'} and g['tbot.lazy'] == {'tbot.big'}
    assert find_cycle(g) == ['tbot.cli', 'tbot.regime', 'tbot.cli']
    assert private_uses(pkg) == ['tbot.data:1 imports _hidden from tbot.config', 'tbot.data:3 uses cf._hidden of tbot.config']
    assert cli_importers(pkg) == ['tbot.regime:3']
    assert local_imports(pkg) == ['tbot.lazy:2 imports tbot.big', 'tbot.regime:3 imports tbot.cli']
    assert long_modules(pkg) == [f'tbot.big has {MAX_LINES + 1} lines']

def test_a_clean_package_passes_every_check(tmp_path):
    pkg = fake_package(tmp_path, {'config': 'def hidden(): pass\n', 'data': 'from .config import hidden\nfrom tbot import __version__\n',
                                  'cli': 'from tbot import data\nimport os\ndef main(): return data.hidden, os.path\n'})
    assert find_cycle(graph(pkg)) is None and private_uses(pkg) == cli_importers(pkg) == local_imports(pkg) == long_modules(pkg) == []
