"""The package layout stays true: imports run one way, with no cycles.

data -> model -> {train, transfer, eval}; config imports nothing of ours;
demo (the ``make demo`` app) may use everything and nothing imports it.
Read from the source with ``ast``, so no module has to be importable.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'deepcontext')

# What each room may import from (besides itself).
ALLOWED = {
    'config': set(),
    'data': set(),
    'model': {'data'},
    'train': {'data', 'model', 'config'},
    'transfer': {'data', 'model'},
    'eval': {'data', 'model'},
    'demo': {'config', 'data', 'model', 'train', 'transfer', 'eval'},
}
# Private pycaffe calls live in model/pycaffe.py alone.
PRIVATE_CALLS = ('_forward', '_backward', '_layer_names', '_gpu_data_ptr')


def modules():
    """{'deepcontext.data.loader': path, ...} for every module we ship."""
    found = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                found[rel[:-len('.__init__')] if rel.endswith('__init__')
                      else rel] = path
    return found


def imports(path, module):
    """(imported deepcontext module, line, at module level?) of a file."""
    tree = ast.parse(open(path).read(), path)
    top = set(id(node) for node in tree.body)
    package = module if path.endswith('__init__.py') else \
        module.rpartition('.')[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.'))
                                           - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            names = [base + '.' + a.name for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.startswith('deepcontext.'):
                out.append((name, node.lineno, id(node) in top))
    return out


def room(module):
    """'data', 'model', ... of 'deepcontext.data.loader'; 'config', 'demo'."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def graph():
    mods = modules()
    edges = {}
    for module, path in mods.items():
        edges[module] = set()
        for name, line, _ in imports(path, module):
            # 'deepcontext.data.batches' or 'deepcontext.data' + attribute
            target = name if name in mods else name.rpartition('.')[0]
            if target in mods and target != module:
                edges[module].add(target)
    return mods, edges


def test_every_module_is_in_a_room():
    for module in modules():
        assert room(module) in ALLOWED or module == 'deepcontext', module


@pytest.mark.parametrize('module', sorted(modules()))
def test_imports_run_one_way(module):
    mods = modules()
    here = room(module)
    for name, line, _ in imports(mods[module], module):
        there = room(name)
        if there is None or there == here or module == 'deepcontext':
            continue
        assert there in ALLOWED[here], (
            '%s:%d imports %s: %s may not import from %s'
            % (module, line, name, here, there))


def test_nothing_imports_the_demo():
    mods, edges = graph()
    for module, targets in edges.items():
        assert 'deepcontext.demo' not in targets, module


def test_no_import_cycles():
    mods, edges = graph()
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in edges[node]:
            if state.get(nxt) == 'open':
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError('import cycle: ' + ' -> '.join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_our_imports_are_at_module_level():
    """No lazy imports of our own modules (they hid a cycle before)."""
    for module, path in modules().items():
        for name, line, at_top in imports(path, module):
            assert at_top, '%s:%d imports %s inside a function' % (
                path, line, name)


def test_private_pycaffe_calls_only_in_the_adapter():
    adapter = os.path.join(PACKAGE, 'model', 'pycaffe.py')
    for module, path in modules().items():
        if path == adapter:
            continue
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in PRIVATE_CALLS, (
                    '%s:%d calls pycaffe privately (%s): use model.pycaffe'
                    % (path, node.lineno, node.attr))


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: an eval import inside data is reported."""
    bad = tmp_path / 'bad.py'
    bad.write_text('from deepcontext.eval import features\n')
    found = imports(str(bad), 'deepcontext.data.bad')
    assert any(room(name) == 'eval' for name, _, _ in found)
    assert 'eval' not in ALLOWED['data']


def test_docs_layout_names_every_module_and_tool():
    """docs/layout.md is the one list of modules: it must stay complete."""
    text = open(os.path.join(ROOT, 'docs', 'layout.md')).read()
    for module, path in modules().items():
        name = os.path.basename(path)
        if name == '__init__.py':
            continue
        assert '`%s`' % name in text, '%s is not in docs/layout.md' % path
    for name in os.listdir(os.path.join(ROOT, 'tools')):
        if name.endswith('.py'):
            assert '`%s`' % name in text, \
                'tools/%s is not in docs/layout.md' % name
