"""Connecting to a Ray cluster: the embedded local one, or one joined by address, with Ray's token
authentication and an early, one-line refusal of an address where no cluster answers."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from sweeper.checks import user_path
from sweeper.errors import SweeperError


def token_source() -> str | None:
    """Where Ray would find this user's authentication token, in Ray 2.60's order: RAY_AUTH_TOKEN,
    then the file RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token. None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = user_path(named, "RAY_AUTH_TOKEN_PATH")
        if not path.is_file() or not path.read_text().strip():
            # Ray aborts the process on an unreadable token file: say so in one line first
            raise SweeperError(f"names {named}, which is missing or empty", "RAY_AUTH_TOKEN_PATH")
        return named
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if default.is_file() else None


def use_auth_token() -> str | None:
    """Send this user's Ray token to the cluster when they have one; returns where it was found.

    A cluster started with RAY_AUTH_MODE=token (cluster.yaml's) refuses every client without its
    token, but Ray 2.60's client sends the token to an address it is given only when RAY_AUTH_MODE
    is `token` in the client's own environment (it guesses only for `auto`). So: when the mode is
    unset and a token is at hand, turn token mode on for this process and the processes it starts
    (`sweeper submit`'s HTTP client reads the same setting). A cluster without authentication
    ignores the token (tests/test_auth.py checks both), and an explicit RAY_AUTH_MODE is left as
    the user set it."""
    if os.environ.get("RAY_AUTH_MODE"):
        return None
    source = token_source()
    if source is None:
        return None
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # Ray caches its config: make this process see the new mode too
        from ray._raylet import Config

        Config.initialize("")
    return source


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Ray's C++ client logs there) for a probe whose failure we report
    ourselves in one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def token_refused(address: str) -> SweeperError:
    """The one line for a cluster that refused this client's token (or its lack of one)."""
    mode, source = os.environ.get("RAY_AUTH_MODE", ""), token_source()
    if mode and mode != "token":
        why = f"RAY_AUTH_MODE is {mode} here (unset it, or set it to token)"
    elif mode != "token" or source is None:
        why = "this client has no token"
    else:
        why = f"the token in {source} is not the cluster's"
    return SweeperError(
        f"the Ray cluster at {address} requires its authentication token, and {why}; put the cluster's "
        "token in ~/.ray/auth_token or name its file in RAY_AUTH_TOKEN_PATH (docs/cluster.md)", "--address")


def _check_token(address: str) -> None:
    """Ask the cluster's GCS one question, to turn a refused token into one line within seconds
    (ray.init retries for 20 s, then says only that it failed to connect)."""
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            InnerGcsClient.standalone(address, None, 5000)
    except AuthenticationError:
        raise token_refused(address) from None
    except Exception:  # anything else: ray.init reports it in its own words
        return


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds, not minutes, when no Ray cluster answers at `address` or it refuses
    this client's token."""
    if address == "local":
        return
    target = address
    if address == "auto":  # the cluster this host runs, or RAY_ADDRESS
        from ray._common.utils import get_ray_address_file

        current = Path(get_ray_address_file(None))  # under $RAY_TMPDIR when set, as Ray itself looks
        if not os.environ.get("RAY_ADDRESS") and not current.exists():
            raise SweeperError("no Ray cluster is running on this host (start one with `ray start --head`)", "--address")
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            target = ""
        if not target:  # let ray.init say what it finds
            use_auth_token()
            return
    scheme, _, hostport = target.rpartition("://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweeperError(f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}", "--address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        where = address if target == address else f"{target} (from {address})"
        raise SweeperError(f"no Ray cluster answers at {where} ({e.strerror or e})", "--address") from None
    use_auth_token()
    if not scheme:  # a GCS address (ray:// is Ray Client's own server)
        _check_token(hostport)


def is_local(address: str | None) -> bool:
    """The embedded cluster on this machine, which this process starts and which never grows."""
    return address in (None, "local")


#: How many CPUs the embedded cluster offers its trials; unset, all of this machine's.
LOCAL_CPUS = "SWEEPER_LOCAL_CPUS"


def local_cpus() -> int | None:
    """$SWEEPER_LOCAL_CPUS as a whole number of CPUs, or None when it is unset (all of them).

    Fewer than the machine has leaves cores to other work. With 1 the trials run one after another
    in one process, which Tune reuses from trial to trial (reuse_actors): each further trial starts
    without a new interpreter importing PyTorch and Ray Tune again (about 6 s of CPU apiece here)."""
    text = os.environ.get(LOCAL_CPUS, "").strip()
    if not text:
        return None
    try:
        cpus = int(text)
    except ValueError:
        cpus = 0
    if cpus < 1:
        raise SweeperError(f"{text!r} is not a whole number of CPUs, 1 or more (unset it for all of this "
                           f"machine's)", LOCAL_CPUS)
    return cpus


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Start an embedded local cluster (address None) or join one. Returns True when this call
    started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if is_local(address):
        ray.init(
            address="local",
            num_cpus=num_cpus or local_cpus(),
            include_dashboard=False,  # no open port on a laptop; `ray start` users opt in
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        check_address(address)
        # configure_logging=False: Ray's INFO lines on stderr would break the one-line error rule
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    from sweeper.interrupt import on_sigterm_interrupt

    on_sigterm_interrupt()  # take SIGTERM back from ray.init (see sweeper.interrupt)
    return True


@contextlib.contextmanager
def local_cluster(num_cpus: int | None = None) -> Iterator[float]:
    """A fresh local Ray cluster of `num_cpus` CPUs (all of the machine's by default), always shut
    down; for `sweeper bench`, whose measurements share it. Yields the seconds `ray.init` and the
    driver's first import of Tune took (a one-off start-up, not a trial's)."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("sweeper bench starts its own Ray cluster; shut the current one down first")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a throwaway local cluster
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    import ray.tune  # noqa: F401  (the driver's one-off import of Tune counts as start-up, not as a trial's)

    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()
