"""The reconcile controller: ONE worker thread makes every change the daemon makes.

Start, SIGHUP reloads, API calls, guest hooks, link events and the periodic check become
intents on one queue; the worker runs them in order (repeated reloads and checks waiting
together are run once) and each caller waits for its own outcome. So two changes never race
on the kernel, and an API caller is told what happened, not "requested".

Desired state = the definition files (last good load) + the attachments in the state dir.
Every change is: compute the desired model -> plan against the kernel -> apply (undone on
failure) -> move the services. Services follow their network: a network whose definition
changed, or whose bridge was recreated, has its services restarted; a change of its guests
only (an attachment came or went) is handed to the services that care (``update_guests``)
and restarts nothing. Must not parse requests (``vnet.routes`` does) or touch sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vnet.attachments import AttachmentStore
from vnet.errors import ApiError, ConfigError, VnetError
from vnet.guestpath import FilterMemory
from vnet.guests import attach_problems, find_port, make_attachment, pending_for, with_attachments
from vnet.model import Attachment, Guest, Model, Network
from vnet.policy.loaded import Loaded
from vnet.serve import Service, ServiceContext

log = logging.getLogger(__name__)

# seconds between full drift checks (link events trigger targeted ones); VNET_CHECK_EVERY
CHECK_EVERY = float(os.environ.get("VNET_CHECK_EVERY", "30"))
REAP_AFTER = 0.5  # idle seconds before detached ports are deleted (in one call)
REAP_WITHIN = 10.0  # ... and at most this long after the first of them
COALESCED = ("reload", "check")


class NotFound(ApiError):
    """The named network, guest or port does not exist (HTTP 404)."""


class Conflict(ApiError):
    """The request contradicts what exists (HTTP 409)."""


class BadRequest(ApiError):
    """The request itself is wrong (HTTP 400)."""


@dataclass(frozen=True)
class ControllerOptions:
    config_dir: Path
    state_dir: Path
    run_dir: Path
    policy_dir: Path | None = None
    apply_l2: bool = True


@dataclass
class _Intent:
    kind: str
    args: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


class Histogram:
    """Cumulative latency histogram (Prometheus style), seconds."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BUCKETS)
        self.total = 0.0
        self.n = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.n += 1
            self.total += seconds
            for i, bound in enumerate(self.BUCKETS):
                if seconds <= bound:
                    self.counts[i] += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        with self._lock:
            return list(zip(self.BUCKETS, self.counts, strict=True)), self.total, self.n


def _without_guests(net: Network) -> Network:
    return replace(net, guests=())


