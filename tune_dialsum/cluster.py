"""Starting or joining Ray, and checking before any trial that the cluster can run the search."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from tune_dialsum.errors import SpaceError, UsageError, one_line
from tune_dialsum.space import SearchSpace


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (Ray itself keeps retrying for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(
            f"--address {address}: cannot connect to a Ray cluster ({err.strerror or err}); start one with "
            "`ray start --head`, or leave out --address to run on this machine"
        ) from None


def start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback; True if this call started it."""
    # On Linux, a local Ray binds the machine's address unless this is 0: keep it on 127.0.0.1.
    # Ray reads it once, when it is first imported, so it is set before that.
    if not address or address.removeprefix("ray://").startswith(("127.0.0.1:", "localhost:")):
        # (a driver joining a loopback cluster needs it too, or it looks for the cluster at this
        # machine's network address)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise UsageError(
                f"--address {address}: cannot connect to a Ray cluster ({one_line(err)}); start one with "
                "`ray start --head`, and where it uses token authentication put its token in ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def check_shared_paths(paths: dict[str, Path]) -> None:
    """On a multi-node cluster, every node must see the storage and data paths; fail before any trial if not.

    A marker written here is looked for by a task pinned to each node: a node-local path (the
    default ray_results on the head, say) is missing on the others.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    markers = {}
    for what, path in paths.items():
        markers[what] = path  # a file is its own marker
        if path.is_dir():
            markers[what] = path / f".tune_dialsum-visible-{os.getpid()}"
            markers[what].write_text("")

    @ray.remote(num_cpus=0)
    def visible(files: list[str]) -> list[bool]:
        return [os.path.exists(f) for f in files]

    try:
        seen = ray.get(
            [
                visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                    [str(m) for m in markers.values()]
                )
                for node in nodes
            ]
        )
    finally:
        for marker in markers.values():
            if marker.name.startswith(".tune_dialsum-visible-"):
                marker.unlink(missing_ok=True)
    for node, flags in zip(nodes, seen, strict=True):
        for (what, path), ok in zip(paths.items(), flags, strict=True):
            if not ok:
                raise UsageError(
                    f"{what} {path} is not visible on node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): "
                    f"a multi-node search needs a path every node shares (e.g. an NFS mount); pass one with "
                    f"--storage-path (or data.path in the space)"
                )


def check_resources(space: SearchSpace) -> None:
    import ray

    available = ray.cluster_resources()
    for resource, wanted in (("CPU", space.resources["cpus_per_trial"]), ("GPU", space.resources["gpus_per_trial"])):
        if wanted and available.get(resource, 0) < wanted:
            raise SpaceError(
                f"{space.source}: resources.{resource.lower()}s_per_trial: a trial asks for {wanted:g} {resource} "
                f"but the cluster has {available.get(resource, 0):g}; lower it (or --{resource.lower()}s-per-trial)"
            )
