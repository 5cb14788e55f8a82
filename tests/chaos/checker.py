"""The invariants checked after every scenario, from what RQ's own data and APIs report plus the ledger.

For every job enqueued:

- it is in a terminal state consistent with RQ's semantics and with the faults
  the run actually injected (finished; failed with a reason; stopped only if a
  stop-job was sent for it; canceled only if the harness canceled it), and none
  is left queued, deferred or started (*stranded*) or gone from every list and
  registry (*lost*);
- its registry membership matches its status, and it is on no queue any more;
- one result entry per finished job (SUCCESSFUL, returning the token of one of
  its ledger executions); one FAILED entry with a non-empty reason per failed or
  stopped job;
- retry counts are exact: the retries RQ consumed equal the planned failures the
  ledger saw plus at most the executions a crash interrupted;
- ``Job.fetch(id).get_executions()`` does not raise;
- its side effect ran exactly once (finished) or never (failed by its own
  exception, timed out, canceled), and it ran no more often than planned, except
  that an execution in flight when its worker was SIGKILLed or cold-stopped may
  run once more; those are counted, and anything beyond is an *overrun*.

Poison queue entries must be off every list; those with a job hash must have failed
with a reason; keys that are not hashes are left as they were.
"""

from __future__ import annotations

import base64
import pickle
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.job import Job

from tests.chaos.cluster import QUEUES
from tests.chaos.ledger import Ledger
from tests.chaos.plan import JobSpec

TERMINAL = {"finished", "failed", "stopped", "canceled"}
SUCCESSFUL, FAILED = 1, 2

ABANDONED = "AbandonedJobError"
STUCK = "stuck in intermediate queue"
KILLED = "Work-horse terminated unexpectedly"
TIMEOUT = "JobTimeoutException"
PLANNED = "PlannedFailure"
STOP_GRACE = 8.0  # a stop-job takes milliseconds; a stopped ``long`` job would otherwise run 15 s


@dataclass
class Facts:
    """What the run did, as the harness recorded it while injecting faults."""

    crash_inflight: Counter[str] = field(default_factory=Counter)  # job -> executions owned by a SIGKILLed worker
    cold_tokens: set[str] = field(default_factory=set)  # ledger tokens interrupted by a cold shutdown
    stop_sent: dict[str, float] = field(default_factory=dict)  # job -> when the first stop-job was sent to it running
    kill_horse_to: set[str] = field(default_factory=set)  # worker names
    canceled: set[str] = field(default_factory=set)
    poison: dict[str, str] = field(default_factory=dict)  # id -> poison kind
    intermediate_failures_allowed: bool = False  # a stock worker died (it may have died between BLMOVE and start)
    abandoned_executions: set[tuple[str, str]] = field(default_factory=set)  # (job, execution) a dead worker left in rq:wip
    unowned: dict[str, str] = field(default_factory=dict)  # job -> live owner of a claim no task ran (never heart-beaten)
    left_in_intermediate: set[str] = field(default_factory=set)  # left there by a stock worker that died
    asyncjobs_pids: set[int] = field(default_factory=set)  # every asyncjobs worker process of the run
    stock_names: set[str] = field(default_factory=set)  # every stock worker name of the run
    cron_takeovers: list[float] = field(default_factory=list)  # seconds without a cron leader after each kill


@dataclass
class Problem:
    category: str  # lost | stranded | overrun | state | results | retries | executions | poison | worker | slots
    job: str | None
    detail: str

    def __str__(self) -> str:
        return f"[{self.category}] {self.job or '-'}: {self.detail}"


