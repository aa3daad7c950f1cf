"""labgrid places through a coordinator: reserve by tags, lock, release (cancel, then unlock), offline.

All of it goes through labgrid's own client session (labgrid.remote.client.ClientSession and its
gRPC stub), as one labgrid user `host/user`: that name is what a lock records, so a worker's
start-up sweep can find the locks a killed predecessor left (locks outlive their holder; only
reservations expire). The order of release matters: the coordinator reassigns a place only
when both its reservation and its lock are gone, and it reschedules at once on an unlock but
only on its 15 s tick after a cancel, so cancel first, then unlock (lab-notes, section 2).

Offline is labgrid's own state too: an offline place is locked by `<host>/labgate-offline` and
its comment says why, so `labgrid-client places` and every other labgrid user see it, no
reservation is granted it, and no worker's sweep touches it (it is not the worker's lock).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from labgrid.remote.client import ClientSession
from labgrid.remote.common import Reservation, ReservationState
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb
from labgrid.remote.generated import labgrid_coordinator_pb2_grpc

from lab.errors import LabSetupError

log = logging.getLogger(__name__)

LAB_USER_ENV = "LABGATE_LAB_USER"  # the labgrid user name a lab worker locks places as
OFFLINE_USER = "labgate-offline"
OFFLINE_PREFIX = "offline: "
_POLL_S = 1.0  # polling a reservation also keeps it from expiring (60 s without a poll)
_CONNECT_CAP_S = 10.0
# After waiting the whole cap for a place it did not have to avoid, a job takes an avoided one only if it
# is granted within this long: the cap was spent already.
_AVOID_FALLBACK_S = 3.0
HEALTH_CHECK_PRIO = 10.0  # a health check's reservation goes before every job's (prio 0) for its place


class PlaceUnavailable(Exception):
    """No place with the tags was granted within the cap; the message says who holds them."""


@dataclass(frozen=True)
class Identity:
    """A labgrid user: locks record `host/user`."""

    host: str
    user: str

    @property
    def name(self) -> str:
        return f"{self.host}/{self.user}"


_threads = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """One event loop per thread for every session it opens: grpc.aio breaks ("Internal error from
    Core") when channels of one process live on several loops at once. labgrid's RemotePlace looks
    the thread's current loop up, so it is set as that too."""
    loop: asyncio.AbstractEventLoop | None = getattr(_threads, "loop", None)
    if loop is None or loop.is_closed():
        loop = _threads.loop = asyncio.new_event_loop()
    # Set every time: code between two sessions (an asyncio.run() in the same thread) leaves the thread
    # with no current loop, and grpc.aio then finds none ("There is no current event loop").
    asyncio.set_event_loop(loop)
    return loop


def offline_identity() -> Identity:
    """The labgrid user an offline place is locked as (by hand, or by labgate for a health check)."""
    return Identity(socket.gethostname(), OFFLINE_USER)


def worker_identity() -> Identity:
    """This host's lab worker, as it locks places (one worker process tree per user name and host)."""
    return Identity(socket.gethostname(), os.environ.get(LAB_USER_ENV, "labgate"))


@dataclass(frozen=True)
class PlaceState:
    name: str
    tags: dict[str, str]
    acquired: str | None  # `host/user` holding the lock
    reservation: str | None  # token of the reservation the place is allocated to
    comment: str
    matches: tuple[str, ...] = ()

    @property
    def offline_reason(self) -> str | None:
        if self.acquired is not None and self.acquired.endswith(f"/{OFFLINE_USER}"):
            return self.comment.removeprefix(OFFLINE_PREFIX) or "offline"
        return None


@dataclass(frozen=True)
class HeldPlace:
    name: str
    token: str
    waited_s: float  # from asking to holding the lock
    waited_for: str = ""  # what held the places while we waited (empty: granted at once)
    avoided: str = ""  # how the places the job had to avoid were kept from it, or why they were not


class _Session(ClientSession):  # type: ignore[misc]
    """labgrid's session, speaking as a given labgrid user instead of $LG_USERNAME or the login name."""

    identity: Identity

    def gethostname(self) -> str:
        return self.identity.host

    def getuser(self) -> str:
        return self.identity.user


@dataclass
class Coordinator:
    """One session with a labgrid coordinator, on an event loop of its own."""

    address: str
    identity: Identity = field(default_factory=worker_identity)

    def __post_init__(self) -> None:
        self.loop = _thread_loop()
        try:
            # grpc.aio ties a channel to the loop running when it is made: make the session on ours.
            self.session = self._run(self._open())
        except Exception as exc:  # refused, timed out, a coordinator of another labgrid version
            raise LabSetupError(f"labgrid coordinator {self.address}: {type(exc).__name__}: {exc}") from exc

    async def _open(self) -> _Session:
        session = _Session(self.address, self.loop)
        session.identity = self.identity
        # The coordinator knows a client by its connection's peer address, and gRPC shares one
        # connection among a process's channels to the same target: a second session (the sweep
        # beside a job, the CLI's offline user) would be refused. Same options, a connection of its own.
        await session.channel.close()
        session.channel = grpc.aio.insecure_channel(target=self.address, options=[
            ("grpc.keepalive_time_ms", 7500), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.ping_timeout_ms", 10000), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.use_local_subchannel_pool", 1)])  # fmt: skip
        session.stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(session.channel)
        await asyncio.wait_for(session.start(), _CONNECT_CAP_S)
        return session

    def close(self) -> None:
        try:
            self._run(self.session.stop())
            self._run(self.session.close())
        except Exception:
            log.debug("closing the coordinator session failed", exc_info=True)

    def _run(self, awaitable: Any) -> Any:
        """Run one coordinator call; its refusals (place gone, not ours to lock) are LabSetupError."""
        try:
            return self.loop.run_until_complete(awaitable)
        except grpc.aio.AioRpcError as exc:
            raise LabSetupError(f"labgrid coordinator {self.address}: {exc.code().name}: {exc.details()}") from exc

    def _call(self, method: str, request: Any) -> Any:
        """A coordinator RPC, then a sync so the session's view of places includes its effect."""
        response = self._run(getattr(self.session.stub, method)(request))
        self._run(self.session.sync_with_coordinator())
        return response

    # -- places ---------------------------------------------------------------------------

    def places(self) -> dict[str, PlaceState]:
        self._run(self.session.sync_with_coordinator())
        return {name: PlaceState(name=name, tags=dict(p.tags), acquired=p.acquired, reservation=p.reservation,
                                 comment=p.comment, matches=tuple(str(m) for m in p.matches))
                for name, p in sorted(self.session.places.items())}  # fmt: skip

    def create_place(self, name: str, matches: list[str], tags: dict[str, str]) -> None:
        """A place matching these exporter resources (`exporter/group/cls/name` patterns), with tags."""
        if name not in self.session.places:
            self._call("AddPlace", pb.AddPlaceRequest(name=name))
        for pattern in matches:
            self._call("AddPlaceMatch", pb.AddPlaceMatchRequest(placename=name, pattern=pattern))
        self._call("SetPlaceTags", pb.SetPlaceTagsRequest(placename=name, tags=tags))

    def lock(self, place: str) -> None:
        self._call("AcquirePlace", pb.AcquirePlaceRequest(placename=place))

    def unlock(self, place: str, holder: str | None = None) -> None:
        """Release the lock; with `holder`, only if that `host/user` holds it (no one else's lock is kicked)."""
        request = pb.ReleasePlaceRequest(placename=place)
        if holder is not None:
            request.fromuser = holder
        self._call("ReleasePlace", request)

    def set_comment(self, place: str, comment: str) -> None:
        self._call("SetPlaceComment", pb.SetPlaceCommentRequest(placename=place, comment=comment))

    # -- reservations ---------------------------------------------------------------------

    def reserve(self, tags: dict[str, str], prio: float = 0.0) -> str:
        """A reservation for one place with these tags (`name` matches a place's name, as in labgrid)."""
        request = pb.CreateReservationRequest(filters={"main": pb.Reservation.Filter(filter=tags)}, prio=prio)
        response = self._run(self.session.stub.CreateReservation(request))
        return str(Reservation.from_pb2(response.reservation).token)

    def poll(self, token: str) -> Reservation:
        response = self._run(self.session.stub.PollReservation(pb.PollReservationRequest(token=token)))
        return Reservation.from_pb2(response.reservation)

    def cancel(self, token: str) -> None:
        self._run(self.session.stub.CancelReservation(pb.CancelReservationRequest(token=token)))

    def reserve_and_lock(self, tags: dict[str, str], wait_s: float,
                         on_waiting: Callable[[str], None] | None = None,
                         avoid: Collection[str] = ()) -> HeldPlace:  # fmt: skip
        """Wait (up to wait_s) for the coordinator to grant a place with these tags, and lock it at once.

        A reservation not locked right away would keep the place from others until it expires, so
        the lock follows the grant; a wait past the cap cancels the reservation and raises
        PlaceUnavailable naming who holds the places. `on_waiting` hears once why we wait.

        `avoid`: places where this job already failed through the place's fault. While another place
        with the tags is in service (not offline), the job waits (within the cap) for one of those
        only, by reserving each by name, so the coordinator never grants it an avoided one. When the
        cap runs out, or no other place is in service, it takes what it is granted and says so.
        """
        started = time.monotonic()
        others = self._in_service(tags, avoid) if avoid else []
        if not others:
            held = self._grant([tags], started, started + wait_s, on_waiting)
            if held is None:
                why = self.describe_holders(tags)
                raise PlaceUnavailable(f"no place with {_tags(tags)} within {wait_s:g} s: {why}")
            if avoid:
                note = (f"could not avoid {', '.join(sorted(avoid))}: no other place with {_tags(tags)} is in service"
                        if held.name in avoid else f"avoided {', '.join(sorted(avoid))}")  # fmt: skip
                held = _with_note(held, note)
            return held
        by_name = [{**tags, "name": name} for name in others]
        held = self._grant(by_name, started, started + wait_s, on_waiting, still_wanted=lambda: bool(
            self._in_service(tags, avoid)))  # fmt: skip
        if held is not None:
            return _with_note(held, f"avoided {', '.join(sorted(avoid))}")
        why = self.describe_holders(tags)
        # The cap is spent (or every other place went offline): an avoided place, if it is free now.
        held = self._grant([tags], started, time.monotonic() + _AVOID_FALLBACK_S, None)
        if held is None:
            raise PlaceUnavailable(f"no place with {_tags(tags)} within {wait_s:g} s: {why}")
        return _with_note(held, f"could not avoid {held.name}: no other place within {wait_s:g} s ({why})")

    def _in_service(self, tags: dict[str, str], avoid: Collection[str]) -> list[str]:
        """Places with the tags that are not offline and not to be avoided."""
        return [p.name for p in self.places().values()
                if tags.items() <= p.tags.items() and p.offline_reason is None and p.name not in avoid]  # fmt: skip

    def _grant(self, filters: list[dict[str, str]], started: float, deadline: float,
               on_waiting: Callable[[str], None] | None,
               still_wanted: Callable[[], bool] | None = None, prio: float = 0.0) -> HeldPlace | None:  # fmt: skip
        """One reservation per filter; the first granted is locked and the others cancelled. None when
        the deadline passes (or `still_wanted` says no) first: every reservation is cancelled then."""
        tokens = [self.reserve(f, prio) for f in filters]
        waited_for = ""
        try:
            while True:
                for token in list(tokens):
                    reservation = self.poll(token)
                    if reservation.state in (ReservationState.allocated, ReservationState.acquired):
                        place = reservation.allocations["main"][0]
                        self.lock(place)
                        tokens.remove(token)
                        return HeldPlace(place, token, time.monotonic() - started, waited_for)
                    if reservation.state is not ReservationState.waiting:
                        raise PlaceUnavailable(f"reservation for {_tags(filters[0])} ended as {reservation.state.name}")
                if not waited_for:
                    # One filter: its places; several (each place but the avoided by name): all with the tags.
                    shared = filters[0] if len(filters) == 1 else {k: v for k, v in filters[0].items() if k != "name"}
                    waited_for = self.describe_holders(shared)
                    if on_waiting is not None:
                        on_waiting(waited_for)
                if time.monotonic() > deadline or (still_wanted is not None and not still_wanted()):
                    return None
                time.sleep(_POLL_S)
        finally:
            for token in tokens:
                self.cancel(token)

    def hold_offline(self, place: str, why: str, wait_s: float,
                     on_waiting: Callable[[str], None] | None = None) -> HeldPlace:  # fmt: skip
        """Take one place offline for a health check and hold it so (this session must speak as the
        offline user): a place offline already stays as it is; a place a job holds is waited for
        (within the cap) by a reservation of that place by name that goes before every job's, then
        locked and the reservation dropped, as an offline place has none. The comment says `why`."""
        started = time.monotonic()
        state = self.places().get(place)
        if state is None:
            raise LabSetupError(f"no place {place}")
        if state.offline_reason is not None:
            return HeldPlace(place, "", 0.0)
        held = self._grant([{"name": place}], started, started + wait_s, on_waiting, prio=HEALTH_CHECK_PRIO)
        if held is None:
            raise PlaceUnavailable(f"place {place} was not free to take offline within {wait_s:g} s: "
                                   f"{self.describe_holders({'name': place})}")  # fmt: skip
        self.cancel(held.token)
        self.set_comment(place, OFFLINE_PREFIX + why)
        return HeldPlace(place, "", held.waited_s, held.waited_for)

    def release(self, held: HeldPlace) -> None:
        """Cancel the reservation, then unlock: the order that frees the place for the next waiter at once."""
        try:
            self.cancel(held.token)
        finally:
            self.unlock(held.name, holder=self.identity.name)

    def describe_holders(self, tags: dict[str, str]) -> str:
        """Why places with these tags are not free: who locks each, or why it is offline."""
        words = []
        for place in self.places().values():
            if not tags.items() <= {**place.tags, "name": place.name}.items():
                continue
            if place.offline_reason is not None:
                words.append(f"{place.name} offline ({place.offline_reason})")
            elif place.acquired:
                words.append(f"{place.name} locked by {place.acquired}")
            elif place.reservation:
                words.append(f"{place.name} reserved")
            else:
                words.append(f"{place.name} free")
        return ", ".join(words) or f"no place has {_tags(tags)}"


