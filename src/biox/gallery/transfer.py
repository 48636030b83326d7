"""A participant's own identities in and out of its gallery: one Parquet file, one row
per identity (docs/gallery.md has the columns).

Import streams the file by batches; each row is checked as a submission's templates are
(``templates.check``) and its biographic data as a message's; a bad row is reported with
its row number and the others go in. Rows are written in one transaction per batch as an
identity record (``source`` = the participant itself) and its templates; running
matchers pick the templates up within ``BIOX_GALLERY_SYNC_S``, as they do enrolments, so
nothing is stopped. An identity already present (by ``identity_ref``) is skipped, which
makes an interrupted import resumable by running it again.

Export writes the participant's own identities only (``source`` = itself): what came
from partners is theirs (§20-21) and leaves only by the agreement's paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError
from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from biox.gallery import templates
from biox.gallery.gallery import Gallery
from biox.store import EnrolledTemplates, Record
from biox.wire import biometrics
from biox.wire.errors import PermanentError
from biox.wire.fields import as_utc
from biox.wire.messages import Biographic, Biometrics, EncounterRecord


def _struct(**fields: pa.DataType) -> pa.StructType:
    return pa.struct(list(fields.items()))


_BIOGRAPHIC = pa.struct([(name, pa.string()) for name in Biographic.model_fields])
_FACE = _struct(algorithm=pa.string(), template=pa.binary())
_FINGER = _struct(position=pa.int8(), algorithm=pa.string(), template=pa.binary())
_IRIS = _struct(eye=pa.string(), algorithm=pa.string(), code=pa.binary(), mask=pa.binary())
_SEEN = _struct(
    encountered_at=pa.timestamp("us", tz="UTC"),
    country=pa.string(),
    type=pa.string(),
    location=pa.string(),
)
#: the file's columns; only ``identity_ref`` and one template are required
SCHEMA = pa.schema(
    [
        pa.field("identity_ref", pa.string(), nullable=False),
        pa.field("person_centric_id", pa.string()),
        pa.field("face", _FACE),
        pa.field("fingers", pa.list_(_FINGER)),
        pa.field("irises", pa.list_(_IRIS)),
        pa.field("biographic", _BIOGRAPHIC),
        pa.field("encounters", pa.list_(_SEEN)),
        pa.field("derogatory", pa.list_(pa.string())),
        pa.field("releasable", pa.bool_()),
        pa.field("retain_until", pa.timestamp("us", tz="UTC")),
    ]
)
#: record ids of imported identities stay below this (enrolled query data is hashed above)
DENSE_LIMIT = 1 << 32


class RowError(ValueError):
    pass


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def parse(row: dict[str, Any]) -> tuple[dict[str, Any], Biometrics]:
    """One row as record fields and templates, or a ``RowError`` that says what is wrong."""
    ref = row.get("identity_ref")
    if not ref or not isinstance(ref, str) or len(ref) > 128:
        raise RowError("identity_ref is missing or longer than 128 characters")
    try:
        bio = Biometrics.model_validate(
            _drop_nulls(
                {
                    "face": row.get("face"),
                    "fingerprints": row.get("fingers") or [],
                    "irises": row.get("irises") or [],
                }
            )
        )
        biographic = Biographic.model_validate(  # checked as a submission's are
            _drop_nulls(row.get("biographic") or {}), context={"wire": True}
        )
        encounters = [
            EncounterRecord.model_validate(_drop_nulls(e)).model_dump(
                mode="json", exclude_none=True
            )
            for e in row.get("encounters") or []
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RowError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc
    if bio.is_empty():
        raise RowError("no template: a face, a finger or an iris is needed")
    try:
        templates.check(bio)
    except PermanentError as exc:
        raise RowError(f"{exc.reason.value}: {exc.detail}") from exc
    retain = row.get("retain_until")
    fields = {
        "identity_ref": ref,
        "person_centric_id": row.get("person_centric_id"),
        "biographic": biographic.model_dump(mode="json", exclude_none=True),
        "encounters": encounters,
        "derogatory": [str(d) for d in row.get("derogatory") or []],
        "releasable": True if row.get("releasable") is None else bool(row["releasable"]),
        "retain_until": as_utc(retain) if retain else None,
    }
    return fields, bio


def rows(path: Path, batch_size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """The file's rows in batches, numbered from 1 as a person reading it counts them."""
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        out = []
        for row in batch.to_pylist():
            number += 1
            out.append((number, row))
        yield out


class FileError(ValueError):
    """The file as a whole cannot be imported: said once, not once per row."""


def check_file(path: Path) -> tuple[int, list[str]]:
    """Its rows, and the columns it has that the import does not read (a misspelt one is
    data left behind). A file that is not Parquet, or has no ``identity_ref`` column (another
    export's layout, a column named otherwise), is refused before any row is read: every
    row would be refused alike."""
    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise FileError(f"{path.name} is not a readable Parquet file ({exc})") from exc
    names = list(meta.schema_arrow.names)
    if "identity_ref" not in names:
        has = ", ".join(names) or "none"
        raise FileError(
            f"{path.name} has no identity_ref column (its columns: {has}): "
            "docs/gallery.md, 'The file'"
        )
    return int(meta.metadata.num_rows), [n for n in names if n not in SCHEMA.names]


