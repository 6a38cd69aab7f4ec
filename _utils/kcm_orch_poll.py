"""
What the orchestration runner (``kcm_orch``) sees of the KCM masters while it changes them:
one compound publish of ``kcm.health``, ``kcm.is_leader`` and ``kcm.leader`` per poll, read
as ``{minion: {healthy, leader, holder, live, transitions, error}}``, and a watch over every
poll of a run (the leaders seen, the longest stretch with no live leader).

Called from the runner as ``__utils__["kcm_orch_poll.masters"](client, minions, timeout)``.
The watch's clock comes from the caller, so the runner's tests can drive it. The runner keeps
the polling loop: Salt runs a util's code without ``__utils__``, so no callback of the runner
may run inside one.
A step that does not come about raises :class:`StepFailed`, a ``CommandExecutionError``.
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "kcm_orch_poll"

POLL_TIMEOUT = 15
POLL_FUNS = ("kcm.health", "kcm.is_leader", "kcm.leader")


def __virtual__():
    return __virtualname__


class StepFailed(CommandExecutionError):
    """A step of an orchestration that failed; its message goes into the run's comment."""


class _Masters:
    """The targeted masters as ``LocalClient`` sees them; every call lists who did not answer."""

    def __init__(self, client, minions, call_timeout):
        self.client = client
        self.minions = list(minions)
        self.call_timeout = call_timeout

    def call(self, minions, fun, kwarg=None, timeout=None):
        """``{minion: return}`` of ``fun`` on ``minions``; raise naming those that did not answer."""
        minions = list(minions)
        out = (
            self.client.cmd(
                minions,
                fun,
                kwarg=kwarg or {},
                tgt_type="list",
                timeout=timeout or self.call_timeout,
            )
            or {}
        )
        missing = sorted(set(minions) - set(out))
        if missing:
            raise StepFailed(f"{', '.join(missing)} did not answer {fun} within {timeout or self.call_timeout} s")
        return {m: out[m] for m in minions}

    def observe(self, minions=None):
        """
        ``{minion: {healthy, leader, holder, live, transitions, error}}`` from one compound
        publish of ``kcm.health``, ``kcm.is_leader`` and ``kcm.leader``. A master that does
        not answer is reported as not healthy, not an error: it may be restarting.
        """
        minions = list(minions or self.minions)
        out = (
            self.client.cmd(
                minions,
                list(POLL_FUNS),
                [[] for _ in POLL_FUNS],
                tgt_type="list",
                timeout=POLL_TIMEOUT,
            )
            or {}
        )
        return {m: observation(out.get(m)) for m in minions}


def masters(client, minions, call_timeout=None):
    """The masters ``minions`` reached through ``client`` (a ``LocalClient``): ``.call(minions,
    fun, kwarg, timeout)`` and ``.observe()``; ``call_timeout`` (default 15 s) is ``.call``'s."""
    return _Masters(client, minions, call_timeout or POLL_TIMEOUT)


def observation(answer):
    """One master's answer to the compound poll, read as healthy / leader / the Lease holder."""
    if not isinstance(answer, dict):
        return {
            "healthy": False,
            "leader": False,
            "holder": None,
            "live": False,
            "transitions": None,
            "error": "no answer",
        }
    health = answer.get("kcm.health")
    record = answer.get("kcm.leader")
    record = record if isinstance(record, dict) else {}
    # kcm.* raise when they cannot answer; in a compound job Salt returns the traceback as
    # text, whose last line is the exception's own "<reason>: <detail>".
    errors = [
        f"{fun}: {ret.strip().splitlines()[-1].split(': ', 1)[-1]}"
        for fun, ret in answer.items()
        if isinstance(ret, str) and ret.strip()
    ]
    return {
        "healthy": isinstance(health, dict) and health.get("healthy") is True,
        "leader": answer.get("kcm.is_leader") is True,
        "holder": record.get("holder"),
        "live": bool(record.get("holder")) and record.get("expired") is False,
        "transitions": record.get("transitions"),
        "error": ", ".join(errors),
    }


def live_holder(observations, exclude=None):
    """The live holder any master reads (not ``exclude``), or None."""
    for obs in observations.values():
        if obs["live"] and obs["holder"] and obs["holder"] != exclude:
            return obs["holder"]
    return None


def leader_minion(observations):
    """The master that says it leads (the first by name should two say so), or None."""
    leaders = sorted(m for m, obs in observations.items() if obs["leader"])
    return leaders[0] if leaders else None


def transitions(observations):
    """The Lease's ``leaseTransitions`` as the most up-to-date master reads it, or None."""
    values = [obs["transitions"] for obs in observations.values() if obs["transitions"] is not None]
    return max(values) if values else None


class _Watch:
    """Every poll of a run: leader holders seen, and the longest stretch with no live leader."""

    def __init__(self, now):
        self.now = now
        self.polls = 0
        self.polls_without_leader = 0
        self.holders = []
        self.longest_gap = 0.0
        self._gap_since = None

    def record(self, observations):
        now = self.now()
        self.polls += 1
        holder = live_holder(observations)
        if holder is None:
            self.polls_without_leader += 1
            if self._gap_since is None:
                self._gap_since = now
            self.longest_gap = max(self.longest_gap, now - self._gap_since)
            return
        self._gap_since = None
        if not self.holders or self.holders[-1] != holder:
            self.holders.append(holder)


def watch(now):
    """A new watch for one run, timed by ``now`` (a monotonic clock): ``.record(observations)``
    after each poll; ``.polls``, ``.polls_without_leader``, ``.longest_gap`` at the end."""
    return _Watch(now)


def not_reached(what, timeout, observations):
    """The :class:`StepFailed` for a wait that timed out: ``what`` and each master's state."""
    detail = "; ".join(
        f"{m}: healthy={o['healthy']} leader={o['leader']}" + (f" ({o['error']})" if o["error"] else "")
        for m, o in observations.items()
    )
    return StepFailed(f"{what}: not reached within {timeout} s ({detail})")


def drill_victims(observations, count, min_remaining):
    """``(leader, victims, healthy)`` for a drill that stops ``count`` KCMs: the leader first,
    then healthy followers by name; raise :class:`StepFailed` (touching nothing) when there is
    no live leader, too few to stop, or fewer than ``min_remaining`` healthy would be left."""
    leader = leader_minion(observations)
    if not leader or not observations[leader]["live"]:
        raise StepFailed("refused: no live KCM leader among the targeted masters")
    healthy = sorted(m for m, o in observations.items() if o["healthy"])
    followers = [m for m in healthy if m != leader]
    victims = [leader] + followers[: max(0, count - 1)]
    remaining = len([m for m in healthy if m not in victims])
    if len(victims) < count:
        raise StepFailed(f"refused: count={count} but only {len(victims)} healthy masters can be stopped")
    if remaining < min_remaining:
        raise StepFailed(
            f"refused: stopping {len(victims)} of {len(healthy)} healthy masters would leave {remaining};"
            f" the drill needs at least min_remaining={min_remaining} (pillar kcm_orch:min_remaining)"
        )
    return leader, victims, healthy
