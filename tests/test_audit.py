"""The audit trail (issue 8): signals with their features, risk decisions and operator actions
are journaled with correlation ids, and ``kestrel journal show --order ID`` tells one order's story.

Real SQLite journals in ``tmp_path``, the real actor tree (:func:`kestrel.node.session_tree`),
the real control channel on loopback, and the real CLI.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from actors.audit import AuditActor
from actors.order_book import Book, rebuild
from actors.strategies.ema_cross import EmaCross
from adapters.control_http import ControlServer, generate_token
from engine import topics
from engine.bus import Bus
from engine.clock import LiveClock, SimClock
from engine.config import parse_config
from engine.journal import DEFERRED_COMMIT_S, Journal, JournalEntry, JournalWriteFailed
from engine.messages import (
    ActorStats,
    AuditRecord,
    Fill,
    OperatorAction,
    OperatorActionRecorded,
    OperatorCommand,
    OperatorReply,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    Recover,
    RecoveryReport,
    RiskDecision,
    Side,
    SignalRecorded,
    StatsQuery,
    SubmitOrder,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel import cli
from kestrel.node import AUDIT, ORDER_MANAGER, RISK, SessionOptions, run_replay_session, session_tree
from tests.helpers import random_walk_day

T0 = 1_700_000_000_000_000_000
PARAMS = {"fast": 3, "slow": 7}
"""Fast EMAs: the walk crosses often, so the session journals dozens of orders."""


def _config(files: list[Path]) -> Any:
    # One approved order per second: the crosses that come quicker are refused (ORDER_RATE),
    # so the trail holds approvals and rejections. Frequent snapshots land between audit records.
    return parse_config(
        {
            "data": {"files": [str(f) for f in files]},
            "strategy": {"params": PARAMS},
            "risk": {"max_orders_per_s": 1},
            "journal": {"snapshot_every": 25},
        },
        "test",
    )


async def _entries(path: Path) -> list[JournalEntry]:
    async with await Journal.open_readonly(path, LiveClock()) as reader:
        return [entry async for entry in reader.read()]


class Replayed:
    """One short replay on a journal, shared by the tests that only read it."""

    def __init__(self, path: Path, digest: str | None, orders: int, rejected: int) -> None:
        self.path = path
        self.digest = digest
        self.orders = orders
        self.rejected = rejected
        self.entries = asyncio.run(_entries(path))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    folder = tmp_path_factory.mktemp("audit")
    files = random_walk_day(folder / "feed", quotes=1500, seed=4)
    path = folder / "journal.db"
    summary = asyncio.run(run_replay_session(_config(files), SessionOptions(journal=path)))
    return Replayed(path, summary.journal_sha256, summary.orders, summary.rejected)


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["journal", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- (a) a replay journals the trail


def test_a_replay_journals_every_signal_with_features_and_every_decision(replayed: Replayed) -> None:
    records = [e.record for e in replayed.entries]
    signals = [r for r in records if isinstance(r, SignalRecorded)]
    decisions = [r for r in records if isinstance(r, RiskDecision)]
    submitted = [r for r in records if isinstance(r, OrderSubmitting)]
    assert replayed.orders > 10 and replayed.rejected > 10
    # One signal and one decision per intent; every order has both.
    assert len(signals) == len(decisions) == replayed.orders + replayed.rejected
    assert {s.intent_id for s in signals} == {d.intent_id for d in decisions}
    approved = [d for d in decisions if d.approved]
    rejected = [d for d in decisions if not d.approved]
    assert len(approved) == len(submitted) == replayed.orders
    assert {d.intent_id for d in approved} == {s.order.intent_id for s in submitted}
    assert len(rejected) == replayed.rejected and {d.reason for d in rejected} == {"ORDER_RATE"}
    assert all(d.detail and d.reference_price is None for d in rejected)
    assert all(d.reference_price is not None and d.reason == "" and d.inputs["notional"] for d in approved)
    assert all(d.trading_state is TradingState.ACTIVE for d in decisions)

    for signal in signals:
        assert signal.strategy == "ema-cross" and signal.trigger == "BestBidOffer"
        features = signal.features
        assert set(features) >= {"ema_fast", "ema_slow", "bid", "ask", "mid", "cross", "position"}
        # The cross the strategy saw is the one its features show, to the last bit of the floats.
        fast, slow = float(features["ema_fast"]), float(features["ema_slow"])
        assert (fast > slow) == (features["cross"] == "up") == (signal.side is Side.BUY)
        assert Decimal(features["bid"]) < Decimal(features["ask"])
        assert float(features["mid"]) == float(Decimal(features["bid"]) + Decimal(features["ask"])) / 2.0
        assert signal.ts_trigger <= signal.ts_init


def test_signal_and_decision_are_journaled_before_the_order_they_explain(replayed: Replayed) -> None:
    seq_of: dict[tuple[str, str], int] = {}
    for entry in replayed.entries:
        record = entry.record
        if isinstance(record, SignalRecorded | RiskDecision):
            seq_of[(type(record).__name__, record.intent_id)] = entry.seq
        elif isinstance(record, OrderSubmitting):
            intent = record.order.intent_id
            assert seq_of[("SignalRecorded", intent)] < seq_of[("RiskDecision", intent)] < entry.seq


def test_the_audit_trail_keeps_the_journal_deterministic(replayed: Replayed, tmp_path: Path) -> None:
    files = random_walk_day(tmp_path / "feed", quotes=1500, seed=4)
    again = asyncio.run(run_replay_session(_config(files), SessionOptions(journal=tmp_path / "again.db")))
    assert again.journal_sha256 == replayed.digest is not None


def test_show_order_tells_the_story_signal_decision_submitting_fill(
    replayed: Replayed, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted = next(e.record for e in replayed.entries if isinstance(e.record, OrderSubmitting))
    cid, intent = submitted.order.client_order_id, submitted.order.intent_id

    code, out, err = _run_cli(capsys, "show", str(replayed.path), "--order", cid)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"order {cid} (ema-cross ") and intent in lines[0]
    kinds = [line.split()[3] for line in lines[2:] if line.split()[0].isdigit()]
    assert kinds[:4] == ["SignalRecorded", "RiskDecision", "OrderSubmitting", "OrderUpdate"]
    assert "Fill" in kinds and kinds.index("Fill") > kinds.index("OrderSubmitting")
    assert kinds[-1] == "OrderUpdate"
    seqs = [int(line.split()[0]) for line in lines[2:] if line.split()[0].isdigit()]
    assert seqs == sorted(seqs)
    signal_line = next(line for line in lines if "SignalRecorded" in line)
    assert "features:" in signal_line and "ema_fast=" in signal_line and "ema_slow=" in signal_line
    assert "approved at" in next(line for line in lines if "RiskDecision" in line)
    assert lines[-1] == f"final: {cid} filled, {submitted.order.qty} of {submitted.order.qty} filled"

    # As JSON, and found from the intent id just the same.
    code, out, err = _run_cli(capsys, "show", str(replayed.path), "--order", intent, "--json")
    assert code == 0, err
    story = orjson.loads(out)
    assert story["id"] == intent and story["client_order_ids"] == [cid] and story["intent_ids"] == [intent]
    assert story["orders"][0]["status"] == "filled"
    events = story["events"]
    assert [e["kind"] for e in events][:3] == ["SignalRecorded", "RiskDecision", "OrderSubmitting"]
    assert all(e["role"] == "order" for e in events)  # nothing else happened while it lived
    assert events[0]["record"]["features"]["cross"] in ("up", "down")
    assert events[1]["record"]["approved"] is True
    fills = [e for e in events if e["kind"] == "Fill"]
    assert fills and sum(Decimal(f["record"]["qty"]) for f in fills) == submitted.order.qty


def test_show_order_of_a_rejected_intent_ends_with_the_rejection(
    replayed: Replayed, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = next(e.record for e in replayed.entries if isinstance(e.record, RiskDecision) and not e.record.approved)
    code, out, err = _run_cli(capsys, "show", str(replayed.path), "--order", refused.intent_id)
    assert code == 0, err
    assert "SignalRecorded" in out and "rejected ORDER_RATE" in out and "OrderSubmitting" not in out
    assert out.splitlines()[-1].startswith("final: rejected by risk: ORDER_RATE")


# ---------------------------------------------------------------- (c) recovery ignores the trail


async def test_recovery_from_a_journal_with_audit_records_rebuilds_the_same_book(replayed: Replayed) -> None:
    entries = replayed.entries
    audit = [e for e in entries if isinstance(e.record, AuditRecord)]
    assert audit and audit[-1].seq > entries[0].seq  # interleaved with the order records
    without = Book()
    for entry in entries:
        if not isinstance(entry.record, AuditRecord):
            without.apply(entry.seq, entry.record)
    assert without.last_seq == max(e.seq for e in entries if not isinstance(e.record, AuditRecord))
    everything = Book()
    for entry in entries:
        everything.apply(entry.seq, entry.record)
    async with await Journal.open_readonly(replayed.path, LiveClock()) as reader:
        rebuilt, snapshot_seq, _ = await rebuild(reader)
    assert snapshot_seq > 0  # from a snapshot, then the events after it
    # Audit records move nothing, not even last_seq: the book is the one the order manager kept.
    assert everything == without == rebuilt
    assert len(rebuilt.orders) == replayed.orders


def test_a_restart_on_a_journal_with_audit_records_recovers_and_verifies(
    replayed: Replayed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "restart.db"
    journal.write_bytes(replayed.path.read_bytes())
    files = random_walk_day(tmp_path / "feed", quotes=300, seed=5)
    second = asyncio.run(run_replay_session(_config(files), SessionOptions(journal=journal)))
    assert second.recovery is not None
    report: RecoveryReport = second.recovery
    assert report.state is TradingState.ACTIVE and report.mismatches == []
    assert report.orders_known == replayed.orders
    code, out, err = _run_cli(capsys, "verify", str(journal))
    assert code == 0, out + err


# ---------------------------------------------------------------- (d) an unknown id


def test_an_unknown_id_is_a_clear_error_exit_2(replayed: Replayed, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_cli(capsys, "show", str(replayed.path), "--order", "no-such-order")
    assert code == cli.EXIT_USER_ERROR and out == ""
    assert "no order or intent 'no-such-order' in the journal" in err and "Traceback" not in err
    code, _, err = _run_cli(capsys, "show", str(replayed.path), "--order", "kestrel-1", "--limit", "3")
    assert code == cli.EXIT_USER_ERROR and "takes no --after or --limit" in err


# ---------------------------------------------------------------- (b) operator actions


class Engine:
    """The replay tree on a journal, recovered, with the control channel in front of risk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bus = Bus()
        self.clock = SimClock()
        self.clock.advance_to(T0)
        self.token = generate_token()
        self.journal: Journal
        self.server: ControlServer
        self.task: asyncio.Task[None]

    async def __aenter__(self) -> Engine:
        self.journal = await Journal.open(self.path, self.clock)
        config = parse_config({"strategy": {"params": PARAMS}}, "test")
        spec = session_tree(config, lambda: EmaCross.from_params("ema-cross", PARAMS), self.journal,
                            default_calendar="24/7")
        assert AUDIT in [child.name for child in spec.children]
        root = Supervisor(spec, self.bus, self.clock, random.Random(1))
        self.task = asyncio.create_task(root.run())
        await asyncio.wait_for(root.started(), 10)
        report: RecoveryReport = await self.bus.request(ORDER_MANAGER, Recover(), 10)
        assert report.state is TradingState.ACTIVE

        async def dispatch(command: OperatorCommand) -> OperatorReply:
            reply: OperatorReply = await self.bus.request(RISK, command)
            return reply

        self.server = ControlServer(dispatch, self.token, self.clock.time_ns)
        await self.server.start()
        return self

    async def post(self, action: str, body: dict[str, str]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.server.url}/control/{action}", json=body, headers=headers) as response,
        ):
            answer: dict[str, Any] = await response.json()
            return answer

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()
        await self.bus.idle()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.journal.close()


