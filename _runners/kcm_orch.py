"""
Runner ``kcm_orch``: leader-aware rolling changes and the failover drill for a
kube-controller-manager (KCM) HA cluster, driven from the master over ``LocalClient``.
``orch.kcm.upgrade`` and ``orch.kcm.drill`` call it; it also runs on its own:

.. code-block:: bash

    salt-run kcm_orch.preflight pillar='{"kcm": {"version": "v1.37.3"}}'
    salt-run kcm_orch.upgrade pillar='{"kcm": {"version": "v1.37.3"}}'
    salt-run kcm_orch.drill count=1

Without ``tgt`` they act on the KCM masters this Salt master trusts (:func:`settings`).

A rolling change (:func:`upgrade`):

1. the version skew check (``kcm_skew.facts`` on every master): the KCM release asked
   for, judged against the OLDEST kube-apiserver any master reports (never newer, a
   warning when more than one minor older, a version change refused on a master that
   cannot read ``/version``; ``kcm:skew:override_reason`` overrides with a stated reason);
   then the preflight on every master (``kcm_orch.preflight``: the new release downloaded,
   verified and installed beside the active one, and run with the new flags); any
   failure stops here and nothing on the masters has changed (a skew refusal downloads
   nothing) and nothing that runs has changed;
2. the followers, one at a time: ``kcm_orch.apply`` (``state.apply kcm`` plus the
   restart the service state does), then wait until that master is healthy, standing
   by, and a live leader exists;
3. the leader last: apply, then wait for a live leader other than the old process and
   for the old leader's KCM to be healthy again;
4. a summary: versions per master before and after, leader changes (the Lease's
   ``leaseTransitions``), the longest time the polls saw no live leader, time taken.

Each step waits for the previous one; the first failure stops the run, so the masters
not reached yet keep their old version and keep running. Running it again resumes:
masters already changed apply with no changes and are not restarted.

Each step marks the master it restarts (the drill: those it stops) on this Salt master
before it touches it (``kcm_alert.plan``, until the step's deadline) and ends the mark after
the step: the leader change it causes is alerted as planned (``planned="true"``, severity
info); a change away from any other master meanwhile pages as always.

The next master is chosen at each step: a master that is not the current leader, in
name order, and the current leader only when no other master is left.

The masters are read by ``_utils/kcm_orch_poll.py``, the summaries made by ``kcm_orch_report.py``
there: the master needs the formula's utils synced with its runners (``saltutil.sync_all``).
"""

import contextlib
import logging
import time

import salt.client
import salt.utils.minions
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kcm_orch"


def __virtual__():
    return __virtualname__


# Seams for the unit tests (a fake cluster and a fake clock).
def _now():
    return time.monotonic()


def _sleep(seconds):
    time.sleep(seconds)


def _local_client():
    return salt.client.get_local_client(mopts=__opts__)


def _expected_minions(tgt, tgt_type):
    return sorted(salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)["minions"])


def _progress(message):
    """One line on the ``salt-run`` console while the run goes on (and in the master log)."""
    log.info("kcm_orch: %s", message)
    event = globals().get("__jid_event__")
    if event is not None:
        try:
            event.fire_event({"message": message}, "progress")
        except Exception:  # pylint: disable=broad-except
            # Progress lines are a courtesy; the summary carries everything.
            log.debug("kcm_orch: progress event failed", exc_info=True)


def _with_exit_code(report):
    """Set the exit code of ``salt-run`` and the result of ``salt.runner`` from ``report``."""
    report["retcode"] = 0 if report.get("result") else 1
    __context__["retcode"] = report["retcode"]
    return report


# What the masters say, read by _utils/kcm_orch_poll.py on the clock above.
def _masters(minions, call_timeout=None, client=None):
    return __utils__["kcm_orch_poll.masters"](client or _local_client(), minions, call_timeout)


def _wait(masters, watch, condition, timeout, interval, what):
    """Poll every master until ``condition(observations)`` holds; return the observations. The
    loop is here, not in _utils, because Salt runs a util without ``__utils__`` for ``condition``."""
    deadline = _now() + float(timeout)
    while True:
        observations = masters.observe()
        watch.record(observations)
        if condition(observations):
            return observations
        if _now() >= deadline:
            raise __utils__["kcm_orch_poll.not_reached"](what, timeout, observations)
        _sleep(interval)