class Controller:
    def __init__(self, options: ControllerOptions, ctx: ServiceContext) -> None:
        self.options = options
        self.ctx = replace(ctx, nft_elements=self._nft_elements) if options.apply_l2 else ctx
        self.store = AttachmentStore(options.state_dir)
        self.files = Model()  # the last good load of the definition files
        self.model = Model()  # desired: files + attachments (what the services and plan see)
        self.services: dict[str, dict[str, Service]] = {}
        self.problems: dict[str, list[str]] = {}  # network -> why it is not fully served
        self.lock = threading.Lock()  # readers of model/services/problems vs the worker
        self.reconcile_latency = Histogram()
        self.nft_latency = Histogram()
        self.counters = {"reconciles": 0, "reconcile_errors": 0, "repairs": 0}
        self._queue: queue.Queue[_Intent | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._handlers: dict[str, Callable[..., Any]] = {
            "reload": self._reload, "attach": self._attach, "detach": self._detach,
            "check": self._check, "gc": self._gc, "port-up": self._port_up,
            "check-guest": self._check_guest, "port-appeared": self._port_appeared,
            "plan": self._plan, "check-links": self._check_links, "repair-nft": self._repair_nft,
        }
        self._next_check = 0.0
        self._mismatch_seen: dict[str, int] = {}
        # The filter state, one owner: what the compiler assigned and what the tables hold.
        # The worker and the filter service (lease bindings) change it under _nft_lock.
        self.filters: FilterMemory | None = None
        self._graves = threading.Event()  # set: buried links wait for deletion
        self._last_intent = 0.0
        # nft drift against the kernel: every change vnet makes to its tables bumps _nft_gen;
        # the survey fingerprints the tables and remembers what it saw for that generation.
        self._nft_gen = 0
        self._kernel_view: tuple[int, str] | None = None
        self._surveyor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None
        self._nft_lock = threading.Lock()
        self._stamp_dirty = False

    # ----- lifecycle -----

    def start(self) -> None:
        """Load, apply and start the services (in the caller's thread), then the worker.

        Raises ConfigError (bad files) or VnetError (apply failed): the daemon does not start.
        """
        self._reload()
        self._thread = threading.Thread(target=self._work, name="vnet-reconcile", daemon=True)
        self._thread.start()
        self._reaper = threading.Thread(target=self._reap, name="vnet-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """Finish the intent in hand, stop services. The data plane stays as it is."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self._stopping.set()
        self._graves.set()
        if self._reaper is not None:
            self._reaper.join(timeout=30)
            self._reaper = None
        with self.lock:
            for name in list(self.services):
                self._stop_services(name)
        self._write_stamp()
        self.store.close()

    def submit(self, kind: str, timeout: float | None = 30.0, **args: Any) -> Any:
        """Queue an intent and wait for its outcome (re-raises its error)."""
        intent = _Intent(kind, args)
        self._queue.put(intent)
        try:
            return intent.future.result(timeout)
        except FutureTimeout as err:
            raise ApiError(f"{kind}: still in progress after {timeout:.0f} s; the daemon will "
                           "finish it (see its log)") from err

    def post(self, kind: str, **args: Any) -> None:
        """Queue an intent without waiting (signals, link events, the periodic check)."""
        self._queue.put(_Intent(kind, args))

    # ----- the worker -----

    def _work(self) -> None:
        self._next_check = time.monotonic() + CHECK_EVERY
        while True:
            wait = max(0.0, self._next_check - time.monotonic())
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                self._next_check = time.monotonic() + CHECK_EVERY
                self._start_survey()
                continue
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._run_batch(batch)

    def _run_batch(self, batch: Sequence[_Intent]) -> None:
        done: dict[str, tuple[bool, Any]] = {}
        for intent in batch:
            if intent.kind in COALESCED and intent.kind in done:
                ok, value = done[intent.kind]
            else:
                ok, value = self._run(intent)
                if intent.kind in COALESCED:
                    done[intent.kind] = (ok, value)
            if intent.kind == "check" or intent.kind == "reload":
                self._next_check = time.monotonic() + CHECK_EVERY
            if ok:
                intent.future.set_result(value)
            else:
                intent.future.set_exception(value)

    def _run(self, intent: _Intent) -> tuple[bool, Any]:
        self._last_intent = time.monotonic()
        handler = self._handlers.get(intent.kind)
        if handler is None:
            return False, BadRequest(f"unknown intent {intent.kind!r}")
        began = time.monotonic()
        try:
            result = handler(**intent.args)
        except ConfigError as err:
            self.counters["reconcile_errors"] += 1
            log.error("reload refused, keeping the running model:\n%s", err)
            return False, err
        except VnetError as err:
            self.counters["reconcile_errors"] += 1
            log.error("%s failed: %s", intent.kind, err)
            return False, err
        except Exception as err:
            self.counters["reconcile_errors"] += 1
            log.exception("%s failed", intent.kind)
            return False, err
        finally:
            self.counters["reconciles"] += 1
            self.reconcile_latency.observe(time.monotonic() - began)
        return True, result

    def _start_survey(self) -> None:
        """The periodic check, planned off the worker: the plan of the whole host (a dump of
        every link, a compile of the ruleset) costs ~0.1 s at 1,000 guests, which guest
        changes should not wait for. Only drift found is queued, as a check the worker plans
        again (so a change made meanwhile is no false drift)."""
        if self._surveyor is not None and self._surveyor.is_alive():
            return
        self._surveyor = threading.Thread(target=self._survey, name="vnet-survey", daemon=True)
        self._surveyor.start()

    def _survey(self) -> None:
        from vnet.reconcile import plan_model

        self._log_mac_mismatches()
        self._write_stamp()
        with contextlib.suppress(VnetError):
            self.store.checkpoint()
        if not self.options.apply_l2:
            return
        self._survey_nft()
        with self._nft_lock:
            baseline = self.filters.loaded.copy() if self.filters else None
        try:
            lines = plan_model(self._desired(self.files), None, policy_dir=self.options.policy_dir,
                               state_dir=self.options.state_dir, baseline=baseline).lines
        except VnetError as err:
            log.warning("periodic check failed: %s", err)
            return
        if lines:
            self.post("check")

    def _survey_nft(self) -> None:
        """Rules or elements edited inside vnet's tables by someone else: found by comparing
        the kernel's tables with what they were after vnet's last change, repaired by loading
        the whole document again (one transaction)."""
        from vnet.host import nft

        if self.filters is None:
            return
        with self._nft_lock:
            gen = self._nft_gen
        try:
            seen = nft.fingerprint()
        except VnetError as err:
            log.warning("cannot read vnet's nft tables: %s", err)
            return
        with self._nft_lock:
            if gen != self._nft_gen:
                return  # vnet changed them meanwhile: look again next time
            if self._kernel_view is None or self._kernel_view[0] != gen:
                self._kernel_view = (gen, seen)  # what vnet's last change made
                return
            drifted = self._kernel_view[1] != seen
        if drifted:
            log.warning("vnet's nftables tables were changed by someone else: loading them again")
            self.post("repair-nft")

    def _repair_nft(self) -> dict[str, Any]:
        from vnet.host import nft

        with self._nft_lock:
            if self.filters is None:
                return {"changes": []}
            nft.replace(self.filters.loaded.document())
            self._nft_gen += 1
            self._kernel_view = (self._nft_gen, nft.fingerprint())  # what it is now, for sure
        self.counters["repairs"] += 1
        return {"changes": ["replace nftables tables bridge vnet, inet vnet (someone edited them)"]}

    def _reap(self) -> None:
        """Delete buried ports in batches (one kernel call per batch, off the worker)."""
        from vnet.host.netlink import reap_graves

        while not self._stopping.is_set():
            self._graves.wait()
            since = time.monotonic()
            # Deleting holds the kernel's rtnl lock (~16 ms and more per batch): wait until the
            # worker has been idle for REAP_AFTER, at most REAP_WITHIN, so bursts of guest
            # changes do not queue behind it.
            while not self._stopping.wait(REAP_AFTER):
                idle = time.monotonic() - self._last_intent >= REAP_AFTER
                if idle or time.monotonic() - since >= REAP_WITHIN:
                    break
            self._graves.clear()
            try:
                reap_graves()
                self.store.checkpoint()  # idle too: the attachment log folded in here
            except VnetError as err:
                log.warning("deleting detached ports failed (a reconcile will): %s", err)
        with contextlib.suppress(VnetError):
            reap_graves()

    # ----- desired state and the kernel -----

    def _load_files(self) -> Model:
        from vnet.config import load_model

        policy_dir = self.options.policy_dir
        return load_model(self.options.config_dir,
                          policy_dir if policy_dir is not None and policy_dir.exists() else None)

    def _desired(self, files: Model, attachments: Sequence[Attachment] | None = None) -> Model:
        return with_attachments(files, self.store.all() if attachments is None else attachments)

    def _apply(self, desired: Model, names: Sequence[str] | None) -> tuple[list[str], set[str]]:
        """Reconcile ``names`` (None: all); returns the lines done and the networks whose
        bridge was (re)created (their services must rebind)."""
        if not self.options.apply_l2:
            return [], set()
        from vnet.reconcile import apply_planned, check_capabilities, plan_model, select

        nets = select(desired, names)
        check_capabilities(nets)
        with self._nft_lock:
            planned = plan_model(desired, names, policy_dir=self.options.policy_dir,
                                 state_dir=self.options.state_dir,
                                 baseline=self.filters.loaded if self.filters else None)
            began = time.monotonic()
            done = apply_planned(planned)
            fp = planned.filters
            if fp is not None and fp.change is not None:
                self.nft_latency.observe(time.monotonic() - began)
            if fp is not None:
                self.filters = (FilterMemory(fp.compiled, Loaded.of(fp.document))
                                if fp.document is not None and fp.compiled is not None else None)
                self._stamp_dirty = False  # apply_planned wrote it
                if fp.change is not None:
                    self._nft_gen += 1
                    if fp.document is not None:  # rare (start, reload): record the tables now
                        from vnet.host import nft

                        self._kernel_view = (self._nft_gen, nft.fingerprint())
        recreated = {a.network for a in planned.actions
                     if a.kind == "bridge" and a.op in ("create", "replace")}
        for line in done:
            log.info("apply: %s", line)
        return done, recreated

    def _plan(self, networks: Sequence[str] = ()) -> dict[str, Any]:
        """What a reload would change now: the files as they are + the attachments. Dry run."""
        from vnet.reconcile import select

        desired = self._desired(self._load_files())
        try:
            select(desired, networks)
        except VnetError as err:
            raise NotFound(str(err)) from err
        return {"changes": self._pending(desired, networks or None)}

    def _pending(self, desired: Model, names: Sequence[str] | None = None) -> list[str]:
        if not self.options.apply_l2:
            return []
        from vnet.reconcile import plan_model

        with self._nft_lock:
            return plan_model(desired, names, policy_dir=self.options.policy_dir,
                              state_dir=self.options.state_dir,
                              baseline=self.filters.loaded if self.filters else None).lines

    def _nft_elements(self, commands: Sequence[Any]) -> None:
        """Element changes of the services (lease bindings): to the kernel and to memory."""
        from vnet.host import nft

        with self._nft_lock:
            nft.update_elements(commands)
            self._nft_gen += 1
            if self.filters is not None:
                self.filters.loaded.apply(commands)
                self._stamp_dirty = True

    def _write_stamp(self) -> None:
        """Write down what the tables hold (for `vnet apply` without a daemon, and restarts)."""
        from vnet.reconcile import RULESET_STAMP, write_stamp

        with self._nft_lock:
            if self._stamp_dirty and self.filters is not None:
                write_stamp(self.options.state_dir / RULESET_STAMP, self.filters.loaded.document())
                self._stamp_dirty = False

    def _apply_guest(self, desired: Model, network: str, guest: Guest, add: bool) -> list[str]:
        """One guest in or out: its port and its elements only when possible (O(1), see
        ``vnet.guestpath``), else a reconcile of its network."""
        net = desired.network(network)
        if not self.options.apply_l2 or net is None:
            return self._apply(desired, [network])[0]
        from vnet import guestpath
        from vnet.leases import store_for
        from vnet.reconcile import check_capabilities

        check_capabilities([net])
        timer = self.nft_latency.observe
        with self._nft_lock:
            if add:
                leased = [r.ip for r in store_for(self.options.state_dir).active_for(network, guest.mac)]
                done = guestpath.attach(net, guest, self.filters, leased, timer)
            else:
                done = guestpath.detach(net, guest, self.filters, timer)
            if done is not None:
                self._stamp_dirty = True
                self._nft_gen += 1
                if not add:
                    self._graves.set()
        if done is None:
            return self._apply(desired, [network])[0]
        for line in done:
            log.info("apply: %s", line)
        return done

    # ----- services -----

    def _start_services(self, net: Network, only_missing: bool = False) -> None:
        from vnet.serve.registry import FACTORIES

        running = self.services.setdefault(net.name, {})
        problems = self.problems.setdefault(net.name, [])
        if not only_missing:
            problems.clear()
        for name, factory in FACTORIES:
            if name in running:
                continue
            try:
                service = factory(net, self.ctx)
                if service is None:
                    continue
                service.start()
            except VnetError as err:
                log.error("network %s: %s not started: %s", net.name, name, err)
                problems.append(f"{name} not serving: {err}")
                continue
            running[name] = service

    def _stop_services(self, name: str) -> None:
        for service in reversed(list(self.services.pop(name, {}).values())):
            try:
                service.stop()
            except Exception:
                log.exception("network %s: stopping %s failed", name, service.name)
        self.problems.pop(name, None)

    def _sync_services(self, desired: Model, recreated: set[str]) -> None:
        old = {n.name: n for n in self.model.networks}
        new = {n.name: n for n in desired.networks}
        with self.lock:
            for name in list(self.services):
                if name not in new:
                    self._stop_services(name)
            for name, net in new.items():
                prev = old.get(name)
                if (prev is None or name in recreated or name not in self.services
                        or _without_guests(prev) != _without_guests(net)):
                    self._stop_services(name)
                    self._start_services(net)
                elif prev != net:
                    for service in self.services[name].values():
                        update = getattr(service, "update_guests", None)
                        if update is not None:
                            update(net)
                    self._start_services(net, only_missing=True)  # e.g. the first filtered guest
            self.model = desired

    # ----- intents -----

    def _reload(self) -> dict[str, Any]:
        self._log_mac_mismatches()
        files = self._load_files()
        desired = self._desired(files)
        done, recreated = self._apply(desired, None)
        self._sync_services(desired, recreated)
        self.files = files
        self._graves.set()  # links a killed daemon took out of service: delete them
        log.info("reloaded: %d networks, %d attachments", len(files.networks),
                 sum(1 for _ in self.store.all()))
        return {"changes": done}

    def _check(self) -> dict[str, Any]:
        """Drift: put back what someone else changed, and rebind services that need it."""
        self._log_mac_mismatches()
        self._write_stamp()
        desired = self._desired(self.files)
        pending = self._pending(desired)
        if not pending:
            return {"changes": []}
        log.warning("drift found, repairing: %s", "; ".join(pending))
        done, recreated = self._apply(desired, None)
        self.counters["repairs"] += 1
        self._sync_services(desired, recreated)
        return {"changes": done}

    def _log_mac_mismatches(self) -> None:
        """Log (once per check, per port) frames from MACs a guest was not declared with."""
        if not self.options.apply_l2:
            return
        from vnet.host import nft

        try:
            counts = nft.mac_mismatches()
        except VnetError:
            return
        for ifname, frames in counts.items():
            seen = self._mismatch_seen.get(ifname, 0)
            if frames > seen:
                found = find_port(self.model, ifname)
                who = f"guest {found[1].name} (declared MAC {found[1].mac})" if found else "?"
                log.warning("port %s, %s: %d frames from another MAC (%d new); the guest's NIC "
                            "uses a MAC it was not declared with", ifname, who, frames,
                            frames - seen)
        self._mismatch_seen = counts

    def _check_links(self, names: Sequence[str]) -> dict[str, Any]:
        """Links an event showed deleted or changed: reconcile their networks if they are
        still wanted and differ (read now: vnet's own changes are no drift)."""
        if not self.options.apply_l2:
            return {"changes": []}
        from vnet.host.netlink import observe_links
        from vnet.plan import desired_network, drifted

        wanted: dict[str, tuple[str, Any]] = {}
        for net in self.model.networks:
            for spec in desired_network(net).links:
                if spec.ifname in names:
                    wanted[spec.ifname] = (net.name, spec)
        if not wanted:
            return {"changes": []}
        bridges = {n.bridge.name for n in self.model.networks
                   if n.bridge is not None and n.name in {net for net, _ in wanted.values()}}
        seen = observe_links(sorted(set(wanted) | bridges)).by_name()  # masters by name
        stale = sorted({net for ifname, (net, spec) in wanted.items()
                        if ifname not in seen or drifted(spec, seen[ifname])})
        if not stale:
            return {"changes": []}
        log.warning("links changed by someone else, repairing networks %s", ", ".join(stale))
        desired = self._desired(self.files)
        done, recreated = self._apply(desired, stale)
        self.counters["repairs"] += 1
        self._sync_services(desired, recreated)
        return {"changes": done}

    def _network(self, name: str) -> Network:
        net = self.files.network(name)
        if net is None:
            known = ", ".join(n.name for n in self.files.networks) or "none"
            raise NotFound(f"no network named {name!r} is defined (defined: {known})")
        return net

    def _attach(self, network: str, guest: str, mac: str, ifname: str | None = None,
                port: str = "tap", policies: Sequence[str] = (), netns: str | None = None,
                origin: str = "api", pending: bool = False) -> dict[str, Any]:
        from vnet.policy.library import policy_names

        net = self._network(network)
        declared = net.guest(guest)
        if declared is not None:
            return self._attach_declared(net, declared, mac, ifname)
        try:
            att = make_attachment(net, guest, mac, ifname=ifname, port=port, policies=policies,
                                  netns=netns, origin=origin, pending=pending)
        except ValueError as err:
            raise BadRequest(str(err)) from err
        current = self.store.all()
        if pending:
            same = next((a for a in current if (a.network, a.guest) == (network, guest)), None)
            if same is not None and same.mac == att.mac and same.ifname is not None:
                att = same  # prepare again after the TAP was adopted: keep its name
        if att in current and att.ifname is None:
            return pending_json(att)
        if att in current:  # idempotent: same guest, same port
            desired = self._desired(self.files, current)
            done, recreated = self._apply(desired, [network])
            self._sync_services(desired, recreated)
            return self.port(network, guest) | {"changes": done}
        policy_dir = self.options.policy_dir
        known = policy_names(policy_dir if policy_dir is not None and policy_dir.is_dir() else None)
        # the files, not self.model: that already holds ``current`` as guests, so every clash
        # with an attachment was reported twice and an attached guest read as "declared"
        problems = attach_problems(self.files, att, known, current)
        if problems:
            raise Conflict("; ".join(problems))
        self.store.put(att)  # durable first: a crash from here on is repaired at the next start
        if att.ifname is None:
            log.info("guest %s of network %s: waiting for its TAP (MAC %s) on %s", guest,
                     network, att.mac, net.bridge.name if net.bridge else "?")
            return pending_json(att)
        desired = self._desired(self.files, [*current, att])
        joined = desired.network(network)
        added = joined.guest(guest) if joined is not None else None
        assert added is not None
        try:
            done = self._apply_guest(desired, network, added, add=True)
        except VnetError:
            self.store.delete(att.network, att.guest)
            raise
        self._sync_services(desired, set())
        log.info("attached guest %s to network %s (port %s, %s)", guest, network, att.ifname,
                 att.origin)
        return self.port(network, guest) | {"changes": done}

    def _attach_declared(self, net: Network, g: Guest, mac: str,
                         ifname: str | None) -> dict[str, Any]:
        from vnet.model import normalize_mac

        try:
            same_mac = normalize_mac(mac) == g.mac
        except ValueError as err:
            raise BadRequest(str(err)) from err
        if not same_mac or (ifname is not None and ifname != g.ifname):
            raise Conflict(f"guest {g.name!r} is declared in {net.source} with MAC {g.mac} and "
                           f"port {g.ifname!r}; change it there")
        desired = self._desired(self.files)
        done, recreated = self._apply(desired, [net.name])
        self._sync_services(desired, recreated)
        return self.port(net.name, g.name) | {"changes": done}

    def _detach(self, network: str, guest: str) -> dict[str, Any]:
        net = self._network(network)
        if net.guest(guest) is not None:
            raise Conflict(f"guest {guest!r} is declared in {net.source}: remove it there "
                           "(then reload)")
        current = self.store.all()
        att = next((a for a in current if (a.network, a.guest) == (network, guest)), None)
        if att is None:
            return {"removed": False, "changes": []}
        desired = self._desired(self.files, [a for a in current if a is not att])
        leaving = self.model.network(network)
        gone = leaving.guest(guest) if leaving is not None else None
        if gone is not None and leaving is not None and att.ifname is not None:
            done = self._apply_guest(self.model, network, gone, add=False)
        else:
            done = self._apply(desired, [network])[0]
        self.store.delete(network, guest)  # after the port is gone (see vnet.attachments)
        self._sync_services(desired, set())
        log.info("detached guest %s from network %s", guest, network)
        return {"removed": True, "changes": done}

    def _gc(self, network: str, live: Sequence[str]) -> dict[str, Any]:
        self._network(network)
        keep = set(live)
        removed: list[str] = []
        changes: list[str] = []
        for att in self.store.all(network):
            if att.guest not in keep:
                changes += self._detach(network, att.guest)["changes"]
                removed.append(att.guest)
        return {"removed": removed, "changes": changes}

    def _port_up(self, ifname: str, origin: str = "qemu") -> dict[str, Any]:
        """QEMU's ifup script: the TAP exists; it must be a known guest's port."""
        found = find_port(self.model, ifname)
        if found is None:
            raise NotFound(f"no guest has port {ifname!r}: declare it (guests[].ifname) or run "
                           f"`vnet guest add NET NAME --mac MAC --ifname {ifname}` first")
        net, g = found
        desired = self._desired(self.files)
        done, recreated = self._apply(desired, [net.name])
        self._sync_services(desired, recreated)
        return self.port(net.name, g.name) | {"changes": done}

    def _check_guest(self, network: str, guest: str) -> dict[str, Any]:
        """Drift of one guest: its port as wanted, and the filter document as loaded."""
        port = self.port(network, guest)
        drift: list[str] = []
        if self.options.apply_l2:
            from vnet.reconcile import plan_model

            with self._nft_lock:
                planned = plan_model(self._desired(self.files), [network],
                                     policy_dir=self.options.policy_dir,
                                     state_dir=self.options.state_dir,
                                     baseline=self.filters.loaded if self.filters else None)
            drift = [a.describe() for a in planned.actions if a.ifname == port["ifname"]]
            if planned.filters is not None and planned.filters.change is not None:
                drift.append(planned.filters.change)
        return port | {"in_sync": not drift, "drift": drift}

    def _port_appeared(self, ifname: str, mac: str, bridge: str) -> dict[str, Any]:
        """A link joined a vnet bridge without vnet (libvirt's own ``vnetN``, a hand-made TAP):
        the guest whose pending attachment has its MAC gets it as its port; anything else is
        an unknown port (``unknown-ports`` treatment, shown by ``vnet status``)."""
        if find_port(self.model, ifname) is not None:
            return {"ifname": ifname, "known": True, "changes": []}
        net = next((n for n in self.files.networks
                    if n.bridge is not None and n.bridge.name == bridge), None)
        if net is None:
            return {"ifname": ifname, "known": False, "changes": []}
        current = self.store.all()
        att = pending_for(current, net.name, mac)
        if att is None:
            log.warning("network %s: unknown port %s (MAC %s) on bridge %s: no guest or "
                        "pending attachment has that MAC", net.name, ifname, mac, bridge)
            return {"ifname": ifname, "known": False, "changes": []}
        named = replace(att, ifname=ifname)
        self.store.put(named)
        desired = self._desired(self.files, [named if a is att else a for a in current])
        try:
            done, recreated = self._apply(desired, [net.name])
        except VnetError:
            self.store.put(att)
            raise
        self._sync_services(desired, recreated)
        log.info("guest %s of network %s: adopted %s (MAC %s)", att.guest, net.name, ifname, mac)
        return self.port(net.name, att.guest) | {"changes": done}

    # ----- reads (any thread) -----

    def port(self, network: str, guest: str) -> dict[str, Any]:
        with self.lock:
            net = self.model.network(network)
            if net is None:
                known = ", ".join(n.name for n in self.model.networks) or "none"
                raise NotFound(f"no network named {network!r} is defined (defined: {known})")
            g = net.guest(guest)
            if g is None:
                raise NotFound(f"network {network!r} has no guest {guest!r}")
            return guest_json(net, g)

    def snapshot(self) -> tuple[Model, dict[str, list[str]]]:
        with self.lock:
            return self.model, {k: list(v) for k, v in self.problems.items() if v}

    def service_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        with self.lock:
            return {name: {s.name: s.stats() for s in services.values()}
                    for name, services in self.services.items()}


def pending_json(att: Attachment) -> dict[str, Any]:
    return {"network": att.network, "guest": att.guest, "ifname": None, "mac": att.mac,
            "port": str(att.port), "policies": list(att.policies), "origin": str(att.origin),
            "netns": att.netns, "ip": None, "pending": True, "changes": []}


def guest_json(net: Network, g: Guest) -> dict[str, Any]:
    return {
        "network": net.name, "guest": g.name, "ifname": g.ifname, "mac": g.mac,
        "port": str(g.port), "policies": [*net.policies, *g.policies], "origin": str(g.origin),
        "netns": g.netns, "ip": str(g.ip) if g.ip is not None else None,
    }


__all__ = ["BadRequest", "ConfigError", "Conflict", "Controller", "ControllerOptions", "NotFound"]
