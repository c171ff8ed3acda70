"""`souverain node head | certify | join | stop`: this host's Ray node, started one way (see
`cluster/ray_node.py` for what every node gets)."""

from __future__ import annotations

from pathlib import Path

import typer

from souverain.cli.context import client, console, err
from souverain.cluster import ray_node

node = typer.Typer(
    help="This host's Ray node: start the head, join a node to it, stop it.",
    no_args_is_help=True,
)

NodeIp = typer.Option(
    ..., "--node-ip-address", help="This host's private address, which the other nodes reach."
)
TokenFile = typer.Option(
    None,
    "--token-file",
    help="The cluster's token file (0600). Default: the one in this host's node directory.",
)
TlsDir = typer.Option(
    None,
    "--tls-dir",
    help="This host's Ray TLS directory (0700: the cluster authority's certificate, this "
    "host's certificate and key). Default: the one in this host's node directory.",
)
TempDir = typer.Option(
    None,
    "--temp-dir",
    help="This node's private directory (0700; Ray's session files go inside it). Default: "
    "one under the system's temp directory.",
)
Cpus = typer.Option(None, "--num-cpus", min=0, help="CPUs this node offers (default: all).")
Gpus = typer.Option(None, "--num-gpus", min=0, help="GPUs this node offers (default: all).")


def _fail(error: ray_node.NodeError) -> typer.Exit:
    err.print(f"[red]error[/red]: {error}", highlight=False)
    return typer.Exit(1)


@node.command("head")
def head(
    node_ip: str = NodeIp,
    port: int = typer.Option(ray_node.DEFAULT_PORT, "--port", min=1, max=65535),
    datacenter: str = typer.Option(
        None, "--datacenter", help="Label this node with a declared datacenter to run work."
    ),
    token_file: Path = TokenFile,
    temp_dir: Path = TempDir,
    num_cpus: int = Cpus,
    num_gpus: int = Gpus,
    tls_dir: Path = TlsDir,
) -> None:
    """Start the cluster's head on this host (a control-plane host runs it with the
    controller). Makes the cluster's token and TLS authority on a first start."""
    if datacenter:
        _check_declared(datacenter)
    plan = _plan(node_ip, datacenter, token_file, temp_dir, num_cpus, num_gpus, tls_dir)
    try:
        address = ray_node.start_head(plan, port=port)
    except ray_node.NodeError as error:
        raise _fail(error) from None
    console.print(f"[green]Ray head running[/green] at {address} (token authentication and TLS on)")
    console.print(f"  token file  {plan.token_file}  (copy it to each node, mode 0600)")
    console.print(f"  TLS         {plan.tls}  (the cluster's authority: stays on this host)")
    console.print(f"  controller  SOUVERAIN_RAY_ADDRESS={address} souverain controller")
    console.print(
        "  each node   souverain node certify --node-ip-address <its-private-ip> --datacenter "
        "<datacenter> --out <dir> (here), copy <dir> to it, then there: souverain node join "
        + join_arguments(address, "<datacenter>")
    )


def join_arguments(address: str, datacenter: str) -> str:
    return (
        f"--address {address} --node-ip-address <this-host-private-ip> "
        f"--datacenter {datacenter} --token-file <copy-of-the-head-token-file> "
        "--tls-dir <copy-of-its-certified-dir>"
    )


@node.command("certify")
def certify(
    node_ip: str = typer.Option(
        ..., "--node-ip-address", help="The private address of the host to certify."
    ),
    datacenter: str = typer.Option(
        None,
        "--datacenter",
        help="The declared datacenter that host serves in (a node joins with this label only); "
        "none for a controller's host.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="A new directory for that host's TLS files (made 0700)."
    ),
    renew: bool = typer.Option(
        False, "--renew", help="Issue a new certificate into the existing --out directory."
    ),
    tls_dir: Path = TlsDir,
) -> None:
    """On the head: a TLS directory for another host of the cluster (a node, or a
    controller's host), its certificate for its private address and datacenter; copy it
    there. A certificate is refused 30 days before its end: renew it with --renew."""
    if datacenter:
        _check_declared(datacenter)
    authority = (tls_dir or ray_node.default_tls_dir()).absolute()
    try:
        ray_node.certify(authority, node_ip, out.absolute(), datacenter, renew=renew)
    except ray_node.NodeError as error:
        raise _fail(error) from None
    where = f" for datacenter {datacenter}" if datacenter else ""
    console.print(
        f"[green]{'renewed' if renew else 'certified'}[/green] {node_ip}{where} in {out} "
        "(ca.crt, node.crt, node.key)"
    )
    console.print(
        "  copy it to that host keeping its modes (scp -rp), then give it with --tls-dir "
        "(or SOUVERAIN_RAY_TLS_DIR for a controller)"
        + ("; a running node takes it once started again (node stop, node join)" if renew else "")
    )


@node.command("join")
def join(
    address: str = typer.Option(..., "--address", help="The head's host:port."),
    node_ip: str = NodeIp,
    datacenter: str = typer.Option(..., "--datacenter", help="A declared datacenter's id."),
    token_file: Path = TokenFile,
    temp_dir: Path = TempDir,
    num_cpus: int = Cpus,
    num_gpus: int = Gpus,
    tls_dir: Path = TlsDir,
) -> None:
    """Join this host to the cluster as a node of a declared datacenter."""
    _check_declared(datacenter)
    plan = _plan(node_ip, datacenter, token_file, temp_dir, num_cpus, num_gpus, tls_dir)
    try:
        ray_node.join(plan, address=address)
    except ray_node.NodeError as error:
        raise _fail(error) from None
    console.print(f"[green]joined[/green] {address} as {node_ip} in datacenter {datacenter}")


@node.command("stop")
def stop(temp_dir: Path = TempDir) -> None:
    """Stop this host's node (only the Ray processes souverain started with this temp dir)."""
    stopped = ray_node.stop((temp_dir or ray_node.default_node_dir()).absolute())
    console.print(f"stopped {stopped} Ray process(es)")


def _plan(
    node_ip: str,
    datacenter: str | None,
    token_file: Path | None,
    temp_dir: Path | None,
    cpus: int | None,
    gpus: int | None,
    tls_dir: Path | None = None,
) -> ray_node.NodePlan:
    return ray_node.NodePlan(
        node_ip=node_ip,
        token_file=(token_file or ray_node.default_token_file()).absolute(),
        node_dir=(temp_dir or ray_node.default_node_dir()).absolute(),
        datacenter=datacenter,
        cpus=cpus,
        gpus=gpus,
        tls_dir=(tls_dir or ray_node.default_tls_dir()).absolute(),
    )


def _check_declared(datacenter: str) -> None:
    """Ask the API: a label no declared datacenter has would get no work, or the wrong work."""
    with client() as c:
        declared = [dc.id for dc in c.list_datacenters()]
    if datacenter not in declared:
        err.print(
            f"[red]error[/red]: datacenter '{datacenter}' is not declared (declared: "
            f"{', '.join(declared) or 'none'}): declare it first with "
            f"`souverain datacenters add {datacenter} --name … --country …`",
            highlight=False,
        )
        raise typer.Exit(1)