@contextlib.contextmanager
def _planned(minions, seconds, holders, by, transitions, keep=lambda: False):
    """
    This step restarts or stops ``minions``: the alert runner labels a leader change away
    from them ``planned="true"``, severity info (``kcm_alert.plan``: a mark in its store on
    this Salt master) until the step ends or ``seconds`` (its deadline) pass. ``holders``:
    ``{minion: Lease identity}`` of the one that leads, whose change may be reported late.
    When ``keep()`` is true at the end (the Lease moved during the step), the marks last to
    the deadline: the beacons' late report of that change is still the step's.
    ``transitions``: the Lease's count read before the step; a change the beacons report late
    from before it (a crash of the leader during the previous step) still pages.
    """
    for minion in minions:
        _alert_call(
            "kcm_alert.plan", minion, float(seconds), holder=holders.get(minion), by=by, transitions=transitions
        )
    try:
        yield
    finally:
        if not keep():
            for minion in minions:
                _alert_call("kcm_alert.unplan", minion)


def _alert_call(fun, minion, *args, **kwargs):
    try:
        __salt__[fun](minion, *args, **kwargs)  # noqa: F821 (the runner loader packs itself as __salt__)
    except Exception as exc:  # pylint: disable=broad-except
        # The alert runner missing or its store unwritable must not stop a restart half-way.
        _progress(f"{minion}: {fun} failed ({exc}); its leader change pages as an unplanned one")


def _live_holder(observations, exclude=None):
    return __utils__["kcm_orch_poll.live_holder"](observations, exclude)


def _leader_minion(observations):
    return __utils__["kcm_orch_poll.leader_minion"](observations)


# ---------------------------------------------------------------------------------------
# preflight


def _target(tgt, tgt_type):
    # tgt when given, else the KCM masters this Salt master trusts (kcm_alert:masters over the
    # accepted keys, as salt-run kcm_alert.masters lists them), as a list.
    if tgt:
        return {"tgt": tgt, "tgt_type": tgt_type or "glob"}
    trust = __utils__["kcm_trust.trust"](__opts__)
    if trust.problem:
        raise CommandExecutionError(
            f"no tgt given and no KCM masters configured: {trust.problem} (kcm_alert:masters"
            " in the Salt master's configuration, written by kcm.master)"
        )
    masters = trust.accepted_masters()
    if not masters:
        raise CommandExecutionError(
            f"no tgt given, and kcm_alert:masters {trust.target!r} (pillar"
            " kcm:master:masters) matches no accepted minion key"
        )
    return {"tgt": masters, "tgt_type": "list"}


def _setting(name, given):
    """This run's ``name``: the argument when given, else the master's ``kcm_orch:<name>``
    (written by kcm.master from defaults.yaml ``kcm:master:orch``); the runner keeps no
    default of its own."""
    if given is not None:
        return given
    return __utils__["kcm_error.master_settings"](__opts__, "kcm_orch", "kcm:master:orch")[name]


def settings(tgt=None, tgt_type=None, timeout=None, interval=None, apply_timeout=None, count=None, min_remaining=None):
    """
    Return every setting of an orchestration run: ``tgt`` and ``tgt_type`` (as given, else
    the KCM masters this Salt master trusts, ``kcm_alert:masters`` over the accepted keys,
    as a list), then ``timeout``, ``interval`` (a rolling change's), ``drill_interval``,
    ``apply_timeout``, ``count`` and ``min_remaining``, each as given (the orchestration's
    pillar ``kcm_orch:``) or else the master's ``kcm_orch:`` (kcm.master writes it from
    ``kcm:master:orch``). ``orch/kcm/settings.jinja`` asks it, so the orchestrations and
    this runner cannot disagree.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_orch.settings
        salt-run kcm_orch.settings count=2
    """
    given = {"timeout": timeout, "apply_timeout": apply_timeout, "count": count, "min_remaining": min_remaining}
    out = dict(_target(tgt, tgt_type or "glob"), **{name: _setting(name, value) for name, value in given.items()})
    out["interval"] = _setting("interval", interval)
    out["drill_interval"] = _setting("drill_interval", interval)
    return out


