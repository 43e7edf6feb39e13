"""Starting or joining Ray, and checking before any trial that the cluster can run the search."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from tune_dialsum import locations
from tune_dialsum.errors import SpaceError, UsageError, one_line
from tune_dialsum.ray_compat import keep_imported_ray_on_loopback
from tune_dialsum.space import SearchSpace
from tune_dialsum.space_schema import ResourcesSection


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


# On Linux a local Ray binds the machine's network address (and every interface) unless this is 0.
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _joins_loopback(address: str | None) -> bool:
    return not address or address.removeprefix("ray://").startswith(("127.0.0.1:", "localhost:"))


def keep_on_loopback(address: str | None) -> None:
    """Keep a local Ray, and a driver joining a loopback cluster, on 127.0.0.1.

    Call it before anything imports ray: Ray reads the variable once, at import, and libraries
    import it on their own (transformers looks for Ray Tune while the model is loaded). Where ray
    was imported already, the constant it read is set too. A user who set the variable keeps it.
    """
    if not _joins_loopback(address):
        return
    # (a driver joining a loopback cluster needs it too, or it looks for the cluster at this
    # machine's network address)
    os.environ.setdefault(LOOPBACK_VARIABLE, "0")
    if "ray" in sys.modules and os.environ[LOOPBACK_VARIABLE] == "0":
        keep_imported_ray_on_loopback()


def start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback; True if this call started it."""
    keep_on_loopback(address)
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


def shared_path_markers(written: dict[str, str], read: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(what -> the file each node must see, the markers written here to be deleted after).

    Where the search writes (the storage), a marker is written here, so that a node-local path of
    the same name elsewhere does not pass. Where it only reads (the data, maybe a read-only share),
    nothing is written: a file already there is the marker.
    """
    markers, created = {}, []
    for what, location in written.items():
        markers[what] = location
        if locations.is_uri(location) or Path(location).is_dir():
            markers[what] = locations.join(location, f".tune_dialsum-visible-{os.getpid()}")
            locations.write_text(markers[what], "")
            created.append(markers[what])
    for what, location in read.items():
        files = sorted(p for p in Path(location).iterdir() if p.is_file()) if Path(location).is_dir() else []
        markers[what] = str(files[0]) if files else location  # a URI, a file or an empty directory: itself
    return markers, created


def check_shared_paths(written: dict[str, str], read: dict[str, str]) -> None:
    """On a multi-node cluster, every node must reach the storage and the data; fail before any trial if not.

    A marker (``shared_path_markers``) is looked for by a task pinned to each node: a node-local
    path (the default ray_results on the head, say) is missing on the others, and a bucket a node
    has no credentials or route for cannot be read from it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    checked = {**written, **read}
    markers, written = shared_path_markers(written, read)

    @ray.remote(num_cpus=0)
    def unreachable(locations: list[str]) -> list[str | None]:
        from tune_dialsum.locations import reachable

        return [reachable(location) for location in locations]

    try:
        reasons = ray.get(
            [
                unreachable.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(list(markers.values()))
                for node in nodes
            ]
        )
    finally:
        for marker in written:
            locations.delete_file(marker)
    for node, node_reasons in zip(nodes, reasons, strict=True):
        for (what, location), reason in zip(checked.items(), node_reasons, strict=True):
            if reason is not None:
                raise UsageError(
                    f"{what} {location} cannot be read on node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): "
                    f"{reason}; a multi-node search needs storage and data every node reaches: a shared directory "
                    f"(an NFS mount) or a URI (s3://, gs://) every node has credentials for; pass it with "
                    f"--storage-path (or data.path in the space)"
                )


def check_resources(space: SearchSpace) -> int:
    """Refuse a trial the cluster can never run (more than it has in all, or workers its nodes cannot hold);
    returns how many trials it runs at once (``trials.max_concurrent`` caps it)."""
    import ray

    available = ray.cluster_resources()
    resources, workers = space.resources, space.resources.workers_per_trial
    for resource in ("CPU", "GPU"):
        kind = resource.lower()
        wanted = getattr(resources, f"{kind}s_per_trial")
        if wanted and available.get(resource, 0) < wanted:
            key = f"{kind}s_per_trial" if workers == 1 else f"{kind}s_per_worker"
            asked = f"{wanted:g} {resource}" if workers == 1 else f"{workers} workers x {wanted / workers:g} {resource}"
            raise SpaceError(
                f"{space.source}: resources.{key}: a trial asks for {asked} but the cluster has "
                f"{available.get(resource, 0):g}; lower it (or --{key.replace('_', '-')})"
            )
    held = worker_slots(resources) if workers > 1 else workers
    if held < workers:  # each worker must fit on one node, whatever the totals say
        kind = "gpus" if resources.gpus_per_worker else "cpus"
        raise SpaceError(
            f"{space.source}: resources.{kind}_per_worker: the cluster's nodes hold {held} workers of "
            f"{getattr(resources, f'{kind}_per_worker'):g} {kind[:-1].upper()} and a trial asks for {workers}; give each "
            f"worker less and raise resources.workers_per_trial, or add nodes"
        )
    return trials_at_once(space)


def worker_slots(resources: ResourcesSection) -> int:
    """How many workers of ``resources``' per-worker size the live nodes hold, each on one node."""
    import ray

    per_worker = {"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}
    return sum(
        min(int(node["Resources"].get(name, 0) // amount) for name, amount in per_worker.items() if amount)
        for node in ray.nodes()
        if node["Alive"]
    )


def task_slots(resources: ResourcesSection, wanted: int, per: str = "trial") -> int:
    """How many of ``wanted`` tasks the cluster runs at once (at least 1).

    ``per="trial"``: tasks the size of a whole trial (all its workers, each on one node); ``"worker"``:
    one process's share.
    """
    import ray

    available = ray.cluster_resources()
    room = [wanted]
    for resource in ("CPU", "GPU"):
        per_task = getattr(resources, f"{resource.lower()}s_per_{per}")
        if per_task:
            room.append(int(available.get(resource, 0) // per_task))
    if per == "trial" and resources.data_parallel:
        room.append(worker_slots(resources) // resources.workers_per_trial)
    return max(1, min(room))


def trials_at_once(space: SearchSpace) -> int:
    """How many trials the cluster has room for at once (``trials.max_concurrent`` caps it)."""
    wanted = min(space.trials.num_samples, space.trials.max_concurrent or space.trials.num_samples)
    return task_slots(space.resources, wanted)
