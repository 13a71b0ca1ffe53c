"""A small offline kustomize renderer for exactly the features ``deploy/`` uses.

Kustomization fields: ``resources`` (YAML files and directories holding a kustomization),
``namespace``, ``images`` (``name`` → ``newName`` / ``newTag`` / ``digest`` on containers and init
containers) and ``patches`` given by ``path``, each file holding one strategic-merge patch whose target
is its own apiVersion group, kind and name.

Strategic merge, as far as implemented: maps merge recursively; ``null`` deletes a key; lists of
containers, env, volumes, volumeMounts, ports and imagePullSecrets merge by their Kubernetes merge
key; a list item or a whole patch document carrying ``$patch: delete`` removes its target; every other
list is replaced. Merged keyed lists come out as kustomize v5 orders them: the patch's items first, then the
untouched originals. Anything else (an unknown kustomization field, another ``$patch`` directive, a patch
without a target) raises :class:`KustomizeError`, so an overlay can never silently depend on
behaviour this renderer lacks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "image_parts", "render", "resource_id", "strategic_merge"]

Doc = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
SUPPORTED_IMAGE_FIELDS = frozenset({"name", "newName", "newTag", "digest"})
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
)
# Kubernetes patchMergeKey by field name, for the lists that appear in our manifests.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
DIRECTIVE = "$patch"


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def resource_id(doc: Doc) -> tuple[str, str, str]:
    """(API group, kind, name): how kustomize tells resources apart before namespacing."""
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return group, doc.get("kind", ""), doc.get("metadata", {}).get("name", "")


def render(directory: Path) -> list[Doc]:
    """Render the kustomization in ``directory`` into a list of resource documents."""
    directory = directory.resolve()
    kustomization = _load_kustomization(directory)
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")

    docs: list[Doc] = []
    seen: set[tuple[str, str, str]] = set()
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        loaded = render(path) if path.is_dir() else _load_documents(path)
        for doc in loaded:
            rid = resource_id(doc)
            if rid in seen:
                raise KustomizeError(f"{directory}: duplicate resource {rid}")
            seen.add(rid)
            docs.append(doc)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: [{{path: ...}}]` is supported, got {patch_entry}")
        patch_docs = _load_documents(directory / patch_entry["path"])
        if len(patch_docs) != 1:
            raise KustomizeError(f"{patch_entry['path']}: one strategic-merge patch per file")
        docs = _apply_patch(docs, patch_docs[0], patch_entry["path"])

    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace

    for image in kustomization.get("images", []):
        _set_image(docs, image)
    return docs


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Merge ``patch`` into a copy of ``target`` (the subset of strategic merge described above)."""
    if isinstance(patch, dict):
        directive = patch.get(DIRECTIVE)
        if directive is not None:
            raise KustomizeError(f"unsupported directive {DIRECTIVE}: {directive} in {field or 'document'}")
        merged: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list):
        key = _merge_key(field, patch, target)
        if key is None or not isinstance(target, list):
            return [item for item in copy.deepcopy(patch) if not _is_delete(item)]
        # Like kustomize: the patch's items first, in patch order, then the untouched originals. Order
        # matters for env, where $(VAR) only sees variables defined earlier.
        originals = {item.get(key): item for item in target}
        touched = {item.get(key) for item in patch}
        merged_items = [
            strategic_merge(originals.get(item.get(key)), item, field) for item in patch if not _is_delete(item)
        ]
        return merged_items + [copy.deepcopy(item) for item in target if item.get(key) not in touched]
    return copy.deepcopy(patch)


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """Split ``registry:port/repo:tag@digest`` into (name, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _load_kustomization(directory: Path) -> Doc:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            if not isinstance(data, dict):
                raise KustomizeError(f"{path}: not a mapping")
            return data
    raise KustomizeError(f"{directory}: no kustomization file")


def _load_documents(path: Path) -> list[Doc]:
    if not path.is_file():
        raise KustomizeError(f"{path}: no such file")
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise KustomizeError(f"{path}: every document must be a Kubernetes object")
    return docs


def _apply_patch(docs: list[Doc], patch: Doc, source: str) -> list[Doc]:
    rid = resource_id(patch)
    matches = [i for i, doc in enumerate(docs) if resource_id(doc) == rid]
    if len(matches) != 1:
        raise KustomizeError(f"{source}: patch target {rid} matches {len(matches)} resources")
    index = matches[0]
    if _is_delete(patch):
        return docs[:index] + docs[index + 1 :]
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    patched = strategic_merge(docs[index], body)
    return [*docs[:index], patched, *docs[index + 1 :]]


def _is_delete(item: Any) -> bool:
    if not isinstance(item, dict) or DIRECTIVE not in item:
        return False
    if item[DIRECTIVE] != "delete":
        raise KustomizeError(f"unsupported directive {DIRECTIVE}: {item[DIRECTIVE]}")
    return True


def _merge_key(field: str, patch: list[Any], target: Any) -> str | None:
    if field == "ports":
        items = [*patch, *(target if isinstance(target, list) else [])]
        # Container ports merge on containerPort, Service ports on port.
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _pod_specs(doc: Doc) -> Iterator[Doc]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "Pod":
        yield spec
    elif doc.get("kind") == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def _set_image(docs: list[Doc], image: Doc) -> None:
    unknown = set(image) - SUPPORTED_IMAGE_FIELDS
    if unknown or "name" not in image:
        raise KustomizeError(f"unsupported images entry {image}")
    for doc in docs:
        for pod in _pod_specs(doc):
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                name, tag, digest = image_parts(container.get("image", ""))
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                elif "newTag" in image:
                    container["image"] = f"{name}:{image['newTag']}"
                else:
                    container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