def _targets(tgt, tgt_type):
    chosen = _target(tgt, tgt_type)
    minions = _expected_minions(**chosen)
    if not minions:
        raise CommandExecutionError(f"tgt={chosen['tgt']!r} (tgt_type={chosen['tgt_type']}) matches no accepted minion")
    return minions


def _state_kwarg(pillar, saltenv):
    kwarg = {}
    if pillar:
        if not isinstance(pillar, dict):
            raise CommandExecutionError(
                f"pillar: expected a mapping such as {{'kcm': {{'version': 'v1.37.3'}}}}, got {pillar!r}"
            )
        secrets = __utils__["kcm_publish.secret_paths"](pillar)
        if secrets:
            # Published to every minion and kept in the job cache (see _utils/kcm_publish.py).
            raise CommandExecutionError(
                f"{', '.join(secrets)}: PEM or private-key material in a pillar override, which every minion"
                " receives and the master's job cache keeps; put it in the masters' pillar (targeted by minion"
                " id) and run again without it"
            )
        kwarg["pillar"] = pillar
    if saltenv:
        kwarg["saltenv"] = saltenv
    return kwarg


def _skew_facts_kwarg(kwarg):
    """``kcm_skew.facts`` arguments from a pillar override: its version and override reason;
    what it leaves out each master reads from its own pillar."""
    change = (kwarg.get("pillar") or {}).get("kcm")
    change = change if isinstance(change, dict) else {}
    skew = change.get("skew") if isinstance(change.get("skew"), dict) else {}
    out = {"version": change.get("version"), "override_reason": skew.get("override_reason")}
    return {k: v for k, v in out.items() if v is not None}


def _skew_refusals(cluster, kwarg, timeout):
    """``{minion: why}`` for every master whose change the version skew policy refuses, judged
    against the OLDEST kube-apiserver any master reports (the apiservers of an HA control plane
    are upgraded one by one: the KCM must suit the oldest). A master that could not read
    ``/version`` itself is judged as its own ``state.apply kcm`` would judge it (a version
    change refused), so that the rollout cannot stop half-way on it."""
    _progress(f"version skew check on {', '.join(cluster.minions)}")
    answers = cluster.call(cluster.minions, "kcm_skew.facts", kwarg=_skew_facts_kwarg(kwarg), timeout=timeout)
    facts, refused = {}, {}
    for minion, ret in answers.items():
        if isinstance(ret, dict) and "version_minor" in ret:
            facts[minion] = ret
        else:
            refused[minion] = f"kcm_skew.facts failed: {str(ret)[:500]}"
    oldest = __utils__["kcm_skew.oldest"](  # noqa: F821
        [(f["apiserver"], f["apiserver_minor"], m) for m, f in facts.items() if f.get("apiserver")]
    )
    for minion, found in sorted(facts.items()):
        apiserver = minor = None
        if found.get("apiserver") and oldest:
            apiserver, minor = f"{oldest[0]} on {oldest[2]}", oldest[1]
        decision = __utils__["kcm_skew.decide"](  # noqa: F821
            found["version"],
            found["version_minor"],
            apiserver,
            minor,
            found.get("deployed"),
            found.get("why"),
            found.get("override_reason") or "",
        )
        if not decision["allowed"]:
            refused[minion] = decision["comment"]
        elif decision["warnings"]:
            _progress(f"{minion}: {decision['comment']}")
    return refused


def _preflight(cluster, kwarg, timeout):
    refused = _skew_refusals(cluster, kwarg, timeout)
    if refused:
        return (
            {m: {"result": False, "comment": why} for m, why in refused.items()},
            [f"{m}: {why}" for m, why in sorted(refused.items())],
        )
    _progress(f"preflight on {', '.join(cluster.minions)}")
    answers = cluster.call(cluster.minions, "kcm_orch.preflight", kwarg=kwarg, timeout=timeout)
    masters, problems = {}, []
    for minion, ret in answers.items():
        if not (isinstance(ret, dict) and ret.get("result") is True):
            comment = ret.get("comment") if isinstance(ret, dict) else str(ret)
            problems.append(f"{minion}: {comment}")
            masters[minion] = {"result": False, "comment": comment}
        else:
            masters[minion] = {k: ret.get(k) for k in ("result", "version", "deployed_version")}
    return masters, problems