def import_file(
    session: Session,
    participant: str,
    path: Path,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    next_id = (
        session.exec(select(func.max(Record.id)).where(col(Record.id) < DENSE_LIMIT)).one() or 0
    ) + 1
    now = datetime.now(UTC)
    first_row: dict[str, int] = {}  # identity_ref -> the row it was first read from
    for batch in rows(path, batch_size):
        refs = [r.get("identity_ref") for _, r in batch]
        present = set(
            session.exec(select(Record.identity_ref).where(col(Record.identity_ref).in_(refs)))
        )
        records, stored = [], []
        for number, row in batch:
            report.rows += 1
            ref = row.get("identity_ref")
            try:
                if isinstance(ref, str) and ref in first_row:
                    raise RowError(
                        f"identity_ref {ref!r} appears twice in the file (row {first_row[ref]})"
                    )
                if isinstance(ref, str):
                    first_row[ref] = number
                if ref in present:  # imported by an earlier run: resumed
                    report.already += 1
                    continue
                fields, bio = parse(row)
            except RowError as exc:
                report.errors.append((number, str(exc)))
                continue
            records.append(
                {
                    "id": next_id,
                    "source": participant,
                    "received_at": now,
                    "conditions": [],
                    **fields,
                }
            )
            blob = msgpack.packb(bio.model_dump(mode="python"), use_bin_type=True)
            stored.append({"record_id": next_id, "biometrics": blob, "enrolled_at": now})
            next_id += 1
        if records:
            session.execute(insert(Record), records)
            session.execute(insert(EnrolledTemplates), stored)
        session.commit()  # a batch at a time: an interruption keeps what was committed
        report.imported += len(records)
        if progress:
            progress(len(batch))
    return report


def _templates_from(gallery: Gallery | None, rid: int) -> dict[str, Any]:
    """A snapshot identity's templates, read back from the indexes (vectors normalised)."""
    if gallery is None:
        raise ValueError(
            f"record {rid}: its templates are in no snapshot (a shard's snapshot missing?)"
        )
    ids = np.asarray([rid], dtype=np.int64)
    face = None
    if gallery.face.present.mask(ids)[0]:
        vec = gallery.face.vectors(ids)[0]
        face = {"algorithm": biometrics.FACE.name, "template": templates.vector_bytes(vec)}
    fingers = [
        {
            "position": pos,
            "algorithm": biometrics.FINGER.name,
            "template": templates.vector_bytes(ix.vectors(ids)[0]),
        }
        for pos, ix in gallery.fingers.items()
        if ix.present.mask(ids)[0]
    ]
    irises = [
        {
            "eye": eye,
            "algorithm": biometrics.IRIS.name,
            "code": iris.codes[rid].tobytes(),
            "mask": iris.masks[rid].tobytes(),
        }
        for eye, iris in gallery.irises.items()
        if rid in iris.codes
    ]
    return {"face": face, "fingers": fingers, "irises": irises}


def export_file(
    session: Session,
    participant: str,
    gallery: Gallery | Callable[[int], Gallery | None] | None,
    path: Path,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """The participant's own identities, as ``import_file`` reads them; returns the count.
    Templates come from the enrolment rows when kept there, else from the snapshot:
    ``gallery``, or the one a function of the record id names (a shard's)."""
    holding = gallery if callable(gallery) else (lambda _rid: gallery)
    written = 0
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
        last = -1
        while True:
            chunk = session.exec(
                select(Record)
                .where(Record.source == participant, col(Record.id) > last)
                .order_by(col(Record.id))
                .limit(batch_size)
            ).all()
            if not chunk:
                break
            last = chunk[-1].id
            kept = {
                t.record_id: t.biometrics
                for t in session.exec(
                    select(EnrolledTemplates).where(
                        col(EnrolledTemplates.record_id).in_([r.id for r in chunk])
                    )
                )
            }
            out = []
            for r in chunk:
                if r.id in kept:
                    bio = Biometrics.model_validate(msgpack.unpackb(kept[r.id]))
                    tpl: dict[str, Any] = {
                        "face": bio.face.model_dump(exclude={"quality"}) if bio.face else None,
                        "fingers": [f.model_dump(exclude={"quality"}) for f in bio.fingerprints],
                        "irises": [i.model_dump() for i in bio.irises],
                    }
                else:
                    tpl = _templates_from(holding(r.id), r.id)
                out.append(
                    {
                        "identity_ref": r.identity_ref,
                        "person_centric_id": r.person_centric_id,
                        **tpl,
                        "biographic": {k: r.biographic.get(k) for k in Biographic.model_fields},
                        "encounters": [
                            {**e, "encountered_at": datetime.fromisoformat(e["encountered_at"])}
                            for e in r.encounters
                        ],
                        "derogatory": list(r.derogatory),
                        "releasable": r.releasable,
                        "retain_until": r.retain_until,
                    }
                )
            writer.write_table(pa.Table.from_pylist(out, schema=SCHEMA))
            written += len(out)
            if progress:
                progress(len(out))
    return written


def stats(session: Session, gallery: Gallery | None) -> dict[str, Any]:
    """What a gallery holds, by source, and what each index has."""
    by_source = dict(
        session.exec(select(Record.source, func.count()).group_by(col(Record.source))).all()
    )
    blocked = session.exec(select(func.count()).where(col(Record.blocked_at).is_not(None))).one()
    pending = session.exec(select(func.count()).select_from(EnrolledTemplates)).one()
    out: dict[str, Any] = {
        "records": sum(by_source.values()),
        "by_source": by_source,
        "blocked": blocked,
        "not_releasable": session.exec(
            select(func.count()).where(col(Record.releasable).is_(False))
        ).one(),
        "templates_kept_in_database": pending,
    }
    if gallery is not None:
        out["snapshot"] = {
            "kind": gallery.kind,
            "face": gallery.face.ntotal,
            "fingers": {p: ix.ntotal for p, ix in gallery.fingers.items() if ix.ntotal},
            "irises": {eye: ix.ntotal for eye, ix in gallery.irises.items() if ix.ntotal},
        }
    return out
