"""The Ray cluster's TLS files: the authority's key stays on the head, a certified host gets
a certificate for its own address only, and a directory that is incomplete, too open,
expired, another authority's or for another address is refused with its fix."""

from __future__ import annotations

import re
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from souverain.cluster import ray_node, ray_tls

HEAD, NODE = "10.24.0.1", "10.24.0.2"


@pytest.fixture
def head_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "head"
    assert ray_tls.ensure_head(directory, HEAD)
    assert not ray_tls.ensure_head(directory, HEAD)  # made once
    return directory


def addresses(directory: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate((directory / "node.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(a) for a in names.value.get_values_for_type(x509.IPAddress)]


class TestRayCertificates:
    def test_a_certified_host_gets_its_own_address_and_never_the_authoritys_key(
        self, head_dir: Path, tmp_path: Path
    ) -> None:
        node = tmp_path / "node"
        ray_node.certify(head_dir, NODE, node)
        assert sorted(p.name for p in node.iterdir()) == ["ca.crt", "node.crt", "node.key"]
        assert stat.S_IMODE(node.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in node.iterdir())
        assert addresses(node) == [NODE, "127.0.0.1", "::1"]
        assert addresses(head_dir) == [HEAD, "127.0.0.1", "::1"]
        ray_tls.check_node_dir(node, NODE)
        env = ray_tls.ray_tls_environment(node)
        assert env["RAY_USE_TLS"] == "1"
        assert all(Path(v).parent == node for k, v in env.items() if k != "RAY_USE_TLS")

    def test_a_head_moved_to_another_address_gets_a_certificate_for_it(
        self, head_dir: Path
    ) -> None:
        authority = (head_dir / "ca.crt").read_bytes()
        ray_tls.ensure_head(head_dir, "10.24.0.9")
        assert addresses(head_dir)[0] == "10.24.0.9"
        assert (head_dir / "ca.crt").read_bytes() == authority  # the same cluster

    def test_bad_directories_are_refused_with_their_fix(
        self, head_dir: Path, tmp_path: Path
    ) -> None:
        node, foreign = tmp_path / "node", tmp_path / "foreign"
        ray_node.certify(head_dir, NODE, node)
        ray_tls.ensure_head(foreign, NODE)
        with pytest.raises(ray_tls.TlsError, match=re.escape(f"is not for {HEAD}")):
            ray_tls.check_node_dir(node, HEAD)
        later = datetime.now(UTC) + timedelta(days=ray_tls.NODE_CERT_DAYS)
        with pytest.raises(ray_tls.TlsError, match="expired or within 30 days"):
            ray_tls.check_node_dir(node, NODE, now=later)
        shutil.copy(foreign / "ca.crt", node / "ca.crt")  # another authority's certificate
        with pytest.raises(ray_tls.TlsError, match="not this cluster authority's"):
            ray_tls.check_node_dir(node, NODE)
        (node / "node.key").chmod(0o644)
        with pytest.raises(ray_tls.TlsError, match="chmod 600"):
            ray_tls.check_node_dir(node, NODE)
        (node / "node.key").unlink()
        with pytest.raises(ray_tls.TlsError, match=r"has no node\.key"):
            ray_tls.check_node_dir(node, NODE)
        with pytest.raises(ray_tls.TlsError, match="node certify"):
            ray_tls.check_node_dir(tmp_path / "missing", NODE)

    def test_certify_needs_the_authority_a_new_directory_and_an_address(
        self, head_dir: Path, tmp_path: Path
    ) -> None:
        node = tmp_path / "node"
        ray_node.certify(head_dir, NODE, node)
        with pytest.raises(ray_node.NodeError, match="no cluster authority key"):
            ray_node.certify(node, NODE, tmp_path / "again")  # a node cannot certify
        with pytest.raises(ray_node.NodeError, match=r"already exists.*--renew"):
            ray_node.certify(head_dir, NODE, node)
        with pytest.raises(ray_node.NodeError, match="no certificate to renew"):
            ray_node.certify(head_dir, NODE, tmp_path / "never-made", renew=True)
        with pytest.raises(ray_node.NodeError, match="not an IP address"):
            ray_node.certify(head_dir, "fra-node-2", tmp_path / "named")


class TestCertifiedDatacenter:
    def test_a_node_joins_only_under_the_datacenter_it_was_certified_for(
        self, head_dir: Path, tmp_path: Path
    ) -> None:
        node = tmp_path / "node"
        ray_node.certify(head_dir, NODE, node, "fra1")
        certificate = x509.load_pem_x509_certificate((node / "node.crt").read_bytes())
        assert ray_tls.certified_datacenter(certificate) == "fra1"
        ray_tls.check_node_dir(node, NODE, "fra1")
        ray_tls.check_node_dir(node, NODE)  # a controller on that host declares none
        with pytest.raises(ray_node.NodeError) as refused:
            ray_node.check_tls_dir(node, NODE, "iad1")
        assert str(refused.value).startswith(
            "this host is certified for datacenter fra1, not iad1: join with --datacenter "
            f"fra1, or on the head, run `souverain node certify --node-ip-address {NODE} "
            "--datacenter iad1 --out <dir> --renew`"
        )
        unbound = tmp_path / "unbound"
        ray_node.certify(head_dir, NODE, unbound)
        with pytest.raises(
            ray_tls.TlsError, match=re.escape("certified for datacenter (none), not fra1")
        ):
            ray_tls.check_node_dir(unbound, NODE, "fra1")

    def test_the_heads_certificate_follows_its_datacenter(self, head_dir: Path) -> None:
        ray_tls.ensure_head(head_dir, HEAD, "par1")
        ray_tls.check_node_dir(head_dir, HEAD, "par1")
        ray_tls.ensure_head(head_dir, HEAD)
        with pytest.raises(ray_tls.TlsError, match="not par1"):
            ray_tls.check_node_dir(head_dir, HEAD, "par1")


class TestRenewal:
    def test_a_certificate_near_its_end_is_refused_until_renewed_in_place(
        self, head_dir: Path, tmp_path: Path
    ) -> None:
        """Issued 370 days ago, it has 27 days left: refused with the renewal command;
        `certify --renew` into the same directory gives a full new term, same authority."""
        node = tmp_path / "node"
        issued = datetime.now(UTC) - timedelta(days=ray_tls.NODE_CERT_DAYS - 27)
        ray_tls.issue(head_dir, NODE, node, "fra1", now=issued)
        with pytest.raises(ray_node.NodeError) as refused:
            ray_node.check_tls_dir(node, NODE, "fra1")
        assert "(expired or within 30 days): renew it: on the head, run `souverain node " \
            f"certify --node-ip-address {NODE} --datacenter fra1 --out <dir> --renew`" in str(
                refused.value
            )  # fmt: skip
        old_key = (node / "node.key").read_bytes()
        ray_node.certify(head_dir, NODE, node, "fra1", renew=True)
        ray_node.check_tls_dir(node, NODE, "fra1")
        assert (node / "node.key").read_bytes() != old_key  # a new key with the new term
        assert (node / "ca.crt").read_bytes() == (head_dir / "ca.crt").read_bytes()
        assert stat.S_IMODE(node.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in node.iterdir())