def preflight(tgt=None, tgt_type="glob", pillar=None, saltenv=None, timeout=None):
    """
    Check a change on every targeted master before anything that runs is touched: first the
    version skew policy against the oldest kube-apiserver any master reports
    (``kcm_skew.facts`` on each; a refusal stops here, before any download), then
    ``kcm_orch.preflight`` on each, in parallel: the release is downloaded, verified and
    installed beside the active one, and accepts the flags rendered for it.

    Returns ``{"result", "comment", "masters": {minion: {...}}}``; the comment quotes the
    binary's own message for a refused flag. Exits non-zero on any failure.

    tgt, tgt_type
        The KCM masters. Default: those this Salt master trusts (:func:`settings`).
    pillar
        Pillar override sent to every master (e.g. ``{"kcm": {"version": "v1.37.3"}}``).
        Never a PEM or a private key: refused, naming the key (a publication reaches every
        minion and stays in the master's job cache).
    saltenv
        Salt fileserver environment on the masters.
    timeout
        Seconds for the masters to answer (download and install included). Default: the
        master's ``kcm_orch:apply_timeout`` (300).

    CLI Example:

    .. code-block:: bash

        salt-run kcm_orch.preflight tgt='master*' pillar='{"kcm": {"extra_args": {"v": 4}}}'
    """
    try:
        timeout = _setting("apply_timeout", timeout)
        kwarg = _state_kwarg(pillar, saltenv)
        cluster = _masters(_targets(tgt, tgt_type), timeout)
        masters, problems = _preflight(cluster, kwarg, timeout)
    except CommandExecutionError as exc:
        return _with_exit_code({"result": False, "comment": f"preflight: {exc}", "masters": {}})
    if problems:
        return _with_exit_code(
            {
                "result": False,
                "masters": masters,
                "comment": "preflight failed, nothing was restarted: " + "; ".join(problems),
            }
        )
    return _with_exit_code(
        {"result": True, "masters": masters, "comment": f"preflight passed on {len(masters)} masters"}
    )


# ---------------------------------------------------------------------------------------
# the rolling change


