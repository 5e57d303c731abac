"""Which Ray cluster rlcm runs on, and whether the run fits on it.

- `init_ray`: join a cluster only when asked (an address, or RAY_ADDRESS as `ray job submit` sets it);
  otherwise start a fresh local Ray bound to 127.0.0.1, never one recorded in /tmp/ray. A join
  address that does not answer fails in `connect_timeout_s`, naming the address.
- `preflight`: compare what a config asks for (actors × CPUs/GPUs) with what the cluster has or can
  grow to, and name the config keys to change, instead of waiting forever for resources.
- `wait_for_placement_group`: wait for a placement group with a time limit, same kind of message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import ray

from cluster.ray_reaper import start_reaper

EPS = 1e-9
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_STARTED_HERE = {"gcs": None}  # GCS address of the local Ray this process started (it cannot grow)


class ResourceError(RuntimeError):
    """The run asks for more CPUs/GPUs than the Ray cluster has; the message names the config keys."""


# ---- connecting -------------------------------------------------------------------------------


def init_ray(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    quiet: bool = True,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    namespace: str | None = None,
    connect_timeout_s: float = 30.0,
) -> str:
    """Start or join Ray for this process; returns one line saying which.

    address: None -> RAY_ADDRESS if set, else a fresh local Ray; "local" -> a fresh local Ray even if
    RAY_ADDRESS is set; anything else ("host:6379", "auto", "ray://host:10001") -> join that cluster.
    num_cpus / num_gpus size a local Ray and are ignored when joining (the cluster has its own).
    quiet: Ray's driver logger at ERROR instead of INFO.
    """
    if ray.is_initialized():
        return f"using the Ray instance this process already runs on ({ray.get_runtime_context().gcs_address})"
    source = "RAY_ADDRESS" if address in (None, os.environ.get("RAY_ADDRESS")) else "--address"
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    common = dict(
        log_to_driver=log_to_driver, namespace=namespace, logging_level=logging.ERROR if quiet else logging.INFO
    )
    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address != "local":
        host, port = wait_reachable(address, connect_timeout_s, source)
        _enable_token_auth_if_available()
        try:
            with _loopback_node_ip() if _loopback_only(host, port) else contextlib.nullcontext():
                ray.init(address=address, **common)
        except ConnectionError as error:
            raise ConnectionError(
                f"{error} (from {source}); a cluster with token auth needs its token here: RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token as on the head (`ray get-auth-token` there), and "
                "RAY_AUTH_MODE unset or token"
            ) from error
        return f"joined Ray cluster at {ray.get_runtime_context().gcs_address}"
    with _loopback_node_ip():
        context = ray.init(
            address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=include_dashboard, **common
        )
    _STARTED_HERE["gcs"] = context.address_info["gcs_address"]
    start_reaper(context.address_info["session_dir"])  # the local Ray dies with this process, even on SIGKILL
    totals = ray.cluster_resources()
    line = (
        f"started local Ray ({totals.get('CPU', 0):g} CPUs, {totals.get('GPU', 0):g} GPUs) "
        f"on {context.address_info['node_ip_address']}, address {_STARTED_HERE['gcs']}"
    )
    return line + (f", dashboard http://{context.dashboard_url}" if context.dashboard_url else "")


def started_here() -> bool:
    """True when this process started the Ray instance it is connected to (a local one that cannot grow)."""
    return ray.is_initialized() and _STARTED_HERE["gcs"] == ray.get_runtime_context().gcs_address


def gcs_host_port(address: str) -> tuple[str, int]:
    """host and port of a join address: "host:port", "ray://host:port" or "auto" (the cluster recorded on this
    machine)."""
    if address.startswith(("http://", "https://")):
        raise ValueError(
            f"{address} is a dashboard (job submission) address; joining needs the cluster address host:port "
            "(default port 6379), e.g. RAY_ADDRESS=127.0.0.1:6379. Submit jobs with `rlcm submit --address {address}`"
        )
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        address = canonicalize_bootstrap_address_or_die("auto")
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379) or auto")
    return host.strip("[]"), int(port)


def wait_reachable(address: str, timeout_s: float, source: str = "RAY_ADDRESS") -> tuple[str, int]:
    """Wait until something listens at the cluster address (returns host, port); ConnectionError after `timeout_s`.

    ray.init itself would retry for minutes with GCS warnings.
    """
    try:
        host, port = gcs_host_port(address)
    except ConnectionError as error:  # "auto" with no cluster recorded on this machine
        raise ConnectionError(f"no Ray cluster to join at {address!r} (from {source}): {error}") from error
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return host, port
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"no Ray cluster answers at {address} (from {source}) after {timeout_s:g} s ({error}); start it "
                    "(`ray start --head`), fix the address, or unset RAY_ADDRESS and drop --address to run on a fresh "
                    "local Ray"
                ) from error
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _loopback_only(host: str, port: int) -> bool:
    """A cluster at 127.0.0.1:port that does not answer on this machine's routable IP is a loopback-bound one
    (init_ray's)."""
    if host not in LOOPBACK:
        return False
    from ray._private.services import get_node_ip_address

    try:
        socket.create_connection((get_node_ip_address(), port), timeout=2.0).close()
    except OSError:
        return True
    return False


@contextlib.contextmanager
def _loopback_node_ip():
    """Make ray.init use node IP 127.0.0.1: a local Ray binds loopback, a join of 127.0.0.1:port stays on loopback.

    Ray binds every server (GCS, raylet, workers, agents) to loopback when the node IP is exactly
    127.0.0.1, but ray.init rewrites a 127.0.0.1 `_node_ip_address` to the routable IP unless
    multi-node clustering is off (its Windows/macOS default, ENABLE_RAY_CLUSTER).
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _enable_token_auth_if_available() -> None:
    """Joining: use token auth when RAY_AUTH_MODE is unset and a token exists (what ray.init does for "auto" only)."""
    if os.environ.get("RAY_AUTH_MODE") is None and find_auth_token() is not None:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def find_auth_token() -> tuple[str, str] | None:
    """(token, where it came from) as Ray's clients look for it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError:
        return None
    return (token, path) if token else None


# ---- resources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRequest:
    """`count` bundles of `cpus`/`gpus` each, asked for by the config `keys` (named in errors).

    A key mentioning cpu (gpu) is named only when CPUs (GPUs) run short; other keys (counts) always.
    strategy: the placement strategy of these bundles (STRICT_PACK: one node; STRICT_SPREAD: one node each).
    """

    what: str
    count: int
    cpus: float = 0.0
    gpus: float = 0.0
    keys: tuple[str, ...] = ()
    strategy: str = "PACK"

    def asks(self, resource: str) -> float:
        return self.count * (self.cpus if resource == "CPU" else self.gpus)

    def keys_for(self, resource: str) -> list[str]:
        other = "gpu" if resource == "CPU" else "cpu"
        return [k for k in self.keys if other not in k.lower()]


@dataclass(frozen=True)
class Capacity:
    """What the run is checked against: CPU/GPU totals, per-node totals (empty if unknown), and where they come from."""

    totals: dict[str, float]
    nodes: list[dict[str, float]] = field(default_factory=list)
    source: str = "the Ray cluster"
    can_grow: bool = False  # a joined cluster that may autoscale: a shortage is a warning, placement waits decide


def cluster_capacity() -> Capacity:
    """The connected cluster's capacity: autoscaler limits if it reports them, else its nodes now."""
    from ray._private.state import state

    limits = state.get_max_resources_from_cluster_config()  # autoscaler v2 (KubeRay): the most it can grow to
    if limits:
        return Capacity({k: float(limits.get(k, 0)) for k in ("CPU", "GPU")}, source="the autoscaler's maximum")
    totals = ray.cluster_resources()
    nodes = [{k: float(n["Resources"].get(k, 0)) for k in ("CPU", "GPU")} for n in ray.nodes() if n.get("Alive")]
    here = started_here()
    return Capacity(
        {k: float(totals.get(k, 0)) for k in ("CPU", "GPU")},
        nodes,
        source="the local Ray started by this process" if here else "the Ray cluster now",
        can_grow=not here,
    )


def shortages(requests: list[ResourceRequest], capacity: Capacity) -> list[str]:
    """What does not fit, one phrase each (empty: it fits). Pure: totals, then each bundle against the nodes."""
    problems = []
    for resource in ("CPU", "GPU"):
        asking = [r for r in requests if r.asks(resource) > EPS]
        total, have = sum(r.asks(resource) for r in asking), capacity.totals.get(resource, 0.0)
        if total > have + EPS:
            parts = ", ".join(f"{r.what} {r.count} × {r.cpus if resource == 'CPU' else r.gpus:g}" for r in asking)
            keys = list(dict.fromkeys(k for r in asking for k in r.keys_for(resource)))
            problems.append(
                f"{resource}: {total:g} asked ({parts}) but {capacity.source} has {have:g}; change {', '.join(keys)}"
            )
    for r in [] if problems or not capacity.nodes else requests:
        if r.count < 1 or (r.cpus <= EPS and r.gpus <= EPS):
            continue
        per_node = r.count if r.strategy == "STRICT_PACK" else 1
        need = {"CPU": r.cpus * per_node, "GPU": r.gpus * per_node}
        fitting = sum(all(node.get(k, 0.0) + EPS >= v for k, v in need.items()) for node in capacity.nodes)
        nodes_needed = r.count if r.strategy == "STRICT_SPREAD" else 1
        if fitting < nodes_needed:
            largest = {k: max(node.get(k, 0.0) for node in capacity.nodes) for k in need}
            short = [k for k in need if need[k] > largest[k] + EPS] or list(need)
            keys = list(dict.fromkeys(k for resource in short for k in r.keys_for(resource)))
            keys += ["scaleout.placement_strategy"] if r.strategy.startswith("STRICT") else []
            problems.append(
                f"{r.what}: {r.strategy} needs {nodes_needed} node(s) with CPU {need['CPU']:g}, GPU {need['GPU']:g} "
                f"each but {fitting} of {len(capacity.nodes)} node(s) have that (most per node: CPU "
                f"{largest['CPU']:g}, GPU {largest['GPU']:g}); change {', '.join(keys)}"
            )
    return problems


def preflight(requests: list[ResourceRequest], capacity: Capacity | None = None) -> None:
    """Raise ResourceError if the requests cannot fit on the cluster (on a cluster that may grow: warn on stderr)."""
    capacity = capacity or cluster_capacity()
    problems = shortages(requests, capacity)
    if not problems:
        return
    message = "this run does not fit on the Ray cluster: " + "; ".join(problems) + " (with --set key=value)"
    if capacity.can_grow:
        print(f"rlcm: warning: {message}; waiting in case the cluster autoscales", file=sys.stderr)
        return
    raise ResourceError(message)


def wait_for_placement_group(
    pg, timeout_s: float, what: str, keys: tuple[str, ...] = (), warn_after_s: float = 10.0
) -> None:
    """Wait until `pg` is placed; after `warn_after_s` say so on stderr; after `timeout_s` remove it and raise
    ResourceError."""
    if pg.wait(min(warn_after_s, timeout_s)):
        return
    bundles = ", ".join("{" + ", ".join(f"{k} {v:g}" for k, v in b.items()) + "}" for b in pg.bundle_specs)
    print(
        f"rlcm: waiting for Ray to place {what} ({bundles}); free now: {free_resources()}; giving up after "
        f"{timeout_s:g} s",
        file=sys.stderr,
    )
    if timeout_s > warn_after_s and pg.wait(timeout_s - warn_after_s):
        return
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)
    raise ResourceError(
        f"Ray could not place {what} ({bundles}) within {timeout_s:g} s; free now: {free_resources()}; "
        f"change {', '.join(keys) or 'the resources section'}, free the cluster, or give it more nodes"
    )


def free_resources() -> str:
    """What the cluster has free now, e.g. \"CPU 0.75, GPU 0\"."""
    available = ray.available_resources()
    return f"CPU {available.get('CPU', 0):g}, GPU {available.get('GPU', 0):g}"