@dataclass
class Verdict:
    jobs: int = 0
    terminal: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    rq_problems: list[Problem] = field(default_factory=list)  # RQ's own behaviour, not asyncjobs'
    rerun_after_crash: int = 0  # extra runs within the crash bound
    failed_by_maintenance: int = 0  # failed by RQ maintenance: abandoned by a killed worker, or stuck in an intermediate list

    def count(self, category: str) -> int:
        return len({p.job for p in self.problems if p.category == category})

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class JobView:
    spec: JobSpec
    fields: dict[str, str]
    results: list[dict[str, Any]]
    places: set[str]  # queue:<q> | intermediate:<q> | wip:<q> | finished:<q> | failed:<q> | canceled:<q> | deferred:<q> | scheduled:<q>

    @property
    def status(self) -> str | None:
        return self.fields.get("status")

    def last_reason(self) -> str:
        for r in reversed(self.results):
            if r.get("type") == FAILED:
                return str(r.get("exc_string") or "")
        return ""


def _decode_result(entry: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": int(entry.get(b"type", b"0"))}
    if b"return_value" in entry:
        try:
            out["return_value"] = pickle.loads(base64.b64decode(entry[b"return_value"]))
        except Exception as exc:
            out["return_value"] = f"<undecodable: {exc}>"
    if b"exc_string" in entry:
        try:
            out["exc_string"] = zlib.decompress(base64.b64decode(entry[b"exc_string"])).decode()
        except Exception as exc:
            out["exc_string"] = f"<undecodable: {exc}>"
    out["worker_name"] = entry.get(b"worker_name", b"").decode()
    out["execution_id"] = entry.get(b"execution_id", b"").decode()
    return out


def gather(conn: redis.Redis, ids: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, list[dict[str, Any]]], dict[str, set[str]], dict[str, bytes]]:
    """Job hashes, results streams, list/registry membership and key types for ``ids``."""
    hashes: dict[str, dict[str, str]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    types: dict[str, bytes] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        pipe = conn.pipeline(transaction=False)
        for jid in chunk:
            pipe.type(f"rq:job:{jid}")
        kinds = pipe.execute()
        pipe = conn.pipeline(transaction=False)
        for jid, kind in zip(chunk, kinds, strict=True):
            types[jid] = kind
            if kind == b"hash":
                pipe.hgetall(f"rq:job:{jid}")
            else:
                pipe.echo(b"")
            pipe.xrange(f"rq:results:{jid}")
        replies = pipe.execute()
        for k, jid in enumerate(chunk):
            h, xs = replies[2 * k], replies[2 * k + 1]
            if isinstance(h, dict):
                hashes[jid] = {a.decode(): b.decode(errors="replace") for a, b in h.items() if a != b"data"}
            results[jid] = [_decode_result(e) for _, e in xs]
    places: dict[str, set[str]] = {}

    def add(jid: str, where: str) -> None:
        places.setdefault(jid, set()).add(where)

    for q in QUEUES:
        for jid in conn.lrange(f"rq:queue:{q}", 0, -1):
            add(jid.decode(), f"queue:{q}")
        for jid in conn.lrange(f"rq:queue:{q}:intermediate", 0, -1):
            add(jid.decode(), f"intermediate:{q}")
        for member in conn.zrange(f"rq:wip:{q}", 0, -1):
            add(member.decode().rpartition(":")[0], f"wip:{q}")
        for reg in ("finished", "failed", "canceled", "deferred", "scheduled"):
            for jid in conn.zrange(f"rq:{reg}:{q}", 0, -1):
                add(jid.decode(), f"{reg}:{q}")
    return hashes, results, places, types


def check(
    conn: redis.Redis, specs: list[JobSpec], ledger: Ledger, facts: Facts
) -> Verdict:
    ids = [s.id for s in specs] + list(facts.poison)
    hashes, results, places, types = gather(conn, ids)
    v = Verdict(jobs=len(specs))
    from tests.chaos.recovery import read_wip

    owners = {e.job_id: e.owner for e in read_wip(conn)}
    queued_twice = _duplicates_on_queues(conn)
    for spec in specs:
        view = JobView(spec, hashes.get(spec.id, {}), results.get(spec.id, []), places.get(spec.id, set()))
        if spec.parent is not None and _deferred_by_rq(
            view, hashes.get(spec.parent, {}).get("status"), ledger.runs(spec.id)
        ):
            v.terminal["deferred (parent failed)"] += 1
            continue
        before = len(v.problems)
        _check_job(conn, view, ledger, facts, v, owners.get(spec.id))
        if spec.id in queued_twice:
            v.problems.append(Problem("state", spec.id, f"on its queue {queued_twice[spec.id]} times (it would run again)"))
        if len(v.problems) > before and _stock_only(view, ledger, facts):
            v.rq_problems += v.problems[before:]
            del v.problems[before:]
    for jid, kind in facts.poison.items():
        _check_poison(jid, kind, hashes.get(jid), results.get(jid, []), places.get(jid, set()), types.get(jid), v)
    if ledger.malformed:
        v.problems.append(Problem("harness", None, f"{len(ledger.malformed)} ledger lines did not parse: {ledger.malformed[:3]}"))
    unknown = set(ledger.executions) - {s.id for s in specs}
    if unknown:
        v.problems.append(Problem("harness", None, f"ledger names jobs that were never enqueued: {sorted(unknown)[:5]}"))
    return v


def _stock_only(view: JobView, ledger: Ledger, facts: Facts) -> bool:
    """Only the stock worker ever ran or recorded this job: what happened to it is stock RQ's
    behaviour under the fault (e.g. its work-horse failing to write during a Redis restart), which
    the report lists apart; it is not evidence about asyncjobs."""
    execs = ledger.of(view.spec.id)
    names = {r["worker_name"] for r in view.results if r["worker_name"]}
    if view.fields.get("worker_name"):
        names.add(view.fields["worker_name"])
    unowned_by = facts.unowned.get(view.spec.id)
    return (
        all(e.pid not in facts.asyncjobs_pids for e in execs)
        and bool(names) and names <= facts.stock_names
        and (unowned_by is None or unowned_by in facts.stock_names)
    )


def _broken_executions(conn: redis.Redis, jid: str) -> tuple[set[str], set[str]]:
    """Execution ids listed for ``jid`` whose ``rq:execution:`` hash RQ cannot load:
    (present but without ``created_at``: re-created by a heartbeat, gone altogether: expired)."""
    partial, expired = set(), set()
    for eid in conn.zrange(f"rq:executions:{jid}", 0, -1):
        fields = conn.hgetall(f"rq:execution:{jid}:{eid.decode()}")
        if not fields:
            expired.add(eid.decode())
        elif b"created_at" not in fields:
            partial.add(eid.decode())
    return partial, expired


def _duplicates_on_queues(conn: redis.Redis) -> dict[str, int]:
    seen: Counter[str] = Counter()
    for q in QUEUES:
        seen.update(j.decode() for j in conn.lrange(f"rq:queue:{q}", 0, -1))
    return {j: n for j, n in seen.items() if n > 1}


def _deferred_by_rq(view: JobView, parent_status: str | None, runs: int) -> bool:
    """RQ defers a job enqueued with ``Dependency(allow_failure=True)`` when its parent is not
    *finished* at that moment, even if the parent has already failed (``Queue.setup_dependencies``),
    and nothing enqueues it after that.  So a child whose parent ended failed (killed, abandoned)
    may stay deferred, never run: RQ's semantics, not the worker's.  A deferred child of a
    finished parent is stranded."""
    only_deferred = bool(view.places) and all(p.startswith("deferred:") for p in view.places)
    return view.status == "deferred" and parent_status in ("failed", "stopped", "canceled") and only_deferred and runs == 0


def _natural_runs(spec: JobSpec) -> int:
    if spec.kind == "retry":
        return spec.fail_first + 1 if spec.fail_first <= spec.max_retries else spec.max_retries + 1
    return 1


def _check_job(
    conn: redis.Redis, view: JobView, ledger: Ledger, facts: Facts, v: Verdict, owner: str | None = None
) -> None:
    spec, jid = view.spec, view.spec.id
    problems = v.problems
    status = view.status
    v.terminal[status or "missing"] += 1
    execs = ledger.of(jid)
    crash = facts.crash_inflight.get(jid, 0)
    cold = [e for e in execs if e.token in facts.cold_tokens]
    clean = [e for e in execs if e.token not in facts.cold_tokens]  # executions no cold stop interrupted
    allowance = crash + len(cold)
    runs, effects = len(execs), sum(1 for e in execs if e.end == "E")
    raised = sum(1 for e in clean if e.end == "X")
    tokens = {e.token for e in execs if e.end == "E"}

    # --- lost / stranded ------------------------------------------------------
    if not view.fields:
        problems.append(Problem("lost", jid, f"its job hash is gone (places: {sorted(view.places) or 'none'})"))
        return
    if status not in TERMINAL:
        live = {p for p in view.places if p.split(":")[0] in ("queue", "intermediate", "wip", "deferred", "scheduled")}
        if live:
            whose = f" (execution owned by {owner!r})" if any(p.startswith("wip:") for p in live) else ""
            problems.append(Problem("stranded", jid, f"status {status!r}, still in {sorted(live)}{whose}; ran {runs}x"))
        else:
            problems.append(Problem("lost", jid, f"status {status!r} but on no queue and in no registry; ran {runs}x"))
        return

    # --- where it is --------------------------------------------------------
    q = view.fields.get("origin", spec.queue)
    expect_reg = {"finished": f"finished:{q}", "failed": f"failed:{q}", "stopped": f"failed:{q}", "canceled": f"canceled:{q}"}[status]
    if expect_reg not in view.places:
        problems.append(Problem("state", jid, f"{status} but not in {expect_reg.split(':')[0]} registry (in {sorted(view.places)})"))
    stray = {p for p in view.places if p != expect_reg and not p.startswith(("finished", "failed", "canceled"))}
    if jid in facts.left_in_intermediate:
        stray = {p for p in stray if not p.startswith("intermediate:")}
    if stray:
        problems.append(Problem("state", jid, f"{status} but still in {sorted(stray)}"))
    others = {p for p in view.places if p != expect_reg and p.startswith(("finished", "failed", "canceled"))}
    if others:
        problems.append(Problem("state", jid, f"{status} but also in {sorted(others)}"))

    # --- get_executions() ---------------------------------------------------
    try:
        Job.fetch(jid, connection=conn).get_executions()
    except Exception as exc:
        partial, expired = _broken_executions(conn, jid)
        stock_eids = {r["execution_id"] for r in view.results if r["worker_name"] in facts.stock_names}
        left = {eid for j, eid in facts.abandoned_executions if j == jid}
        problem = Problem(
            "executions", jid,
            f"Job.get_executions() raised {type(exc).__name__}: {exc} (re-created records {sorted(partial)}, "
            f"expired records {sorted(expired)})",
        )
        if (partial or expired) and partial <= stock_eids and expired <= left:
            # RQ's own behaviour on records no asyncjobs worker touches any more: stock's monitor
            # heart-beats its execution after the horse finished it (rq 2.12's maintain_heartbeats
            # writes unconditionally), and an execution a dead worker left behind expires 60 s
            # before its rq:executions entry (both TTLs are RQ's, docs/rq-protocol.md §5.3 and §10.2).
            v.rq_problems.append(problem)
        else:
            problems.append(problem)

    # --- terminal state vs plan and faults ----------------------------------
    reason = view.last_reason()
    # The worker that recorded the outcome: stock clears the hash's worker_name on failure, the
    # result entry keeps it.
    worker = next((r["worker_name"] for r in reversed(view.results) if r["worker_name"]), view.fields.get("worker_name", ""))
    failed_results = [r for r in view.results if r["type"] == FAILED]
    ok_results = [r for r in view.results if r["type"] == SUCCESSFUL]
    cause = ""
    if status == "canceled":
        if jid not in facts.canceled:
            problems.append(Problem("state", jid, "canceled, but the harness never canceled it"))
        if runs:
            problems.append(Problem("overrun", jid, f"canceled while queued, yet it ran {runs}x"))
        return
    stop_at = facts.stop_sent.get(jid)
    if status == "stopped":
        cause = "stop"
        if stop_at is None:
            problems.append(Problem("state", jid, "stopped, but no stop-job was sent for it"))
    elif stop_at is not None:
        # The stop was sent while an execution was running (its B was in the ledger) that runs for
        # seconds; it must end stopped (or killed), not finish long after the command.
        late = [e for e in execs if e.began < stop_at and e.end == "E" and (e.ended or 0) > stop_at + STOP_GRACE]
        if late:
            problems.append(Problem(
                "state", jid,
                f"stop-job ignored: sent while it ran, yet it finished {late[0].ended - stop_at:.1f}s later "  # type: ignore[operator]
                f"(pid {late[0].pid}), status {status}",
            ))
    if status == "failed":  # also after a stop that did not land (its worker was SIGKILLed first)
        if ABANDONED in reason:
            cause = "abandoned"
            if jid in facts.unowned:
                problems.append(Problem(
                    "stranded", jid,
                    f"started by {facts.unowned[jid]}, which never ran nor heart-beat it (RQ's maintenance "
                    f"failed it as abandoned once its deadline passed); ran {runs}x",
                ))
            elif not crash:
                problems.append(Problem("state", jid, "failed as abandoned, but no worker running it was killed"))
        elif STUCK in reason:
            cause = "stuck"
            if not facts.intermediate_failures_allowed:
                problems.append(Problem("state", jid, "failed as stuck in the intermediate list, and no fault explains it"))
        elif KILLED in reason:
            cause = "kill-horse"
            if worker not in facts.kill_horse_to:
                problems.append(Problem("state", jid, f"failed as a killed horse, but no kill-horse was sent to {worker!r}"))
        elif TIMEOUT in reason:
            cause = "timeout"
            if spec.kind != "timeout":
                problems.append(Problem("state", jid, f"a {spec.kind} job timed out: {reason.strip().splitlines()[-1]}"))
        elif PLANNED in reason:
            cause = "planned"
            if spec.kind not in ("boom", "retry") or (spec.kind == "retry" and spec.fail_first <= spec.max_retries):
                problems.append(Problem("state", jid, f"failed by its planned exception, but it should have finished: {reason.strip().splitlines()[-1]}"))
        else:
            problems.append(Problem("state", jid, f"failed with an unexpected reason: {(reason.strip().splitlines() or ['<empty>'])[-1]!r}"))
        if cause in ("abandoned", "stuck"):
            v.failed_by_maintenance += 1
    elif status == "finished":
        natural_fail = spec.kind in ("boom", "timeout") or (spec.kind == "retry" and spec.fail_first > spec.max_retries)
        if natural_fail:
            problems.append(Problem("state", jid, f"finished, but a {spec.kind} job must fail"))
    if status == "failed" and spec.kind in ("ok", "long", "child", "cancel", "probe") and cause not in ("abandoned", "stuck", "kill-horse"):
        problems.append(Problem("state", jid, f"an {spec.kind} job failed: {(reason.strip().splitlines() or ['?'])[-1]}"))
    if spec.kind in ("boom", "timeout") and status == "failed" and cause == "" and not reason:
        problems.append(Problem("results", jid, "failed without a reason"))

    # --- results ------------------------------------------------------------
    if status == "finished":
        if len(view.results) != 1 or len(ok_results) != 1:
            problems.append(Problem("results", jid, f"finished with {len(view.results)} result entries (types {[r['type'] for r in view.results]}), want one SUCCESSFUL"))
        for r in ok_results:
            if r.get("return_value") not in tokens:
                problems.append(Problem("results", jid, f"result {r.get('return_value')!r} is not the token of any completed run"))
    else:  # failed / stopped
        if len(failed_results) != 1 or len(view.results) != 1:
            problems.append(Problem("results", jid, f"{status} with {len(view.results)} result entries (types {[r['type'] for r in view.results]}), want one FAILED"))
        if not reason.strip():
            problems.append(Problem("results", jid, f"{status} without a reason"))

    # --- retries --------------------------------------------------------------
    if spec.kind == "retry":
        left_text = view.fields.get("retries_left", "")
        left = int(left_text) if left_text.lstrip("-").isdigit() else None
        if left is None:
            problems.append(Problem("retries", jid, f"retries_left is {left_text!r}"))
        else:
            consumed = spec.max_retries - left
            terminal_failure = 1 if (status == "failed" and cause in ("planned", "abandoned")) else 0
            lo, hi = raised - terminal_failure, raised + crash - terminal_failure
            if not (lo <= consumed <= hi) or left < 0:
                problems.append(Problem(
                    "retries", jid,
                    f"{consumed} of {spec.max_retries} retries consumed (retries_left={left}); the ledger saw "
                    f"{raised} planned failure(s), {crash} run(s) cut by a crash; want {lo}..{hi}",
                ))
            if status == "finished" and not (spec.fail_first <= consumed <= spec.fail_first + crash):
                problems.append(Problem("retries", jid, f"finished after {consumed} retries, planned {spec.fail_first}"))

    # --- side effects and runs -------------------------------------------------
    natural = _natural_runs(spec)
    if runs > natural + allowance:
        problems.append(Problem(
            "overrun", jid,
            f"ran {runs}x, planned {natural}, {crash} run(s) cut by a crash, {len(cold)} by a cold stop "
            f"(pids {sorted({e.pid for e in execs})})",
        ))
    elif runs > natural:
        v.rerun_after_crash += runs - natural
    max_effects = (1 if status == "finished" or cause in ("stop", "kill-horse") else 0) + allowance
    min_effects = 1 if status == "finished" else 0
    if effects > max_effects:
        problems.append(Problem("overrun", jid, f"side effect ran {effects}x as {status} ({cause or 'natural'}), at most {max_effects} allowed"))
    if effects < min_effects:
        problems.append(Problem("state", jid, f"finished, but its side effect never completed (ran {runs}x)"))
    if status == "finished" and spec.kind != "retry" and cause == "" and runs == 0:
        problems.append(Problem("state", jid, "finished without ever running"))


POISON_WITH_HASH = {"baddata", "badfunc", "badfield",
                    "deeptuple", "intdecimal", "listipv4", "build", "sysexit", "kbint"}  # the last six: "hostile"


def _check_poison(
    jid: str, kind: str, fields: dict[str, str] | None, results: list[dict[str, Any]], places: set[str],
    key_type: bytes | None, v: Verdict,
) -> None:
    live = {p for p in places if p.split(":")[0] in ("queue", "intermediate", "wip")}
    if live:
        v.problems.append(Problem("poison", jid, f"poison entry ({kind}) still in {sorted(live)}"))
    if kind in POISON_WITH_HASH:
        status = (fields or {}).get("status")
        failed = [r for r in results if r["type"] == FAILED and str(r.get("exc_string") or "").strip()]
        if status != "failed" or len(failed) != 1:
            v.problems.append(Problem("poison", jid, f"poison entry ({kind}) ended {status!r} with {len(results)} result(s), want failed with one reasoned FAILED result"))
    elif kind in ("string", "list") and key_type != kind.encode():
        v.problems.append(Problem("poison", jid, f"the {kind} key was changed to {key_type!r}"))