class _Rollout:
    def __init__(self, cluster, kwarg, timeout, interval, apply_timeout, by="kcm_orch.upgrade"):
        self.cluster = cluster
        self.by = by
        self.kwarg = kwarg
        self.timeout = timeout
        self.interval = interval
        self.apply_timeout = apply_timeout
        self.watch = __utils__["kcm_orch_poll.watch"](_now)
        self.steps = []

    def versions(self):
        answers = self.cluster.call(self.cluster.minions, "kcm.version")
        return {m: (v if isinstance(v, str) else None) for m, v in answers.items()}

    def next_minion(self, todo, observations):
        leader = _leader_minion(observations)
        others = [m for m in todo if m != leader]
        return (others or todo)[0]

    def apply(self, minion):
        ret = self.cluster.call([minion], "kcm_orch.apply", kwarg=self.kwarg, timeout=self.apply_timeout)[minion]
        if not (isinstance(ret, dict) and ret.get("result") is True):
            comment = ret.get("comment") if isinstance(ret, dict) else str(ret)
            raise CommandExecutionError(f"{minion}: {comment}")
        return ret

    def step(self, minion, observations):
        begin = _now()
        was_leader = observations[minion]["leader"]
        old_holder = observations[minion]["holder"] if was_leader else None
        role = "leader" if was_leader else "follower"
        _progress(f"{minion} ({role}): applying")
        before = __utils__["kcm_orch_poll.transitions"](observations)
        moved = []
        # A follower may take the Lease during its own step (the leader crashed) and lose it to
        # the restart: its old process was unknown at the start, so the mark on the master stays.
        with _planned(
            [minion],
            float(self.apply_timeout) + float(self.timeout),
            {minion: old_holder},
            self.by,
            before,
            keep=lambda: bool(moved),
        ):
            ret = self.apply(minion)
            restarted = bool(ret.get("restarted"))
            observations = self.settle(minion, was_leader and restarted, old_holder, role)
            after = __utils__["kcm_orch_poll.transitions"](observations)
            if restarted and not was_leader and None not in (before, after) and after != before:
                moved.append(after)
        seconds = round(_now() - begin, 1)
        self.steps.append(
            {
                "minion": minion,
                "role": role,
                "restarted": restarted,
                "seconds": seconds,
                "leader_after": _leader_minion(observations),
            }
        )
        _progress(
            f"{minion} ({role}): done in {seconds} s, restarted={restarted}, leader now {_leader_minion(observations)}"
        )
        return observations

    def settle(self, minion, leader_restarted, old_holder, role):
        """Wait until the step on ``minion`` is over; return the last observations."""
        if leader_restarted:
            # Only another holder identity counts (a new process here has a new uuid): the old
            # one's Lease is released on exit (release_on_exit) or else has to expire.
            what = f"{minion} (old leader): a new live leader and {minion} healthy again"
            return _wait(
                self.cluster,
                self.watch,
                lambda obs: _live_holder(obs, exclude=old_holder) and obs[minion]["healthy"],
                self.timeout,
                self.interval,
                what,
            )
        # It may lead now: a crash of the leader during this step can hand it the Lease, and it
        # already runs the change (the steps left then hold no leader to restart).
        what = f"{minion} ({role}): healthy under a live leader"
        return _wait(
            self.cluster,
            self.watch,
            lambda obs: obs[minion]["healthy"] and _live_holder(obs),
            self.timeout,
            self.interval,
            what,
        )

    def run(self):
        observations = _wait(
            self.cluster,
            self.watch,
            _live_holder,
            self.timeout,
            self.interval,
            "a live KCM leader before the change (nothing was touched)",
        )
        todo = sorted(self.cluster.minions)
        while todo:
            minion = self.next_minion(todo, observations)
            observations = self.step(minion, observations)
            todo.remove(minion)
        return observations


def upgrade(
    tgt=None,
    tgt_type="glob",
    pillar=None,
    saltenv=None,
    timeout=None,
    interval=None,
    preflight=True,
    apply_timeout=None,
):  # pylint: disable=redefined-outer-name
    """
    Roll a change (a new version, or a config change that needs a restart) over the
    targeted KCM masters: preflight on all, then the followers one at a time, the leader
    last, each step waiting for health and a live leader; stop at the first failure.

    Returns ``{"result", "comment", "masters": {minion: {version_before, version_after,
    role, restarted, seconds}}, "order", "leader_before", "leader_after",
    "leader_changes", "longest_no_leader_seconds", "polls", "polls_without_leader",
    "seconds", "summary": [table lines]}``. Exits non-zero on failure.

    tgt, tgt_type
        The KCM masters. Default: those this Salt master trusts (:func:`settings`).
    pillar
        Pillar override for every master, as for ``state.apply``; without it the masters'
        own (changed) pillar is applied. Never a PEM or a private key (refused, as for
        :func:`preflight`).
    saltenv
        Salt fileserver environment on the masters.
    timeout
        Seconds each step may wait for health and a live leader. Default: the master's
        ``kcm_orch:timeout`` (120).
    interval
        Seconds between polls. Default: ``kcm_orch:interval`` (1).
    preflight
        False skips the preflight (``orch.kcm.upgrade`` runs it as its own step).
    apply_timeout
        Seconds for one master's preflight or ``state.apply``. Default:
        ``kcm_orch:apply_timeout`` (300).

    CLI Example:

    .. code-block:: bash

        salt-run kcm_orch.upgrade pillar='{"kcm": {"version": "v1.37.3"}}'
    """
    return _with_exit_code(_upgrade(tgt, tgt_type, pillar, saltenv, timeout, interval, preflight, apply_timeout))


