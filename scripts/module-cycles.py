#!/usr/bin/env python3
"""Module cycles of a Rust crate: the module dependency graph from its `use` lines and its
`crate::`/`super::`/`self::` paths (test modules excluded; a path through the crate root's
re-exports counts for the module that defines the item), and its cycles (strongly connected
components of more than one module). A light stand-in for `cargo modules dependencies
--acyclic`, whose build takes long; `-v` prints every edge.

    scripts/module-cycles.py crates/feather-svc/src [-v]

Exit status 1 if there is a cycle."""
import os, re, sys
src = sys.argv[1]
mods = {}
for root, dirs, files in os.walk(src):
    dirs[:] = [d for d in dirs if not (root == src and d == 'bin')]
    for f in files:
        if not f.endswith('.rs'): continue
        p = os.path.join(root, f); rel = os.path.relpath(p, src)[:-3]
        parts = rel.split('/')
        if parts[-1] in ('lib', 'main', 'mod'): parts = parts[:-1]
        if parts and parts[-1] == 'tests': continue  # test modules
        mods[tuple(parts)] = p
def strip_tests(text):
    i = text.find('#[cfg(test)]')
    return text if i < 0 else text[:i]
# The crate root's re-exports (`pub use error::SvcError`): a path through them depends on the
# module that defines the item, not on the root.
reexports = {}
lib = os.path.join(src, 'lib.rs')
if not os.path.exists(lib):
    lib = os.path.join(src, 'main.rs')
for g in re.finditer(r'pub use (\w+)::\{?([\w, ]+)\}?;', open(lib).read()):
    for item in g.group(2).split(','):
        reexports[item.strip()] = g.group(1)
def resolve(cur, path):
    segs = path.split('::')
    if segs[0] == 'crate' and len(segs) > 1 and segs[1] in reexports:
        segs = ['crate', reexports[segs[1]]] + segs[2:]
    if segs[0] == 'crate': base = (); segs = segs[1:]
    elif segs[0] == 'super':
        base = cur
        while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
    elif segs[0] == 'self': base = cur; segs = segs[1:]
    else: return None
    best = base
    for s in segs:
        if base + (s,) in mods: base = base + (s,); best = base
        else: break
    return best
edges = {m: set() for m in mods}
for m, p in mods.items():
    text = strip_tests(open(p).read())
    text = re.sub(r'//[^\n]*', '', text)
    # expand `use x::{a, b::c}` groups one level
    for g in re.finditer(r'\buse\s+((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}', text):
        for item in g.group(2).split(','):
            item = item.strip().split(' as ')[0]
            if item and item != 'self': t = resolve(m, g.group(1) + '::' + item.replace('*', 'x'))
            else: t = resolve(m, g.group(1))
            if t is not None and t != m: edges[m].add(t)
    # `use child::…` (a path relative to the module itself)
    for g in re.finditer(r'\buse\s+(\w+)::', text):
        if m + (g.group(1),) in mods: edges[m].add(m + (g.group(1),))
    for g in re.finditer(r'\b((?:crate|super|self)(?:::(?:\w+|\*))+)', text):
        t = resolve(m, g.group(1).replace('*', 'x'))
        if t is not None and t != m: edges[m].add(t)
# Tarjan
index = {}; low = {}; stack = []; on = set(); sccs = []; n = [0]
def strong(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        sccs.append(c)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index: strong(v)
name = lambda m: '::'.join(('crate',) + m)
cycles = [c for c in sccs if len(c) > 1]
if '-v' in sys.argv:
    for m in sorted(edges):
        print(name(m), '->', ', '.join(sorted(name(t) for t in edges[m])))
print(f'{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(cycles)} cycles')
for c in cycles: print('cycle:', ' <-> '.join(sorted(name(m) for m in c)))
sys.exit(1 if cycles else 0)