@contextmanager
def holding_place(coordinator: Coordinator, tags: dict[str, str], wait_s: float,
                  on_waiting: Callable[[str], None] | None = None,
                  avoid: Collection[str] = ()) -> Iterator[HeldPlace]:  # fmt: skip
    """A place reserved and locked for the block, always released (cancel, then unlock) after it."""
    held = coordinator.reserve_and_lock(tags, wait_s, on_waiting, avoid)
    try:
        yield held
    finally:
        coordinator.release(held)


def take_offline(address: str, place: str, why: str) -> None:
    """Lock the place as `<host>/labgate-offline` with the reason in its comment (it must be idle)."""
    coordinator = Coordinator(address, offline_identity())
    try:
        current = coordinator.places().get(place)
        if current is None:
            raise LabSetupError(f"no place {place}")
        if current.offline_reason is None:
            if current.acquired:
                raise LabSetupError(f"place {place} is locked by {current.acquired}; take it offline when it is free")
            coordinator.lock(place)
        coordinator.set_comment(place, OFFLINE_PREFIX + why)
    finally:
        coordinator.close()


def bring_online(coordinator: Coordinator, place: str) -> None:
    """Unlock an offline place (only the offline lock: a job's lock is never kicked) and clear its comment."""
    current = coordinator.places().get(place)
    if current is None:
        raise LabSetupError(f"no place {place}")
    if current.offline_reason is None:
        return
    assert current.acquired is not None
    coordinator.unlock(place, holder=current.acquired)
    coordinator.set_comment(place, "")


def end_health_check(address: str, place: str, passed: bool, reason: str) -> bool:
    """After a health check that held the place offline: a pass puts it back in service, anything else
    keeps it offline with the failure in its comment. Returns whether the place is in service now."""
    coordinator = Coordinator(address, offline_identity())
    try:
        if passed:
            bring_online(coordinator, place)
        else:
            coordinator.set_comment(place, OFFLINE_PREFIX + f"health check failed: {reason}")
        state = coordinator.places().get(place)
        return state is not None and state.offline_reason is None
    finally:
        coordinator.close()


def place_in_service(address: str, place: str) -> bool:
    """Whether the place exists and is not offline (a job may hold it)."""
    coordinator = Coordinator(address, Identity(socket.gethostname(), "labgate-observer"))
    try:
        state = coordinator.places().get(place)
        return state is not None and state.offline_reason is None
    finally:
        coordinator.close()


def _with_note(held: HeldPlace, avoided: str) -> HeldPlace:
    return HeldPlace(held.name, held.token, held.waited_s, held.waited_for, avoided)


def _tags(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items()))