def _upgrade(
    tgt,
    tgt_type,
    pillar,
    saltenv,
    timeout,
    interval,
    preflight,
    apply_timeout,  # pylint: disable=redefined-outer-name
    by="kcm_orch.upgrade",
):
    begin = _now()
    report = {
        "result": False,
        "masters": {},
        "order": [],
        "leader_before": None,
        "leader_after": None,
        "leader_changes": None,
    }
    rollout = None
    try:
        timeout, interval = _setting("timeout", timeout), _setting("interval", interval)
        apply_timeout = _setting("apply_timeout", apply_timeout)
        kwarg = _state_kwarg(pillar, saltenv)
        cluster = _masters(_targets(tgt, tgt_type))
        if preflight:
            masters, problems = _preflight(cluster, kwarg, apply_timeout)
            if problems:
                raise CommandExecutionError("preflight failed, nothing was restarted: " + "; ".join(problems))
        rollout = _Rollout(cluster, kwarg, timeout, interval, apply_timeout, by)
        before = rollout.versions()
        first = cluster.observe()
        rollout.watch.record(first)
        report["leader_before"] = _leader_minion(first)
        start_transitions = __utils__["kcm_orch_poll.transitions"](first)
        try:
            last = rollout.run()
            report["result"] = True
            report["comment"] = f"rolled over {len(cluster.minions)} masters, the leader last"
        except CommandExecutionError as exc:
            last = cluster.observe()
            done = [s["minion"] for s in rollout.steps]
            untouched = sorted(set(cluster.minions) - set(done))
            report["comment"] = (
                f"stopped: {exc}. Done: {', '.join(done) or 'none'}; "
                f"not touched: {', '.join(untouched) or 'none'}. Re-run to resume."
            )
        after = rollout.versions()
        report["leader_after"] = _leader_minion(last)
        end_transitions = __utils__["kcm_orch_poll.transitions"](last)
        if start_transitions is not None and end_transitions is not None:
            report["leader_changes"] = end_transitions - start_transitions
        steps = {s["minion"]: s for s in rollout.steps}
        report["masters"] = {
            m: dict(
                {"version_before": before.get(m), "version_after": after.get(m)},
                **{k: v for k, v in steps.get(m, {}).items() if k != "minion"},
            )
            for m in cluster.minions
        }
        report["order"] = [s["minion"] for s in rollout.steps]
    except CommandExecutionError as exc:
        report["comment"] = str(exc)
    report["seconds"] = round(_now() - begin, 1)
    if rollout is not None:
        report.update(
            longest_no_leader_seconds=round(rollout.watch.longest_gap, 1),
            polls=rollout.watch.polls,
            polls_without_leader=rollout.watch.polls_without_leader,
        )
        report["summary"] = __utils__["kcm_orch_report.upgrade_summary"](report, rollout.steps)
    _progress(report["comment"])
    return report


def _renewal_groups(answers, trust):
    """``({cluster: [minion]}, {minion: days_left}, {minion: why not asked})`` from each
    master's ``kcm_pki.renewal_due``: a master rolls with the cluster it reports only where this
    Salt master's own configuration lets it report that cluster."""
    groups, due, skipped = {}, {}, {}
    for minion, answer in sorted(answers.items()):
        if not (isinstance(answer, dict) and "due" in answer):
            skipped[minion] = f"kcm_pki.renewal_due failed: {str(answer)[:300]}"
        elif not trust.may_report(minion, answer.get("cluster")):
            skipped[minion] = f"not a master of cluster {answer.get('cluster')!r} in kcm_alert:clusters"
        else:
            groups.setdefault(answer.get("cluster"), []).append(minion)
            if answer["due"]:
                due[minion] = answer.get("days_left")
    return groups, due, skipped


