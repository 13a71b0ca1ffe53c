"""The lineage of a model's versions as a tree (``lmaas model versions``): each derived version under its parent,
with its recipe, speed-up and error."""

from __future__ import annotations

from collections.abc import Sequence

from rich.tree import Tree

from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["label", "lineage_tree"]


def label(v: pb.ModelVersion) -> str:
    """``v3 int8-static 1.92x@b1 2.44x@b8 err 1.8% top-1 100%`` (plain ``v1`` for a pushed version)."""
    text = f"v{v.version}"
    if not v.HasField("derivation"):
        return text + (f" {v.description}" if v.description else "")
    d = v.derivation
    text += f" {d.recipe}"
    if d.merged_versions:
        text += " with " + ",".join(f"v{m}" for m in d.merged_versions)
    text += "".join(f" {m.speedup:.2f}x@b{m.batch}" for m in d.speed)
    if d.HasField("accuracy"):
        text += f" err {d.accuracy.max_rel_error:.2%}"
        if d.accuracy.HasField("top1_agreement"):
            text += f" top-1 {d.accuracy.top1_agreement:.0%}"
    if d.parent_size_bytes:
        text += f" size {d.size_bytes / d.parent_size_bytes:.2f}x"
    return text


def lineage_tree(name: str, versions: Sequence[pb.ModelVersion]) -> Tree:
    """Roots are versions without a (known) parent; children sorted by version."""
    known = {v.version for v in versions}
    children: dict[int, list[pb.ModelVersion]] = {}
    for v in versions:
        parent = v.parent_version if v.parent_version in known else 0
        children.setdefault(parent, []).append(v)
    root = Tree(f"Lineage of {name}")

    def add(node: Tree, parent: int) -> None:
        for v in sorted(children.get(parent, []), key=lambda v: v.version):
            add(node.add(label(v)), v.version)

    add(root, 0)
    return root
