"""Pure graph algorithms over ``{node: [dependencies]}`` maps. No I/O, all linear time.

Edges point from a step to the steps it depends on. Unknown dependencies are ignored here; they
are reported by validation.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

Graph = Mapping[str, Sequence[str]]


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a closed path ``[a, b, c, a]``) per strongly connected component.

    Self-dependencies are left to the caller. Uses an iterative Tarjan so that a 100,000-step
    chain cannot overflow the stack.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    # Each node's usable dependencies, computed once: recomputing them on every visit would
    # make a step with thousands of dependencies quadratic.
    edges = {
        node: [d for d in deps if d in graph and d != node] for node, deps in graph.items()
    }
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge_i = work.pop()
            if edge_i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = edges[node]
            if edge_i < len(deps):
                work.append((node, edge_i + 1))
                dep = deps[edge_i]
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    order = {node: i for i, node in enumerate(graph)}
    cycles = [_cycle_in(graph, set(c), min(c, key=order.__getitem__)) for c in components]
    return sorted(cycles, key=lambda cycle: order[cycle[0]])


def _cycle_in(graph: Graph, members: set[str], start: str) -> list[str]:
    """Shortest closed path from ``start`` back to itself inside one component (BFS)."""
    parent: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following: list[str] = []
        for node in frontier:
            for dep in graph.get(node, ()):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    path.reverse()
                    return [*path, start]
                if dep in members and dep not in seen:
                    seen.add(dep)
                    parent[dep] = node
                    following.append(dep)
        frontier = following
    return [start, start]  # unreachable for a real component


def topological_order(graph: Graph) -> list[str]:
    """Dependencies first; among ready nodes, the one declared first. Raises on a cycle."""
    position = {node: i for i, node in enumerate(graph)}
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    waiting: dict[str, int] = {}
    for node, deps in graph.items():
        known = {d for d in deps if d in graph}
        waiting[node] = len(known)
        for dep in known:
            dependents[dep].append(node)
    ready = [(position[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for child in dependents[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(order) != len(graph):
        raise ValueError("graph has a cycle")
    return order


def levels(graph: Graph) -> list[list[str]]:
    """Nodes grouped by the length of their longest dependency chain: what can start together."""
    depth: dict[str, int] = {}
    for node in topological_order(graph):
        depth[node] = 1 + max((depth[d] for d in graph[node] if d in depth), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in graph:
        grouped[depth[node]].append(node)
    return grouped


def descendants(graph: Graph, roots: Iterable[str]) -> set[str]:
    """Every node that depends, directly or not, on one of ``roots`` (roots excluded)."""
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            if dep in dependents:
                dependents[dep].append(node)
    found: set[str] = set()
    frontier = [r for r in roots if r in dependents]
    while frontier:
        node = frontier.pop()
        for child in dependents[node]:
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def critical_path(graph: Graph, duration: Mapping[str, float]) -> float:
    """The longest sum of durations along any dependency chain: the best possible makespan."""
    finish: dict[str, float] = {}
    for node in topological_order(graph):
        start = max((finish[d] for d in graph[node] if d in finish), default=0.0)
        finish[node] = start + duration[node]
    return max(finish.values(), default=0.0)
