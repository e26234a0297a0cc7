"""How many autograd nodes a training step's graph holds: a count that, unlike time on a
shared machine, does not drift, and what the autograd engine's own cost scales with."""

from __future__ import annotations


def autograd_nodes(output) -> int:
    """The distinct autograd nodes (backward functions, AccumulateGrad included) that
    ``output.backward()`` would run."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(parent for parent, _ in node.next_functions)
    return len(seen)
