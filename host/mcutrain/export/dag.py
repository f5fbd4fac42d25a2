"""A traced graph (torch.fx, ONNX) of layers and adds -> mcutrain's Sequential/Residual tree.

The frontends turn each source node into an Op: a run of mcutrain layer nodes, or an add of two
activations. A chain becomes a Sequential; a value used twice must meet itself again at one
add, which becomes Residual(body = the add's first input, shortcut = its second, or the
identity when that input is the value itself). Any other shape (a value used three times,
branches that cross, an add of unrelated values) is refused with the node's position.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..formats.spec import Node, SpecError


class UnsupportedOpError(SpecError):
    """A source node (operator, attribute or graph shape) mcutrain cannot represent."""


@dataclass
class Op:
    position: int  # index in the source graph ("node 7")
    op: str  # the source's operator name: "Conv", "Sigmoid", "layer2.act (Sigmoid)"
    name: str  # its name in the source: "/layer2/act/Sigmoid", an fx node name
    inputs: list[str]  # activation values read (constants are not values here)
    output: str
    layers: list[Node] = field(default_factory=list)  # empty for an add
    is_add: bool = False


def refuse(what: str, position: int, op: str, name: str, why: str) -> UnsupportedOpError:
    """"node 7 'Sigmoid' (/layer2/act/Sigmoid) is not supported: ..." style errors."""
    where = f" ({name})" if name and name != op else ""
    return UnsupportedOpError(f"{what} {position} '{op}'{where} {why}")


def build_tree(ops: list[Op], graph_input: str, graph_output: str, what: str = "node") -> Node:
    """The Sequential computing graph_output from graph_input through ops (topologically
    sorted, as torch.fx and ONNX keep them)."""
    consumers: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        for v in dict.fromkeys(op.inputs):
            consumers[v].append(op)
    index = {id(op): i for i, op in enumerate(ops)}
    reach: dict[int, set[int]] = {}  # op index -> indices of ops reachable from it (incl. it)
    for i in range(len(ops) - 1, -1, -1):
        r = {i}
        for c in consumers[ops[i].output]:
            r |= reach[index[id(c)]]
        reach[i] = r

    def bad(op: Op, why: str) -> UnsupportedOpError:
        return refuse(what, op.position, op.op, op.name, why)

    def merge_of(v: str, cons: list[Op]) -> Op:
        # The first add reachable from both branches is where they meet (its post-dominator
        # in a well-formed residual block; checked below by the branches' disjointness).
        both = reach[index[id(cons[0])]] & reach[index[id(cons[1])]]
        adds = [i for i in sorted(both) if ops[i].is_add]
        if not adds:
            raise bad(cons[1], "is not supported here: its input is also used by "
                      f"{what} {cons[0].position} and the two branches never meet at an add")
        return ops[adds[0]]

    def branch(v: str, end: str, merge: Op) -> list[Node]:
        starts = [c for c in consumers[v] if c is not merge
                  and (c.output == end or index[id(producer[end])] in reach[index[id(c)]])]
        if len(starts) != 1:
            raise bad(merge, "is not supported: its inputs are not two separate branches "
                      "from one value (only residual blocks are)")
        first = starts[0]
        if first.is_add:
            raise bad(first, "is not supported here: a residual block starting inside another "
                      "one's first layer (put a layer between them)")
        return list(first.layers) + chain(first.output, end)

    def chain(v: str, end: str) -> list[Node]:
        layers: list[Node] = []
        while v != end:
            cons = consumers[v]
            if len(cons) == 1 and not cons[0].is_add:
                layers += cons[0].layers
                v = cons[0].output
                continue
            if len(cons) == 1:
                raise bad(cons[0], "is not supported: it adds two values that are not the "
                          "two branches of a residual block")
            if len(cons) != 2:
                raise bad(cons[2], f"is not supported: a value used by {len(cons)} nodes "
                          "(only the two branches of a residual block may share one)")
            merge = merge_of(v, cons)
            first, second = merge.inputs
            body = branch(v, first, merge) if first != v else []
            short = branch(v, second, merge) if second != v else None
            if first == v:  # x + f(x): the body is f, the shortcut the identity
                body, short = short or [], None
            after = reach[index[id(merge)]]
            sides = [reach[index[id(c)]] - after for c in cons if c is not merge]
            if len(sides) == 2 and sides[0] & sides[1]:
                raise bad(merge, "is not supported: its two branches share nodes (only "
                          "residual blocks, whose branches meet once, are)")
            layers.append({"type": "Residual", "body": {"type": "Sequential", "layers": body},
                           "shortcut": None if short is None
                           else {"type": "Sequential", "layers": short}})  # fmt: skip
            v = merge.output
        return layers

    producer = {op.output: op for op in ops}
    if graph_output != graph_input and graph_output not in producer:
        raise UnsupportedOpError(f"the model's output {graph_output!r} is not computed from "
                                 "its input by supported nodes")  # fmt: skip
    return {"type": "Sequential", "layers": chain(graph_input, graph_output)}
