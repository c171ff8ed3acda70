"""TLS for engines that tests and benchmarks run themselves (the stand-in playing many
replicas at `/r/<replica>`): a certificate for every replica name at once, issued by the
installation's own authority, so the gateway checks them exactly as it checks a real
replica. The authority never issues such a certificate outside tests.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import REPLICA_NAME_DOMAIN, EngineCredential
from souverain.installation import authority
from souverain.node.engines.base import TlsFiles
from souverain.node.secret import write_secret_file


async def every_replica_files(
    sessions: async_sessionmaker[AsyncSession], master_key: bytes, directory: Path
) -> TlsFiles:
    """0600 certificate and key files valid for any replica's name."""
    trusted = await authority.load_or_create(sessions, master_key)
    return write_files(authority.issue(trusted, f"*.{REPLICA_NAME_DOMAIN}"), directory)


def write_files(credential: EngineCredential, directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TlsFiles(directory / "engine.crt", directory / "engine.key")
    write_secret_file(files.certificate, credential.certificate)
    write_secret_file(files.key, credential.key)
    return files
