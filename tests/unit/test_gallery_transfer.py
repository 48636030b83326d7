"""Gallery import and export (docs/gallery.md): bad rows named by number and left out,
an interrupted import finished by running it again, an export that imports back the
same, and imported identities found by a running matcher without a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlmodel import func, select

from biox.database import session_for
from biox.gallery import templates
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.transfer import SCHEMA, export_file, import_file, parse
from biox.sim import synth
from biox.store import EnrolledTemplates, Record
from biox.wire.messages import Biometrics, Face

SEED = 31
SEEN = {
    "encountered_at": datetime(2025, 3, 1, tzinfo=UTC),
    "country": "mx",
    "type": "border",
    "location": "TIJ",
}
#: a file someone else wrote need not declare identity_ref non-null
LOOSE = SCHEMA.set(0, pa.field("identity_ref", pa.string(), nullable=True))


def identity(n: int, **change) -> dict:
    bio = synth.capture(SEED, n, context=0, quality=90)
    who = synth.person(SEED, n).biographic
    row = {
        "identity_ref": f"MX-IMP-{n}",
        "person_centric_id": f"mx-pcn-{n}",
        "face": {"algorithm": bio.face.algorithm, "template": bio.face.template},
        "fingers": [f.model_dump(exclude={"quality"}) for f in bio.fingerprints[:2]],
        "irises": [i.model_dump() for i in bio.irises],
        "biographic": who.model_dump(),
        "encounters": [
            {
                "encountered_at": datetime(2025, 3, 1, tzinfo=UTC),
                "country": "mx",
                "type": "border",
                "location": "TIJ",
            }
        ],
        "derogatory": ["visa overstay"] if n % 2 else [],
        "releasable": n % 5 != 0,
        "retain_until": None,
    }
    row.update(change)
    return row


def write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=LOOSE), path, row_group_size=7)
    return path


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mx.db'}"


def count(db: str, model) -> int:
    with session_for(db) as s:
        return s.exec(select(func.count()).select_from(model)).one()


BAD = {
    3: (
        {
            "face": {"algorithm": "biox-face-512/1", "template": b"\1" * 2047},
            "fingers": [],
            "irises": [],
        },
        "template_size: face biox-face-512/1: 2047 bytes, expected 2048",
    ),
    5: ({"face": None, "fingers": [], "irises": []}, "no template"),
    8: ({"identity_ref": "MX-IMP-1"}, "identity_ref 'MX-IMP-1' appears twice in the file (row 1)"),
    9: (
        {"face": {"algorithm": "vendor/9", "template": b"\1" * 2048}, "fingers": [], "irises": []},
        "unknown_algorithm: face algorithm 'vendor/9'",
    ),
    11: ({"biographic": {"sex": "Q"}}, "sex: Input should be 'F', 'M' or 'X'"),
    12: ({"identity_ref": None}, "identity_ref is missing"),
}


def test_bad_rows_are_named_by_number_and_the_others_go_in(tmp_path, db):
    rows = [identity(n) for n in range(1, 16)]
    for number, (change, _) in BAD.items():
        rows[number - 1].update(change)
    path = write(tmp_path / "mx.parquet", rows)
    with session_for(db) as s:
        report = import_file(s, "mx", path, batch_size=4)
    assert (report.rows, report.imported, report.already) == (15, 15 - len(BAD), 0)
    assert [n for n, _ in report.errors] == sorted(BAD)
    for (number, why), (expected_number, (_, said)) in zip(
        report.errors, sorted(BAD.items()), strict=True
    ):
        assert (number == expected_number and why.startswith(said)) or said in why, (number, why)
    assert count(db, Record) == count(db, EnrolledTemplates) == 15 - len(BAD)
    with session_for(db) as s:
        r = s.exec(select(Record).where(Record.identity_ref == "MX-IMP-2")).one()
    assert (r.source, r.person_centric_id, r.derogatory, r.releasable) == (
        "mx",
        "mx-pcn-2",
        [],
        True,
    )
    assert r.encounters == [
        {
            "encountered_at": "2025-03-01T00:00:00Z",
            "country": "mx",
            "type": "border",
            "location": "TIJ",
        }
    ]
    who = synth.person(SEED, 2).biographic
    assert r.biographic == who.model_dump(mode="json", exclude_none=True)


def test_an_interrupted_import_finishes_when_run_again_without_duplicates(tmp_path, db):
    path = write(tmp_path / "mx.parquet", [identity(n) for n in range(1, 26)])

    def stop_after_two_batches(n: int, seen=[0]) -> None:  # noqa: B006 - the count
        seen[0] += 1
        if seen[0] == 2:
            raise KeyboardInterrupt

    with session_for(db) as s, pytest.raises(KeyboardInterrupt):
        import_file(s, "mx", path, batch_size=10, progress=stop_after_two_batches)
    assert count(db, Record) == 20  # two batches committed
    with session_for(db) as s:
        again = import_file(s, "mx", path, batch_size=10)
    assert (again.imported, again.already, again.errors) == (5, 20, [])
    assert count(db, Record) == count(db, EnrolledTemplates) == 25
    with session_for(db) as s:
        ids = sorted(s.exec(select(Record.id)).all())
    assert ids == list(range(1, 26))  # dense, each once


def test_an_export_imports_back_the_same_identities_and_templates(tmp_path, db):
    """Identities imported (templates kept as sent) and identities in the snapshot only
    (templates read back from the indexes) both come out; what partners sent does not."""
    write(tmp_path / "in.parquet", [identity(n) for n in range(1, 6)])
    with session_for(db) as s:
        import_file(s, "mx", tmp_path / "in.parquet")
        snapshot = Gallery()
        probe = synth.capture(SEED, 40, context=0, quality=90)
        snapshot.enroll([100], [Probe.from_biometrics(probe)])
        s.add(Record(id=100, identity_ref="MX-SNAP-100", source="mx", biographic={}))
        s.add(Record(id=101, identity_ref="US-ENR-1", source="us", biographic={}))
        s.commit()
        written = export_file(s, "mx", snapshot, tmp_path / "out.parquet")
    assert written == 6
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["identity_ref"] for r in out] == [
        *(f"MX-IMP-{n}" for n in range(1, 6)),
        "MX-SNAP-100",
    ]
    assert out[0]["face"]["template"] == identity(1)["face"]["template"]  # exactly as imported
    snap = out[-1]
    back = templates.vector(snap["face"]["algorithm"], "face", snap["face"]["template"])
    want = templates.vector(probe.face.algorithm, "face", probe.face.template)
    assert float(back @ want) == pytest.approx(1.0, abs=1e-5)  # the same vector, normalised
    assert [i["eye"] for i in snap["irises"]] == [i.eye for i in probe.irises]

    fresh = f"sqlite:///{tmp_path / 'again.db'}"
    with session_for(fresh) as s:
        report = import_file(s, "mx", tmp_path / "out.parquet")
    assert (report.imported, report.errors) == (6, [])
    with session_for(fresh) as s, session_for(db) as old:
        for ref in ("MX-IMP-3", "MX-SNAP-100"):
            a = s.exec(select(Record).where(Record.identity_ref == ref)).one()
            b = old.exec(select(Record).where(Record.identity_ref == ref)).one()
            assert a.model_dump(exclude={"id", "received_at"}) == b.model_dump(
                exclude={"id", "received_at"}
            )


def test_imported_identities_are_found_by_a_running_matcher(tmp_path, db):
    from biox.handlers.matcher import MatcherHandler
    from biox.policy.release import Policies
    from biox.registry import Registry
    from biox.settings import Settings

    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    matcher = MatcherHandler(
        "mx",
        Registry.load(settings.registry),
        Gallery(),
        settings,
        Policies.load(settings.policy).of("mx"),
    )
    with session_for(db) as s:
        assert matcher.catch_up(s) == 0  # running, before the import
        import_file(s, "mx", write(tmp_path / "mx.parquet", [identity(n) for n in range(1, 9)]))
        assert matcher.catch_up(s) == 8
        assert matcher.catch_up(s) == 0  # each once
        ids = {r.identity_ref: r.id for r in s.exec(select(Record))}
    probe = synth.capture(SEED, 6, context=77)
    [hits] = matcher.gallery.search([Probe.from_biometrics(probe)])
    assert hits[0].record_id == ids["MX-IMP-6"]
    face_only = Biometrics(face=Face(**probe.face.model_dump()))
    [hits] = matcher.gallery.search([Probe.from_biometrics(face_only)])
    assert hits[0].record_id == ids["MX-IMP-6"]


def test_a_row_is_parsed_as_an_import_reads_it():
    fields, bio = parse(identity(4, releasable=None, derogatory=None))
    assert fields["releasable"] is True and fields["derogatory"] == []
    assert bio.face is not None and len(bio.fingerprints) == 2
    assert np.frombuffer(bio.face.template, "<f4").shape == (512,)


def test_an_imported_date_of_birth_is_checked_as_a_submissions_is():
    from biox.gallery.transfer import RowError

    who = synth.person(SEED, 4).biographic.model_dump()
    for born in ("1990", "1990-02", "2000-02-29"):
        fields, _ = parse(identity(4, biographic={**who, "date_of_birth": born}))
        assert fields["biographic"]["date_of_birth"] == born
    for born in ("1990-02-30", "1990-13", "not-a-date"):
        with pytest.raises(RowError, match=f"{born!r} is not an ISO 8601 date"):
            parse(identity(4, biographic={**who, "date_of_birth": born}))


def test_an_export_reads_each_records_templates_from_its_shards_snapshot(tmp_path, db):
    """With the gallery in shards there is no whole snapshot: each identity's templates
    come from the snapshot of the shard its id names; one whose shard has none is said."""
    from biox.store import Record

    shards = [Gallery(), Gallery()]
    probes = {rid: synth.capture(SEED, 40 + rid, context=0, quality=90) for rid in (100, 101)}
    with session_for(db) as s:
        for rid, bio in probes.items():
            shards[rid % 2].enroll([rid], [Probe.from_biometrics(bio)])
            s.add(Record(id=rid, identity_ref=f"MX-SNAP-{rid}", source="mx", biographic={}))
        s.commit()
        assert export_file(s, "mx", lambda rid: shards[rid % 2], tmp_path / "out.parquet") == 2
        with pytest.raises(ValueError, match="record 101: its templates are in no snapshot"):
            export_file(s, "mx", lambda rid: shards[0] if rid % 2 == 0 else None, tmp_path / "x")
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for row, rid in zip(out, (100, 101), strict=True):
        back = templates.vector(row["face"]["algorithm"], "face", row["face"]["template"])
        face = probes[rid].face
        want = templates.vector(face.algorithm, "face", face.template)
        assert float(back @ want) == pytest.approx(1.0, abs=1e-5)


def test_a_file_that_cannot_be_imported_is_refused_whole_before_any_row(tmp_path, monkeypatch):
    """Not Parquet, or another layout (no identity_ref column): one line and exit 2, not a
    traceback, and not one refusal per row of a file every row of which would be refused.
    A column the import does not read is named before it starts (a misspelt one is data
    left behind)."""
    from typer.testing import CliRunner

    from biox.cli import app
    from biox.gallery.transfer import FileError, check_file

    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(FileError, match=r"^junk.parquet is not a readable Parquet file \("):
        check_file(junk)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"ref": ["MX-1"], "face": [b"x"]}), other)
    with pytest.raises(FileError) as no_ref:
        check_file(other)
    assert str(no_ref.value) == (
        "other.parquet has no identity_ref column (its columns: ref, face): "
        "docs/gallery.md, 'The file'"
    )
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({}), empty)
    with pytest.raises(FileError, match=r"has no identity_ref column \(its columns: none\)"):
        check_file(empty)
    rows = [identity(1), identity(2)]
    extra = pa.Table.from_pylist(rows, schema=SCHEMA).append_column(
        "biographics", pa.array([{"family_name": "X"}] * 2)
    )
    misspelt = tmp_path / "misspelt.parquet"
    pq.write_table(extra, misspelt)
    assert check_file(misspelt) == (2, ["biographics"])
    assert check_file(write(tmp_path / "fine.parquet", rows)) == (2, [])

    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    for path, said in (
        (junk, "junk.parquet is not a readable Parquet file"),
        (other, "other.parquet has no identity_ref column (its columns: ref, face)"),
    ):
        out = runner.invoke(app, ["gallery", "import", "-p", "mx", str(path)])
        assert out.exit_code == 2 and said in " ".join(out.output.split()), out.output
        assert "Traceback" not in out.output
    out = runner.invoke(app, ["gallery", "import", "-p", "mx", str(misspelt)])
    assert out.exit_code == 0, out.output
    assert "columns not read (docs/gallery.md): biographics" in out.output
    assert "2 imported" in out.output
