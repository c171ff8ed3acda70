"""An organisation's export archive, as pure functions: its layout, its signed manifest,
and how anyone checks it offline.

The archive is a POSIX tar (PAX headers), readable by any `tar`:

    README.txt                     what each path holds
    files/files.jsonl              every live file's metadata; its content in
    files/<file id>/<filename>       (decrypted: the bytes the tenant uploaded or a batch wrote)
    batches/batches.jsonl          batches (inputs and outputs are files above)
    fine_tuning/jobs.jsonl         fine-tuning jobs (settings, progress, never samples)
    models/<model id>/model_card.json   a fine-tuned model's lineage
    models/<model id>/adapter.<ext>     its adapter, decrypted, as stored (GGUF LoRA or
                                        safetensors)
    usage/usage_records.csv|.jsonl  one row per request: tokens, place, energy, no content
    invoices/<YYYY-MM>.json         a monthly invoice per month with usage
    policies/policies.json          sovereignty policy versions and data controls
    keys/api_keys.json              API keys' metadata (never a secret or its hash)
    audit/events.jsonl              the organisation's audit events, as hashed
    audit/chain_proof.json          the chain's links and the seal that covers them
    reports/residency.json          a signed residency report over the whole history
    manifest.json                   last: every path above with its sha256 and size,
                                    signed with the installation's key (`core.signing`)

`verify_archive` checks the manifest's signature, every member against it (nothing
missing, nothing added, no byte changed) and the audit events against their chain proof.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from souverain.core.audit import event_hash, seal_message
from souverain.core.signing import verify

README_TEXT = """An export of an organisation from souverain, readable without souverain.

files/files.jsonl            every live file's metadata (id, name, purpose, size, sha256)
files/<file id>/<name>       its content as uploaded (or as a batch wrote it)
batches/batches.jsonl        batches; their inputs and outputs are files above
fine_tuning/jobs.jsonl       fine-tuning jobs: settings, progress, results (no samples)
models/<id>/model_card.json  a fine-tuned model and its lineage
models/<id>/adapter.*        its adapter as it was stored (GGUF LoRA or safetensors)
usage/usage_records.csv      one row per request: tokens, place, energy, no content
usage/usage_records.jsonl    the same, as JSON lines
invoices/<YYYY-MM>.json      the monthly invoices
policies/policies.json       sovereignty policy versions and data controls
keys/api_keys.json           API keys' metadata (never a secret or its hash)
audit/events.jsonl           the organisation's audit events as they were hashed
audit/chain_proof.json       the chain's links (seq, prev_hash, hash) and its seal
reports/residency.json       a residency report, signed (Ed25519)
manifest.json                every path above with its sha256 and size, signed (Ed25519)

Signed documents are {"document": ..., "signature": {"algorithm": "Ed25519", "key_id",
"public_key", "value"}}: the signature covers the document as canonical JSON (keys sorted,
no spaces, UTF-8). Check with the installation's public key: `souverain exports verify`.
An audit event's hash is SHA-256 of the canonical JSON of its fields (hash excluded).
"""

MANIFEST = "manifest.json"
MANIFEST_KIND = "souverain.export-manifest/v1"
EVENTS = "audit/events.jsonl"
PROOF = "audit/chain_proof.json"
BLOCK = 512


def tar_header(name: str, size: int, mtime: float) -> bytes:
    """The PAX header block(s) of a regular file member."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


TAR_END = b"\0" * (2 * BLOCK)


def safe_name(name: str, fallback: str = "content") -> str:
    """A file name that stays one path component inside the archive."""
    cleaned = "".join("_" if c in "/\\\0" or ord(c) < 32 else c for c in name).lstrip(".")
    return cleaned[:200] or fallback


@dataclass
class ArchiveVerdict:
    ok: bool = True
    objects: int = 0
    audit_events: int = 0
    sealed_through: int | None = None
    key_id: str | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 50:
            self.problems.append(problem)


def verify_archive(path: Path, public_key: Ed25519PublicKey) -> ArchiveVerdict:
    """Check an export archive offline against the installation's public key."""
    verdict = ArchiveVerdict()
    try:
        with tarfile.open(path, "r:") as archive:
            _verify_members(archive, public_key, verdict)
    except (tarfile.TarError, OSError, EOFError) as error:
        verdict.fail(f"not a readable tar archive: {error}")
    return verdict


