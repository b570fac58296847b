"""This node as one of a cluster's: who leads each database, handing databases over.

Nodes that share an object store each lead some of its databases: the leader of a
database is the one node that writes it, and every other node forwards the database's
requests to it (``server/app.py``). Who leads what needs no store request: every node
computes it from the live members (``membership.py``) by rendezvous hashing
(``placement.py``), so the same member set gives the same answer everywhere.

Views of the member set differ for a moment after a change (each node lists the members
every ``lease_ttl / 4``), so two nodes may each believe they lead a database. The store
keeps that safe: a branch's first write on a node fences its timeline (``log/timeline.py``),
and the old leader's next commit is refused. What keeps it from costing acknowledged
writes is the handover:

- **Claim.** Before a node opens a database it leads, it asks every other live member to
  release it (``POST /v1/cluster/release/{db}``), once per database per member set. A
  member that has the database open stops taking its requests (it forwards them to the
  claimant from then on, until its own view of the members changes), ends its
  transactions, ships every commit and closes it, then answers. Only then does the
  claimant open the database, whose first write fences the timeline.
- **Leaving.** A stopping node first says so to the others (``POST /v1/cluster/leave``),
  which drop it from their view at once, then keeps serving (forwarding) while they claim
  its databases, and only then closes what is left and removes its member record.

A member that cannot be reached during a claim is passed over after ``CLAIM_TIMEOUT``:
with remote durability nothing it acknowledged can be lost (the fence refuses its
commits); with local durability, what it acknowledged and had not shipped may be, as
after any crash (docs/architecture.md, "Several nodes").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from shoal.cluster.forward import FORWARDED, Forwarder
from shoal.cluster.membership import Member, Membership
from shoal.cluster.placement import leader_of, score
from shoal.errors import Code, ShoalError
from shoal.metrics import METRICS
from shoal.storage.base import ObjectStore

log = logging.getLogger("shoal.cluster")

CLAIM_TIMEOUT = 10.0  # seconds a claim waits for a member's answer before passing it over
NOTIFY_TIMEOUT = 2.0  # seconds a notice (a new database, a revocation) waits per member


class Moved(ShoalError):
    """The database is another node's after all (it claimed it first, or ranks higher): the
    server sends the request to ``url``. Anywhere else it is a retryable
    LEADER_UNAVAILABLE."""

    def __init__(self, url: str, message: str):
        super().__init__(Code.LEADER_UNAVAILABLE, message)
        self.url = url


class Cluster:
    """This node's part in the cluster. Construction sets fields; :meth:`join` (blocking,
    before the node serves) takes its place in the store, :meth:`start` begins renewing it
    and opens the connections to the other nodes, :meth:`stop` leaves."""

    def __init__(self, store: ObjectStore, node: str, url: str, ttl: float, wait: float,
                 on_lost: Callable[[str], None], token: Callable[[], str]):
        self.node = node
        self.url = url.rstrip("/")
        self.wait = wait
        self.token = token  # the admin token: what one node shows another
        self.membership = Membership(store, node, self.url, ttl, on_lost,
                                     on_change=self._changed)
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once started
        self.forwarder = Forwarder(node)
        self.leaving = False
        self.gone: dict[str, float] = {}  # members that said they leave -> when (monotonic)
        # database -> (the node it was released to, the membership version then): this
        # node forwards it there until its own view of the members changes
        self.released: dict[str, tuple[str, int]] = {}
        self.claimed: dict[str, int] = {}  # database -> membership version of its last claim
        self.claiming: set[str] = set()  # databases this node is asking the others for
        self._lapses = 0  # the membership's lapses as generation() last saw them
        # members that said they joined, until the listing shows them (or for ttl)
        self.announced: dict[str, tuple[Member, float]] = {}
        self.changes = 0  # leadership changes seen (claims made and releases given)

    # -- the store ---------------------------------------------------------------------------
    def join(self) -> None:
        """Write this node's member record, and read the others' (the engine has marked the
        store as a cluster's first: engine/lease.py)."""
        self.membership.join(self.wait)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.forwarder.start()
        self.membership.start()
        # before this node serves: the others count it from now (their next listing may be
        # ttl/8 away), so none of them takes a database this node leads without asking it.
        # Told again until each has answered, for up to a ttl (one that never does is dead).
        notice = {"joined": self.node, "url": self.url}
        deadline = time.monotonic() + self.membership.ttl
        waiting = set(self.membership.members()) - {self.node}
        while waiting and time.monotonic() < deadline:
            waiting -= await self.notify(notice, waiting)
            if waiting:
                await asyncio.sleep(0.1)
        METRICS.cluster_members.set_function(lambda: len(self.live()))

    async def stop(self) -> None:
        """Remove this node's member record (the others stop counting it at their next
        listing) and close the connections to the others."""
        await asyncio.get_running_loop().run_in_executor(None, self.membership.leave)
        await self.forwarder.close()

    # -- who leads ---------------------------------------------------------------------------
    def members(self) -> dict[str, Member]:
        """The members listed, and those that said they joined since the last listing."""
        members = self.membership.members()
        if self.announced:
            now = time.monotonic()
            for node, (member, since) in list(self.announced.items()):
                if node in members or now - since > self.membership.ttl:
                    del self.announced[node]
                else:
                    members[node] = member
        return members

    def live(self) -> dict[str, Member]:
        """The live members as this node sees them: without those that said they leave,
        and without itself once it leaves."""
        members = self.members()
        if self.gone or self.leaving:
            now = time.monotonic()
            for node, since in list(self.gone.items()):
                if node not in members or now - since > 2 * self.membership.ttl:
                    del self.gone[node]  # gone from the listing, or back (a restart)
            members = {n: m for n, m in members.items()
                       if n not in self.gone and not (self.leaving and n == self.node)}
        return members

    def leader(self, database: str) -> Member | None:
        """The member that leads ``database``, or None when it is this node (or nobody is
        live as far as this node knows: it serves, and the store's fence decides)."""
        members = self.live()
        released = self.released.get(database)
        if released is not None:
            to, version = released
            if version == self.membership.version and to in members:
                return members[to]
            del self.released[database]  # the view changed since: the hash decides again
        node = leader_of(database, members)
        if node is None or node == self.node:
            return None
        return members[node]

    def leads(self, database: str) -> bool:
        return self.leader(database) is None

    def generation(self) -> int:
        """What a database opened on this node is valid for: LEADER_UNAVAILABLE while this
        node is not counted a member (its record not renewed for 3/4 of lease_ttl: paused,
        or cut off from the store), and a new value after every such lapse. Another node
        may have led and written a database meanwhile, so what was open before is closed
        and opened again with a claim (the lifecycle compares), never read as it was."""
        if not self.membership.held():
            raise ShoalError(Code.LEADER_UNAVAILABLE, "this node is not counted a member of "
                                                      "its cluster at the moment (its record "
                                                      "was not renewed in time); retry")
        lapses = self.membership.lapses
        if lapses != self._lapses:
            self._lapses = lapses
            self.claimed.clear()  # every claim again: the others may have taken them
            self.released.clear()
        return lapses

    # -- handing over --------------------------------------------------------------------------
    async def claim(self, database: str) -> None:
        """Before opening ``database`` here: every other live member releases it (once per
        database and member set). Moved if another member claims it at the same moment and
        takes precedence (see `yields`): the request goes there instead."""
        version = self.membership.version
        if self.claimed.get(database) == version:
            return
        members = self.live()
        released = self.released.get(database)
        if released is not None and released[1] == version and released[0] in members:
            to = members[released[0]]  # given away under this very view: not taken back
            raise Moved(to.url, f"{database}: released to node {to.node}")
        self.released.pop(database, None)  # (of an older view) set again if this claim yields
        # every member with a record, those that said they leave too: one that is handing
        # its databases over, or that came back since, may have this one open
        others = [m for n, m in self.members().items() if n != self.node]
        self.claiming.add(database)
        try:
            answers = await asyncio.gather(*(self._release_at(m, database) for m in others))
        finally:
            self.claiming.discard(database)
        for member, status in zip(others, answers, strict=True):
            if status == Code.CLAIMED.status:
                self.released_to(database, member.node)
                raise Moved(member.url, f"{database}: node {member.node} claims it too, "
                                        f"and takes precedence")
        yielded = self.released.get(database)
        winner = self.members().get(yielded[0]) if yielded is not None else None
        if winner is not None:  # another claimant that ranks higher asked meanwhile
            raise Moved(winner.url, f"{database}: released to node {winner.node} during "
                                    f"this node's own claim")
        self.released.pop(database, None)
        self.claimed[database] = version
        self.changes += 1
        METRICS.cluster_claims.inc()

    async def _release_at(self, member: Member, database: str) -> int:
        """The member's answer to a release (0 if it gave none)."""
        try:
            status, _, body = await asyncio.wait_for(
                self.forwarder.request(member.url, "POST", f"/v1/cluster/release/{database}"
                                       f"?from={quote(self.url, safe='')}",
                                       self._headers(), b""), CLAIM_TIMEOUT)
        except Exception as exc:  # unreachable: passed over (the fence keeps history single)
            log.warning("%s: node %s (%s) did not release it (%s); taking it over",
                        database, member.node, member.url, type(exc).__name__)
            return 0
        if status >= 300 and status != Code.CLAIMED.status:
            log.warning("%s: node %s (%s) answered %d to its release; taking it over: %s",
                        database, member.node, member.url, status, body[:200])
        return status

    def yields(self, database: str, claimant: str) -> bool:
        """Whether this node releases ``database`` to ``claimant``: always, unless it is
        claiming it at this moment itself and ranks higher for it. Two nodes claiming one
        database each wait for the other's release; the rank (the rendezvous score, the
        same on every node whatever its view) decides which one waits for nothing."""
        return database not in self.claiming or \
            (score(database, claimant), claimant) > (score(database, self.node), self.node)

    def released_to(self, database: str, node: str, url: str | None = None) -> None:
        """``node`` claimed ``database``: forward it there until this node's view changes.
        A claimant this node does not list yet (it came back from a pause a moment ago) is
        counted from now, so that this node asks it before taking the database back."""
        if url is not None and node not in self.membership.members():
            self.joined(node, url)
        self.released[database] = (node, self.membership.version)
        self.claimed.pop(database, None)
        self.changes += 1

    def left(self, node: str) -> None:
        """``node`` said it is leaving: lead its databases without waiting for its record
        to go from the listing."""
        if node != self.node:
            self.gone[node] = time.monotonic()

    def _changed(self) -> None:
        """The member set changed (from the members' thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._abandon)

    def _abandon(self) -> None:
        """Requests on their way to a node whose record is gone or lapsed are answered now,
        not after the forwarder's timeout (a paused node holds them in its socket). A node
        that said it leaves still answers what it was sent: its record goes last."""
        self.forwarder.abandon({m.url for m in self.membership.members().values()})

    def joined(self, node: str, url: str) -> None:
        """``node`` (re)joined: count it at once, even if it said it left before."""
        self.gone.pop(node, None)
        if node != self.node:
            self.announced[node] = (Member(node, url.rstrip("/"), "", 0, False),
                                    time.monotonic())

    async def announce_leaving(self) -> None:
        """Say to the others that this node leaves: they claim its databases from now."""
        self.leaving = True
        await self.notify({"left": self.node})

    async def notify(self, notice: dict[str, Any], only: set[str] | None = None) -> set[str]:
        """Tell every other member (or those in ``only``) of a change they would otherwise
        learn late (a new or deleted database, a revoked token, a node joining or leaving);
        the nodes that answered. Best effort: a member that misses it learns it from the
        store (docs/architecture.md, "Several nodes")."""
        body = msgspec.json.encode(notice)
        others = [m for n, m in self.members().items()
                  if n != self.node and (only is None or n in only)]

        async def one(member: Member) -> str | None:
            try:
                status, _, _ = await asyncio.wait_for(self.forwarder.request(
                    member.url, "POST", "/v1/cluster/notify",
                    [*self._headers(), (b"content-type", b"application/json")], body),
                    NOTIFY_TIMEOUT)
            except Exception as exc:  # best effort: the store is the fallback
                log.info("node %s (%s) missed a notice (%s)", member.node, member.url,
                         type(exc).__name__)
                return None
            return member.node if status < 300 else None

        return {node for node in await asyncio.gather(*(one(m) for m in others)) if node}

    async def news(self, url: str, database: str, branch: str, after: int, timeline: str,
                   wait: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Ask the leader at ``url`` for the durable segments of a branch after ``after``
        (``GET /v1/cluster/feed``: answered once there is one, or after ``wait``)."""
        query = urlencode({"after": after, "timeline": timeline, "wait": f"{wait:g}"})
        return await self.forwarder.request(
            url, "GET", f"/v1/cluster/feed/{database}/{branch}?{query}", self._headers(), b"")

    def _headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + self.token().encode()),
                (FORWARDED, self.node.encode())]

    # -- operators -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What GET /v1/cluster shows of the members (led databases are the engine's)."""
        members = self.live()
        return {"node": self.node, "url": self.url, "leaving": self.leaving,
                "members": [{"node": m.node, "url": m.url, "host": m.host, "pid": m.pid,
                             "self": m.node == self.node} for m in members.values()],
                "leadership_changes": self.changes}
