"""A gallery in shards (docs/architecture.md, "Shards"): which shard holds a record, the
route table split per shard, a snapshot split and kept per shard, and the gather that
turns every shard's candidates into one answer, once, whoever gathers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import select

from biox.broker.memory import InMemoryExchange
from biox.broker.topology import bindings
from biox.database import session_for
from biox.gallery import gather, snapshot
from biox.gallery.gallery import Gallery, Hit, Probe
from biox.gallery.shards import Shard, merge, split
from biox.handlers.shard import ShardHandler
from biox.registry import Purpose
from biox.routes import ROUTES, routes_for
from biox.settings import Settings
from biox.sim import synth
from biox.store import ScatterRow
from biox.supervisor import Supervisor, parse_counts
from biox.wire import addresses
from biox.wire.codec import Envelope, decode_body
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.shards import ShardHit, ShardHits, ShardSearch
from tests.galleries import build as synthetic_galleries
from tests.unit.test_handlers import query_from, submit
from tests.unit.test_snapshot import enrol, probe
from tests.unit.test_workflows import (
    POLICIES,
    REGISTRY,
    REPLIES,
    SEED,
    SIZE,
    Hub,
    encounter,
    person_known_to,
)

RECEIVED = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_record_belongs_to_the_one_shard_its_id_names():
    shards = Shard.all_of(3)
    for record in (0, 1, 2, 3, 10, 2**40 + 1):
        assert [s.index for s in shards if s.holds(record)] == [record % 3]
    assert Shard().whole and Shard().holds(12345)
    assert not Shard(1, 2).whole


def test_each_shard_has_its_own_snapshot_directory_named_for_the_split(tmp_path):
    assert Shard().directory(tmp_path) == tmp_path
    assert Shard(1, 4).directory(tmp_path) == tmp_path / "shard-1-of-4"
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)
    with pytest.raises(ValueError):
        Shard(-1, 2)


def test_the_merge_keeps_the_best_of_every_shard_ties_by_record_id():
    a = [Hit(4, 0.9, {}), Hit(8, 0.5, {})]
    b = [Hit(3, 0.9, {}), Hit(1, 0.7, {}), Hit(5, 0.2, {})]
    assert [h.record_id for h in merge([*a, *b], 3)] == [3, 4, 1]
    assert [h.record_id for h in merge([*b, *a], 10)] == [3, 4, 1, 8, 5]
    assert merge([], 3) == []


# --- the route table, split per shard ---------------------------------------------------------


def test_unsharded_there_is_no_shard_queue_and_sharded_one_per_shard():
    assert routes_for(1) is ROUTES
    assert not [r for r in ROUTES.queues if r.startswith("shard")]
    table = routes_for(3)
    assert [r for r in table.queues if r.startswith("shard")] == ["shard.0", "shard.1", "shard.2"]
    assert table.kinds_of("shard.2") == ("shard.search",)
    assert table.kinds_of("query") == ("query", "shard.hits")
    assert table.queue_for("shard", 1).role == "shard.1"
    assert table.queue_for("query", 1).role == "query"
    with pytest.raises(ValueError, match="not sharded"):
        ROUTES.queue_for("shard", 0)
    with pytest.raises(ValueError, match="no queue"):
        table.queue_for("matcher", 0)


def test_a_shard_queue_of_any_split_is_named_whatever_the_table():
    """A dead letter of ``us.shard.5`` stays readable after a change of BIOX_SHARDS."""
    named = ROUTES.queue_named("shard.5")
    assert named is not None and (named.role, named.takes) == ("shard.5", "shard")
    assert ROUTES.kinds_of("shard.5") == ("shard.search",)
    assert ROUTES.queue_named("query.1") is None
    assert ROUTES.queue_named("shard.x") is None
    with pytest.raises(KeyError):
        ROUTES.kinds_of("nothing")


def test_one_publish_reaches_every_shard_and_the_hits_the_query_queue():
    key = addresses.routing_key("us", "shard.search")
    bound = bindings("us", ["us", "mx"], routes_for(2), [5])
    assert {(q, s) for q, s, k in bound if k == key} == {
        ("us.shard.0", "biox.us"),
        ("us.shard.1", "biox.us"),
    }
    hits = addresses.routing_key("us", "shard.hits")
    assert {q for q, _, k in bound if k == hits} == {"us.query"}
    assert not [b for b in bound if b[0] == "us.audit" and "shard" in b[2]]  # not audited
    assert not [b for b in bindings("us", ["us"], ROUTES, [5]) if b[0].startswith("us.shard")]


def test_a_shard_that_is_not_in_the_split_is_refused_at_start():
    with pytest.raises(ValueError, match="BIOX_SHARD=2 is not a shard of BIOX_SHARDS=2"):
        Settings(shards=2, shard=2)
    with pytest.raises(ValueError):
        Settings(shards=0)


def test_the_supervisor_runs_a_worker_per_shard_with_its_shard():
    counts = parse_counts(["shard.1=2"], shards=2)
    assert (counts["shard.0"], counts["shard.1"], counts["query"]) == (1, 2, 1)
    with pytest.raises(ValueError, match=r"shard\.2"):
        parse_counts(["shard.2=1"], shards=2)
    sup = Supervisor("us", {"shard.1": 1, "query": 1}, shards=2)
    assert sup._argv("shard.1")[-6:] == ["worker", "shard", "--participant", "us", "--shard", "1"]
    assert sup._argv("query")[-3:] == ["query", "--participant", "us"]


# --- snapshots per shard ------------------------------------------------------------------------


def small_gallery(ids: list[int]) -> Gallery:
    gallery = Gallery()
    gallery.enroll(ids, [probe(i) for i in ids])
    return gallery


def test_a_split_puts_every_identity_in_its_shard_once_with_the_same_templates():
    ids = list(range(100, 130))
    whole = small_gallery(ids)
    parts = dict(split(whole, 3))
    assert sorted(parts) == Shard.all_of(3)
    for shard, part in parts.items():
        mine = np.asarray([i for i in ids if shard.holds(i)], dtype=np.int64)
        assert part.size == len(mine)
        assert part.holds(mine).all()
        others = np.asarray([i for i in ids if not shard.holds(i)], dtype=np.int64)
        assert not part.holds(others).any()
        np.testing.assert_array_equal(part.face.vectors(mine), whole.face.vectors(mine))
        [hits] = part.search([probe(int(mine[0]))])
        assert hits[0].record_id == mine[0]


def test_a_split_of_an_ivf_gallery_trains_each_shard_for_its_own_size():
    ids = list(range(1, 401))
    whole = Gallery.for_size(len(ids), "ivf", 10, 4)
    probes = [probe(i) for i in ids]
    whole.train(
        np.stack([p.face for p in probes]),
        np.stack([v for p in probes for v in p.fingers.values()]),
    )
    whole.enroll(ids, probes)
    for shard, part in split(whole, 2, "ivf", 10, 4):
        assert part.kind == "ivf" and part.face.trained and part.size == 200
        [hits] = part.search([probe(shard.index + 2)])
        assert hits[0].record_id == shard.index + 2


def test_a_shards_snapshot_holds_its_records_and_its_mark_passes_the_others(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    settings = Settings(data_dir=tmp_path, shards=2, gallery_sync_s=0)
    gallery_dir = tmp_path / "gallery"
    seqs = enrol(db, [10, 11, 12, 13, 15])
    with session_for(db) as s:
        done = snapshot.refresh_all(s, gallery_dir, settings, create=True)
    assert done is not None and done.added == 5
    even = Gallery.load(Shard(0, 2).directory(gallery_dir))
    odd = Gallery.load(Shard(1, 2).directory(gallery_dir))
    assert (even.size, odd.size) == (2, 3)
    for shard in Shard.all_of(2):  # both passed every row, read or not
        assert snapshot.mark_of(shard.directory(gallery_dir)).seq == max(seqs)
    assert not Gallery.exists(gallery_dir)  # no whole snapshot was asked for


def test_a_purge_rewrites_every_snapshot_on_disk_and_keeps_the_tombstones_one_lacks(tmp_path):
    """The whole snapshot left from before a split, and an earlier split's, lose a deleted
    record too: no snapshot left behind keeps its template."""
    from biox.agreement.ledgers import Tombstone

    db = f"sqlite:///{tmp_path / 'mx.db'}"
    gallery_dir = tmp_path / "gallery"
    enrol(db, [20, 21, 22, 23])
    with session_for(db) as s:
        snapshot.refresh_all(s, gallery_dir, Settings(data_dir=tmp_path), create=True)
        snapshot.refresh_all(s, gallery_dir, Settings(data_dir=tmp_path, shards=3), create=True)
        s.add(Tombstone(record_id=21, cause="deletion"))
        s.commit()
        assert [sh for sh in snapshot.on_disk(gallery_dir, 2)] == [
            Shard(),
            Shard(0, 2),
            Shard(1, 2),
            Shard(0, 3),
            Shard(1, 3),
            Shard(2, 3),
        ]
        assert snapshot.tombstone_seq(gallery_dir, 2) == 0
        done = snapshot.refresh_all(s, gallery_dir, Settings(data_dir=tmp_path, shards=2))
    assert done is not None and done.removed == 2  # the whole and shard 0 of 3
    assert not Gallery.load(gallery_dir).holds(np.asarray([21])).any()
    assert not Gallery.load(Shard(0, 3).directory(gallery_dir)).holds(np.asarray([21])).any()
    assert not Shard(0, 2).directory(gallery_dir).exists()  # not created by a purge
    assert snapshot.tombstone_seq(gallery_dir, 2) == 1


def test_a_shard_follows_the_enrolments_of_its_own_records_only(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    follower = snapshot.Follower(Gallery(), snapshot.Mark(), 0, Shard(1, 2))
    seqs = enrol(db, [31, 32, 33])
    with session_for(db) as s:
        assert follower.catch_up(s) == 2
        assert follower.mark.seq == max(seqs) and follower.seen == set(seqs)
        enrol(db, [34])
        assert follower.catch_up(s) == 0  # shard 0's: passed, not read
    assert follower.gallery.holds(np.asarray([31, 33, 32, 34])).tolist() == [
        True,
        True,
        False,
        False,
    ]


# --- scatter and gather -----------------------------------------------------------------------


def query_inbound(message_id: str = "m-1") -> Inbound:
    """us's query to mx, as mx's consume loop admitted it."""
    envelope, query = query_from(submit(9))
    return Inbound(replace(envelope, message_id=message_id), query)


def hits_from(search: ShardSearch, shard: int, found: list[tuple[int, float]], size: int = 10):
    msg = ShardHits(
        search=search,
        shard=shard,
        gallery_size=size,
        search_ms=1.5 + shard,
        hits=[ShardHit(record_id=r, fused=f, scores={"face": f}) for r, f in found],
    )
    env = Envelope(f"h-{shard}", "shard.hits", "shard.hits/1", "mx", "mx", "q")
    return Inbound(env, msg)


def scattered(db: str, shards: int = 2, message_id: str = "m-1") -> ShardSearch:
    row, out = gather.scatter(query_inbound(message_id), RECEIVED, shards, "mx")
    with session_for(db) as s:
        s.add(row)
        s.commit()
    assert out.routing_key == "mx.shard.search" and out.exchange == "biox.mx"
    return decode_body(ShardSearch, out.envelope.schema, out.body)


def test_the_last_shard_in_makes_the_answer_from_every_shards_candidates(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    search = scattered(db)
    assert search.query_message_id == "m-1" and search.shards == 2
    with session_for(db) as s:
        first = gather.gather(s, [hits_from(search, 1, [(7, 0.4), (9, 0.8)], 40)], 3, "mx")
        s.commit()
        assert first == ["waiting"]
    with session_for(db) as s:
        [done] = gather.gather(s, [hits_from(search, 0, [(2, 0.6)], 60)], 3, "mx")
        s.commit()
        assert isinstance(done, gather.Gathered)
        assert [h.record_id for h in done.hits] == [9, 2, 7]
        assert (done.gallery_size, done.search_ms, done.received) == (100, 2.5, RECEIVED)
        assert done.query.envelope.message_id == "m-1"
        assert done.query.envelope.sender == "us"  # the partner who asked, as admitted
        assert s.get(ScatterRow, "us/m-1") is None  # the answer is the record from here


def test_a_shards_hits_seen_twice_or_after_the_answer_change_nothing(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    search = scattered(db, shards=3)
    with session_for(db) as s:
        out = gather.gather(
            s, [hits_from(search, 0, [(3, 0.5)]), hits_from(search, 0, [(3, 0.5)])], 3, "mx"
        )
        assert out == ["waiting", "repeated"]
        wrong = hits_from(search, 2, [])
        wrong.message.shard = 5  # a shard of no such split
        assert gather.gather(s, [wrong], 3, "mx") == ["repeated"]
        s.commit()
        row = s.get(ScatterRow, "us/m-1")
        assert row is not None and row.arrived == [0] and len(row.hits) == 1
    with session_for(db) as s:
        other = scattered(db, shards=2, message_id="m-2")
        s.delete(s.get(ScatterRow, "us/m-2"))
        s.commit()
        assert gather.gather(s, [hits_from(other, 0, [])], 3, "mx") == ["unknown"]


def test_two_workers_gathering_the_last_shards_at_once_cannot_both_miss_the_other(tmp_path):
    """Each read the row with one shard missing; the second to write loses and runs again
    (the consume loop reruns a batch on ``StaleDataError``), then completes it."""
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    search = scattered(db, shards=2)
    a, b = session_for(db), session_for(db)
    with a as sa, b as sb:
        assert gather.gather(sa, [hits_from(search, 0, [(1, 0.3)])], 3, "mx") == ["waiting"]
        assert gather.gather(sb, [hits_from(search, 1, [(2, 0.4)])], 3, "mx") == ["waiting"]
        sa.commit()
        with pytest.raises(StaleDataError):
            sb.commit()
    with session_for(db) as s:
        [done] = gather.gather(s, [hits_from(search, 1, [(2, 0.4)])], 3, "mx")
        assert isinstance(done, gather.Gathered) and [h.record_id for h in done.hits] == [2, 1]


def test_a_shard_worker_searches_its_part_and_says_which_shard_it_is(tmp_path):
    settings = Settings(data_dir=tmp_path, shards=2, shard=1, gallery_sync_s=3600)
    gallery = small_gallery([41, 43, 45])
    handler = ShardHandler("mx", gallery, settings, Shard(1, 2))
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    search = scattered(db, shards=2)
    search = search.model_copy(
        update={"query": search.query.model_copy(update={"biometrics": synth.capture(3, 43, 1)})}
    )
    env = Envelope("s-1", "shard.search", "shard.search/1", "mx", "mx", "q")
    with session_for(db) as s:
        handler.follower.synced_at = float("inf")
        [effects] = handler.search([Inbound(env, search)], s)
    [out] = effects.outgoing
    assert out.routing_key == "mx.shard.hits"
    body = decode_body(ShardHits, out.envelope.schema, out.body)
    assert (body.shard, body.gallery_size) == (1, 3)
    assert body.hits[0].record_id == 43
    assert body.search.query_message_id == "m-1"


def test_a_search_scattered_to_another_split_is_refused_by_name(tmp_path):
    settings = Settings(data_dir=tmp_path, shards=3, gallery_sync_s=3600)
    handler = ShardHandler("mx", Gallery(), settings, Shard(0, 3))
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    search = scattered(db, shards=2)
    env = Envelope("s-1", "shard.search", "shard.search/1", "mx", "mx", "q")
    with session_for(db) as s:
        handler.follower.synced_at = float("inf")
        [error] = handler.search([Inbound(env, search)], s)
    assert isinstance(error, PermanentError) and error.reason is Reason.misaddressed
    assert "scattered to 2 shards, this is 0 of 3" in str(error)


def test_probe_of_a_query_is_what_the_shard_searches():
    """The query carried whole: a shard reads the same templates the query worker checked."""
    inb = query_inbound()
    row, out = gather.scatter(inb, RECEIVED, 2, "mx")
    assert (row.key, row.query_id, row.shards, row.arrived) == (
        "us/m-1",
        inb.message.query_id,
        2,
        [],
    )
    search = decode_body(ShardSearch, out.envelope.schema, out.body)
    assert search.query == inb.message
    assert Probe.from_biometrics(search.query.biometrics).face is not None


# --- the whole exchange, sharded and not -------------------------------------------------------


def hub_with(tmp: Path, shards: int) -> Hub:
    """The in-memory exchange over the same synthetic galleries, each participant's split
    into ``shards`` by ``biox gallery split``'s code (none when 1)."""
    config = Settings(shards=shards).model_copy(update={"data_dir": tmp, "registry_refresh_s": 0})
    synthetic_galleries(config, ("us", "mx", "sv"), SIZE, SEED)
    for code in ("us", "mx", "sv") if shards > 1 else ():
        snapshot.split_snapshot(config.gallery_dir(code), shards, config)
    exchange = InMemoryExchange(config, registry=REGISTRY, policies=POLICIES)
    exchange.declare_queue(REPLIES)
    return Hub(exchange)