def _verify_members(
    archive: tarfile.TarFile, public_key: Ed25519PublicKey, verdict: ArchiveVerdict
) -> None:
    found = archive.getmembers()
    for odd in (m for m in found if not m.isfile()):  # a link or device was added
        verdict.fail(f"{odd.name} is not a plain file: nothing but listed files belongs here")
    members = {m.name: m for m in found if m.isfile()}
    listed = _signed_objects(archive, members.get(MANIFEST), public_key, verdict)
    if listed is None:
        return
    for name in sorted(set(members) - set(listed) - {MANIFEST}):
        verdict.fail(f"{name} is in the archive but not in the signed manifest")
    for name, expected in sorted(listed.items()):
        member = members.get(name)
        if member is None:
            verdict.fail(f"{name} is listed in the manifest but missing")
            continue
        digest, size = _digest(archive.extractfile(member))
        if digest != expected["sha256"] or size != expected["bytes"]:
            verdict.fail(f"{name} does not match its sha256 in the manifest (altered)")
        verdict.objects += 1
    if EVENTS in members and PROOF in members:
        events = _jsonl(_read(archive, members[EVENTS]))
        proof = json.loads(_read(archive, members[PROOF]))
        verdict.audit_events = len(events)
        problems, verdict.sealed_through = verify_audit_proof(events, proof, public_key)
        for problem in problems:
            verdict.fail(problem)


def _signed_objects(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo | None,
    public_key: Ed25519PublicKey,
    verdict: ArchiveVerdict,
) -> dict[str, dict[str, Any]] | None:
    if member is None:
        verdict.fail(f"the archive has no {MANIFEST}")
        return None
    try:
        signed = json.loads(_read(archive, member))
    except ValueError:
        verdict.fail(f"{MANIFEST} is not JSON (altered)")
        return None
    if not isinstance(signed, dict) or not verify(signed, public_key):
        verdict.fail(f"{MANIFEST}'s signature is not valid for this key (altered or foreign)")
        return None
    verdict.key_id = signed["signature"].get("key_id")
    document = signed["document"]
    if document.get("kind") != MANIFEST_KIND:
        verdict.fail(f"{MANIFEST} is not an export manifest")
        return None
    return {entry["path"]: entry for entry in document["objects"]}


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return b"" if handle is None else handle.read()


def _digest(handle: IO[bytes] | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while handle is not None and (chunk := handle.read(1024 * 1024)):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def verify_audit_proof(
    events: list[dict[str, Any]], proof: dict[str, Any], public_key: Ed25519PublicKey
) -> tuple[list[str], int | None]:
    """(problems, the seq the seal vouches for). Each event must hash to its `hash`
    (stubs a retention window left excepted), sit on the proof's unbroken chain of links,
    and that chain must end at a seal the installation's key signed."""
    problems: list[str] = []
    links = {int(link["seq"]): link for link in proof.get("links", [])}
    previous: dict[str, Any] | None = None
    for seq in sorted(links):
        link = links[seq]
        if previous is not None and (
            seq != int(previous["seq"]) + 1 or link["prev_hash"] != previous["hash"]
        ):
            problems.append(f"the chain proof breaks at seq {seq}")
        previous = link
    for event in events:
        seq = int(event["seq"])
        if not event.get("redacted") and event_hash(event) != event["hash"]:
            problems.append(f"audit event seq {seq} does not match its hash (edited)")
        link = links.get(seq)
        if link is None or (link["hash"], link["prev_hash"]) != (event["hash"], event["prev_hash"]):
            problems.append(f"audit event seq {seq} is not on the chain proof")
    sealed = _check_seal(proof.get("seal"), links, public_key, problems)
    if events and sealed is not None and sealed < max(int(e["seq"]) for e in events):
        problems.append(f"the seal at seq {sealed} does not cover the last event")
    return problems, sealed


def _check_seal(
    seal: dict[str, Any] | None,
    links: dict[int, dict[str, Any]],
    public_key: Ed25519PublicKey,
    problems: list[str],
) -> int | None:
    if seal is None:
        return None  # the chain was not sealed yet past these events: links only
    seq = int(seal["seq"])
    try:
        public_key.verify(
            bytes.fromhex(seal["signature"]), seal_message(seq, seal["hash"], seal["sealed_at"])
        )
    except (InvalidSignature, ValueError):
        problems.append(f"the seal at seq {seq} has an invalid signature")
        return None
    if links.get(seq, {}).get("hash") != seal["hash"]:
        problems.append(f"the chain proof does not reach the seal at seq {seq}")
        return None
    return seq