def renew(tgt=None, tgt_type="glob", timeout=None, interval=None, apply_timeout=None):
    """
    Renew the KCM certificates that are due, with no page: refresh every targeted master's
    pillar and ask it (``kcm_pki.renewal_due``) whether its certificate has fewer than
    ``kcm:pki:days_remaining`` days left; in each cluster where one has, roll ``state.apply kcm`` over its masters as
    :func:`upgrade` does (preflight, the followers first, the leader last), each restart
    marked planned by ``kcm_orch.renew``. Where nothing is due, nothing is touched. The apply
    also lays down any pillar change not yet applied, as any ``state.apply kcm`` does.

    The Salt master's scheduler runs it every ``kcm:master:renew_interval`` seconds (daily;
    kcm.master writes the schedule), so a ``KCMCertExpiring`` warning, whose threshold sits
    below ``kcm:pki:days_remaining``, means this renewal failed.

    Returns ``{"result", "comment", "due": {minion: days_left}, "skipped": {minion: why},
    "clusters": {cluster: upgrade report}}``. Exits non-zero on failure.

    tgt, tgt_type
        The KCM masters. Default: those this Salt master trusts (:func:`settings`).
    timeout, interval, apply_timeout
        As for :func:`upgrade`.

    CLI Example:

    .. code-block:: bash

        salt-run kcm_orch.renew
    """
    report = {"result": False, "due": {}, "skipped": {}, "clusters": {}}
    try:
        minions = _targets(tgt, tgt_type)
        masters, wait = _masters(minions), _setting("apply_timeout", apply_timeout)
        # A minion keeps the pillar it compiled last: judge by the one the next apply compiles.
        masters.call(minions, "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=wait)
        answers = masters.call(minions, "kcm_pki.renewal_due", timeout=wait)
        groups, report["due"], report["skipped"] = _renewal_groups(answers, __utils__["kcm_trust.trust"](__opts__))
    except CommandExecutionError as exc:
        report["comment"] = f"renew: {exc}"
        return _with_exit_code(report)
    failed = []
    for cluster, members in sorted(groups.items()):
        if not set(members) & set(report["due"]):
            continue
        _progress(f"cluster {cluster}: renewing ({', '.join(m for m in members if m in report['due'])} due)")
        rolled = _upgrade(members, "list", None, None, timeout, interval, True, apply_timeout, "kcm_orch.renew")
        report["clusters"][cluster] = rolled
        if not rolled.get("result"):
            failed.append(f"{cluster}: {rolled.get('comment')}")
    report["result"] = not failed and not report["skipped"]
    report["comment"] = "; ".join(
        failed
        + [f"{m}: {why}" for m, why in report["skipped"].items()]
        + [
            f"renewed in {', '.join(sorted(report['clusters']))}"
            if report["clusters"]
            else f"no certificate due for renewal on {len(minions)} masters"
        ]
    )
    _progress(report["comment"])
    return _with_exit_code(report)


# ---------------------------------------------------------------------------------------
# the failover drill


def _drill(cluster, count, min_remaining, timeout, interval):
    watch = __utils__["kcm_orch_poll.watch"](_now)
    observations = cluster.observe()
    watch.record(observations)
    leader, victims, healthy = __utils__["kcm_orch_poll.drill_victims"](observations, count, min_remaining)
    old_holder = observations[leader]["holder"]
    survivors = [m for m in cluster.minions if m not in victims]
    start_transitions = observations[leader]["transitions"]
    result = {"leader_before": leader, "stopped": victims, "healthy_before": healthy}
    # The step's deadline: the stop, the failover, the start and the wait for health.
    with _planned(
        victims, 2 * (float(timeout) + cluster.call_timeout), {leader: old_holder}, "kcm_orch.drill", start_transitions
    ):
        return _failover(cluster, watch, result, old_holder, survivors, start_transitions, timeout, interval)


def _failover(cluster, watch, result, old_holder, survivors, start_transitions, timeout, interval):
    """Stop the victims, time the failover, start them again and wait for health (see :func:`drill`)."""
    leader, victims, healthy = result["leader_before"], result["stopped"], result["healthy_before"]
    _progress(f"stopping {', '.join(victims)} (leader {leader})")
    stop_begin = _now()
    try:
        answers = cluster.call(victims, "kcm_orch.stop")
        stopped_at = _now()
        result["stop_seconds"] = round(stopped_at - stop_begin, 2)
        refused = [
            f"{m}: {r.get('comment') if isinstance(r, dict) else r}"
            for m, r in answers.items()
            if not (isinstance(r, dict) and r.get("result"))
        ]
        if refused:
            raise CommandExecutionError("stop failed: " + "; ".join(refused))
        survivor_cluster = _masters(survivors, cluster.call_timeout, client=cluster.client)
        observations = _wait(
            survivor_cluster,
            watch,
            lambda obs: _live_holder(obs, exclude=old_holder) and _leader_minion(obs),
            timeout,
            interval,
            "a new live leader after the stop",
        )
        result["failover_seconds"] = round(_now() - stopped_at, 2)
        result["leader_after"] = _leader_minion(observations)
        end = __utils__["kcm_orch_poll.transitions"](observations)
        result["leader_changes"] = None if end is None or start_transitions is None else end - start_transitions
        _progress(f"new leader {result['leader_after']} after {result['failover_seconds']} s")
    finally:
        _progress(f"starting {', '.join(victims)} again")
        answers = cluster.call(victims, "kcm_orch.start")
        failed = [m for m, r in answers.items() if not (isinstance(r, dict) and r.get("result"))]
        if failed:
            raise CommandExecutionError(f"{', '.join(failed)} did not start again: {answers}")
    observations = _wait(
        cluster,
        watch,
        lambda obs: all(obs[m]["healthy"] for m in healthy),
        timeout,
        interval,
        "every master healthy again after the drill",
    )
    result["healthy_after"] = sorted(m for m, o in observations.items() if o["healthy"])
    result["longest_no_leader_seconds"] = round(watch.longest_gap, 2)
    return result


def drill(tgt=None, tgt_type="glob", count=None, min_remaining=None, timeout=None, interval=None):
    """
    The HA check as a command: stop the leader's KCM (and ``count - 1`` followers), time
    how long until another master holds a live leader lock, start them again, and report.

    Refuses (and touches nothing) when there is no live leader, or when fewer than
    ``min_remaining`` healthy masters would be left running.

    ``failover_seconds`` runs from the moment the stop returned (the leader's process has
    exited) to the first poll that read a new live holder, so it includes up to one poll
    interval plus one round trip. KCM does not release the lock when it stops
    (kubernetes/kubernetes#132599, docs/failover.md), but the unit's release step does
    (``kcm:leader_election:release_on_exit``, default on): expect up to about two retry
    periods; with it off, or for a lock other than a Lease, about the lease duration plus up
    to two retry periods.

    tgt, tgt_type
        The KCM masters. Default: those this Salt master trusts (:func:`settings`).
    count
        How many KCMs to stop: the leader first, then healthy followers by name. Default:
        the master's ``kcm_orch:count`` (1).
    min_remaining
        Healthy masters that must stay running. Default: ``kcm_orch:min_remaining`` (2).
    timeout
        Seconds to wait for a new leader, and for health after the restart. Default:
        ``kcm_orch:timeout`` (120).
    interval
        Seconds between polls. Default: ``kcm_orch:drill_interval`` (0.5).

    CLI Example:

    .. code-block:: bash

        salt-run kcm_orch.drill
        salt-run kcm_orch.drill tgt='master*' count=2 min_remaining=1
    """
    begin = _now()
    try:
        count, min_remaining = int(_setting("count", count)), int(_setting("min_remaining", min_remaining))
        timeout, interval = _setting("timeout", timeout), _setting("drill_interval", interval)
        if count < 1:
            raise CommandExecutionError(f"count: expected a positive number of KCMs to stop, got {count}")
        cluster = _masters(_targets(tgt, tgt_type))
        report = _drill(cluster, count, min_remaining, timeout, interval)
        report.update(
            result=True,
            comment=(
                f"stopped {', '.join(report['stopped'])}; new leader {report['leader_after']} after "
                f"{report['failover_seconds']} s; all started again"
            ),
        )
    except (CommandExecutionError, ValueError, TypeError) as exc:
        report = {"result": False, "comment": str(exc)}
    report["seconds"] = round(_now() - begin, 1)
    if report["result"]:
        report["summary"] = __utils__["kcm_orch_report.drill_summary"](report)
    _progress(report["comment"])
    return _with_exit_code(report)