def answers(hub: Hub, encounters: list) -> list[tuple]:
    """What the encounter system was told, per encounter and partner, without the ids and
    times that differ between two runs."""
    hub.run(encounters)
    out = []
    for e in encounters:
        for o in hub.latest(e.envelope.correlation_id).outcomes:
            out.append(
                (
                    o.partner,
                    o.status.value,
                    o.reason_code,
                    [(c.identity_ref, c.fused_score, c.scores, c.evidence) for c in o.candidates],
                )
            )
    return out


def test_a_sharded_exchange_answers_every_query_as_an_unsharded_one(tmp_path):
    """Matches, no matches, declines and gray-zone cases; mx and sv each split in three:
    the same answers, and nothing left waiting."""
    rng = np.random.default_rng(5)
    people = [person_known_to("mx", derogatory=False), person_known_to("sv")]
    people += [person_known_to("mx", sealed=True)]
    people += [synth.stranger(SEED, dict.fromkeys(("us", "mx", "sv"), SIZE), rng) for _ in range(3)]
    people += [synth.known_to("sv", SIZE, rng) for _ in range(4)]

    def submissions() -> list:
        return [
            encounter("us", n, encounter_id=f"us-E-{i}", purpose=Purpose.enforce)
            for i, n in enumerate(people)
        ]

    plain = answers(hub_with(tmp_path / "one", 1), submissions())
    sharded_hub = hub_with(tmp_path / "three", 3)
    sharded = answers(sharded_hub, submissions())
    assert sharded == plain
    statuses = {status for _, status, _, _ in sharded}
    assert {"match", "no_match"} <= statuses
    for code in ("mx", "sv"):
        with sharded_hub.session(code) as s:
            assert s.exec(select(ScatterRow)).all() == []  # every scatter gathered
    searched = [m for m in sharded_hub.sent("shard.hits")]
    assert len(searched) == 3 * len(sharded_hub.sent("shard.search"))


def test_a_scatter_no_shard_ever_answered_goes_with_the_dead_letters(tmp_path):
    """Its search dead-lettered (a split changed under it): the row of ids and scores is
    purged with the dead letters' retention, a recent one is kept."""
    from datetime import timedelta

    from biox.agreement import retention

    db = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(db) as s:
        s.add(ScatterRow(key="us/old", query_id="q1", shards=2, scattered_at=RECEIVED))
        s.add(ScatterRow(key="us/new", query_id="q2", shards=2, scattered_at=RECEIVED))
        s.commit()
        later = RECEIVED + timedelta(days=30, seconds=1)
        s.get(ScatterRow, "us/new").scattered_at = later - timedelta(days=1)
        s.commit()
        counts = retention.purge(s, later, ages=retention.Ages(dead_letter_days=30))
        s.commit()
        assert counts["scatters"] == 1
        assert [r.key for r in s.exec(select(ScatterRow))] == ["us/new"]