async def test_operator_commands_are_journaled_with_the_answer_and_never_the_token(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with Engine(path) as engine:
        halted = await engine.post("halt", {"reason": "feed looks wrong", "operator": "alice@desk"})
        refused = await engine.post("flatten", {"reason": "close it all", "operator": "alice@desk"})
        resumed = await engine.post("resume", {"reason": "feed fixed"})
        token = engine.token
    assert halted["accepted"] is True and refused["accepted"] is False and resumed["accepted"] is True

    entries = await _entries(path)
    actions = [e for e in entries if isinstance(e.record, OperatorActionRecorded)]
    records = [a.record for a in actions if isinstance(a.record, OperatorActionRecorded)]
    assert [(r.action, r.operator, r.reason, r.accepted) for r in records] == [
        (OperatorAction.HALT, "alice@desk", "feed looks wrong", True),
        (OperatorAction.FLATTEN, "alice@desk", "close it all", False),
        (OperatorAction.RESUME, "cli", "feed fixed", True),
    ]
    assert [r.state for r in records] == [TradingState.HALTED, TradingState.HALTED, TradingState.ACTIVE]
    assert "resume before flattening" in records[1].result and records[1].intents == []
    assert all(r.ts_command == r.ts_init == T0 for r in records)  # simulated time stands still here
    # The granted ones moved the journaled trading state; the audit record sits right by it.
    changes = [e for e in entries if isinstance(e.record, TradingStateChanged) and e.record.cause == "operator"]
    assert [c.record.state for c in changes if isinstance(c.record, TradingStateChanged)] == [
        TradingState.HALTED, TradingState.ACTIVE,
    ]
    assert changes[0].seq < actions[1].seq and changes[1].seq > actions[1].seq
    # The control token is nowhere in the journal: not in a record, not in the file.
    assert token not in repr([e.record for e in entries])
    assert await asyncio.to_thread(_files_holding, tmp_path, path.name, token.encode()) == []
    assert await asyncio.to_thread(_files_holding, tmp_path, path.name, b"feed looks wrong")  # the scan sees records


def _files_holding(folder: Path, prefix: str, needle: bytes) -> list[Path]:
    """The journal's files (database, WAL, lock …) whose bytes contain ``needle``."""
    return [f for f in folder.iterdir() if f.name.startswith(prefix) and needle in f.read_bytes()]


# ---------------------------------------------------------------- a failed audit write is logged


class _Node:
    """The audit actor alone on a journal: what it does when the journal cannot take a record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bus = Bus()
        self.journal: Journal
        self.task: asyncio.Task[None]
        self.root: Supervisor

    async def __aenter__(self) -> _Node:
        self.journal = await Journal.open(self.path, LiveClock())
        spec = SupervisorSpec("root", [ActorSpec(AUDIT, lambda: AuditActor(self.journal))])
        self.root = Supervisor(spec, self.bus, LiveClock(), random.Random(1))
        self.task = asyncio.create_task(self.root.run())
        await asyncio.wait_for(self.root.started(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.journal.close()


def _signal(n: int, padding: int = 0) -> SignalRecorded:
    return SignalRecorded(
        intent_id=f"s-{n}", strategy="s", symbol="XYZ", side=Side.BUY, qty=Decimal(1), order_type=OrderType.MARKET,
        features={"padding": "x" * padding}, trigger="BestBidOffer", ts_trigger=n, ts_init=n,
    )


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


async def test_a_failed_audit_write_is_logged_as_an_error_and_the_actor_keeps_going(
    tmp_path: Path, captured: list[MutableMapping[str, Any]]
) -> None:
    async with _Node(tmp_path / "journal.db") as node:
        await node.bus.publish(topics.AUDIT, _signal(0))
        await node.bus.idle()
        await node.journal.flush()
        await node.journal.limit_pages(1)  # the next page the file needs: SQLITE_FULL
        for n in range(1, 4):  # each record needs a page of its own
            await node.bus.publish(topics.AUDIT, _signal(n, padding=5000))
            await node.bus.idle()
        with pytest.raises(JournalWriteFailed, match="disk is full"):
            await node.journal.flush()
        stats: ActorStats = await node.bus.request(AUDIT, StatsQuery())
        crashes = sum(s.crashes for s in node.root.stats.values())
    assert crashes == 0
    assert stats.counters["appended"] >= 2 and stats.counters["committed"] == 1
    assert stats.counters["failed"] == 3  # the commit that failed, and the appends refused after it
    errors = [e for e in captured if e["event"] == "audit_record_not_journaled"]
    assert len(errors) == 3 and all(e["log_level"] == "error" for e in errors)
    assert sorted(e["intent_id"] for e in errors) == ["s-1", "s-2", "s-3"]  # a refusal can beat a callback
    assert all(e["kind"] == "SignalRecorded" and "JournalWriteFailed" in e["error"] for e in errors)
    entries = await _entries(tmp_path / "journal.db")
    assert [e.record for e in entries] == [_signal(0)]


def test_order_records_and_audit_records_are_told_apart() -> None:
    """The book's rule: every journal record is either one of its own or an audit record."""
    audit: tuple[type, ...] = (SignalRecorded, RiskDecision, OperatorActionRecorded)
    order: tuple[type, ...] = (OrderSubmitting, OrderUpdate, Fill, TradingStateChanged)
    assert all(issubclass(t, AuditRecord) for t in audit)
    assert not any(issubclass(t, AuditRecord) for t in order)


# ---------------------------------------------------------------- the journal's deferred rows


async def test_a_deferred_row_rides_in_the_next_ordinary_commit(tmp_path: Path) -> None:
    clock = SimClock()
    async with await Journal.open(tmp_path / "j.db", clock) as journal:
        signal = journal.append(_signal(1), deferred=True)
        await asyncio.sleep(0)  # a loop turn (risk deciding): the deferred row starts no commit
        assert journal.stats["commits"] == 0 and journal.pending == 1
        order = journal.append(_signal(2))
        assert await order == 2 and await signal == 1
        assert journal.stats["commits"] == 1 and journal.stats["max_group"] == 2  # one transaction, seq order


async def test_a_deferred_row_alone_is_committed_within_the_deferral(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.db", SimClock()) as journal:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(journal.append(_signal(1), deferred=True), 5) == 1
        assert loop.time() - started >= DEFERRED_COMMIT_S * 0.9  # it did wait for company …
        assert journal.stats["commits"] == 1  # … then went alone
        # Behind a commit in flight, deferred rows wait for the next ordinary one or the deferral.
        first = journal.append(_signal(2))
        late = journal.append(_signal(3), deferred=True)
        assert await first == 2 and await asyncio.wait_for(late, 5) == 3


async def test_flush_and_close_commit_deferred_rows_at_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with await Journal.open(path, SimClock()) as journal:
        journal.append(_signal(1), deferred=True)
        await journal.flush()
        assert journal.committed_seq == 1
        journal.append(_signal(2), deferred=True)
    assert [e.record for e in await _entries(path)] == [_signal(1), _signal(2)]


# ---------------------------------------------------------------- show --order: operator actions in the story


def _order(n: int, limit: str | None = None) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=f"t-{n}", intent_id=f"i-{n}", symbol="XYZ", side=Side.BUY, qty=Decimal(10),
        order_type=OrderType.LIMIT if limit else OrderType.MARKET, limit_price=Decimal(limit) if limit else None,
        time_in_force=TimeInForce.DAY, ts_init=T0,
    )


def _decision(n: int, strategy: str = "s") -> RiskDecision:
    return RiskDecision(
        intent_id=f"i-{n}", strategy=strategy, symbol="XYZ", side=Side.BUY, qty=Decimal(10), approved=True,
        reference_price=Decimal("10.00"), trading_state=TradingState.ACTIVE, inputs={"notional": "100.00"}, ts_init=T0,
    )


def _operator(action: OperatorAction, state: TradingState, intents: list[str] | None = None) -> OperatorActionRecorded:
    return OperatorActionRecorded(
        action=action, operator="alice@desk", reason=f"{action.value} it", accepted=True, result="done",
        state=state, intents=intents or [], ts_command=T0, ts_init=T0,
    )


def _update(n: int, status: OrderStatus) -> OrderUpdate:
    return OrderUpdate(client_order_id=f"t-{n}", venue_order_id=f"v-{n}", status=status, ts_event=T0, ts_recv=T0)


async def _write(path: Path, records: list[Any]) -> None:
    async with await Journal.open(path, SimClock()) as journal:
        for record in records:
            await journal.write(record)


def test_show_order_lists_the_operator_actions_journaled_while_the_order_lived(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.db"
    halted = TradingStateChanged(state=TradingState.HALTED, reason="operator halt", cause="operator", ts_init=T0)
    records = [
        _signal(1),  # intent s-1: rejected elsewhere, never an order (not part of t-1's story)
        SignalRecorded(
            intent_id="i-1", strategy="s", symbol="XYZ", side=Side.BUY, qty=Decimal(10), order_type=OrderType.LIMIT,
            limit_price=Decimal("9.50"), features={"ema_fast": "9.87", "bid": "9.99"}, trigger="BestBidOffer",
            ts_trigger=T0, ts_init=T0,
        ),
        _decision(1),
        OrderSubmitting(order=_order(1, "9.50"), strategy="s", sequence=1, ts_init=T0),  # seq 4
        _update(1, OrderStatus.NEW),
        _operator(OperatorAction.HALT, TradingState.HALTED),  # seq 6: during t-1's life
        halted,
        _update(1, OrderStatus.CANCELED),  # seq 8: the halt cancelled it
        _operator(OperatorAction.RESUME, TradingState.ACTIVE),  # after: not in the story
        _decision(2, "operator"),
        _operator(OperatorAction.FLATTEN, TradingState.REDUCING, ["i-2"]),  # seq 11: sent t-2
        OrderSubmitting(order=_order(2), strategy="operator", sequence=2, ts_init=T0),
    ]
    asyncio.run(_write(path, records))

    code, out, err = _run_cli(capsys, "show", str(path), "--order", "t-1")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[2:] if line.split()[0].isdigit()]
    assert [(int(r[0]), r[3]) for r in rows] == [
        (2, "SignalRecorded"), (3, "RiskDecision"), (4, "OrderSubmitting"), (5, "OrderUpdate"),
        (6, "*OperatorActionRecorded"), (7, "*TradingStateChanged"), (8, "OrderUpdate"),
    ]
    assert "operator alice@desk: halt (halt it); accepted: done; trading halted" in out
    assert "features: bid=9.99 ema_fast=9.87" in out and "buy 10 XYZ limit @ 9.50" in out
    assert out.splitlines()[-1] == "final: t-1 canceled, 0 of 10 filled"

    code, out, err = _run_cli(capsys, "show", str(path), "--order", "t-1", "--json")
    assert code == 0, err
    story = orjson.loads(out)
    assert [(e["seq"], e["role"]) for e in story["events"]] == [
        (2, "order"), (3, "order"), (4, "order"), (5, "order"), (6, "context"), (7, "context"), (8, "order"),
    ]
    assert story["orders"][0]["status"] == "canceled" and story["events"][4]["record"]["action"] == "halt"

    # A flatten's closing order: the operator action that sent it is in its story, and says so.
    code, out, err = _run_cli(capsys, "show", str(path), "--order", "i-2")
    assert code == 0, err
    assert "flatten (flatten it); accepted: done; trading reducing; sent this order (i-2)" in out
    assert out.splitlines()[-1] == "final: t-2 pending_new, 0 of 10 filled"
