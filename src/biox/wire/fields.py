"""The field types every message is made of, and the wire's strictness about them.

Bytes and times have one encoding on the wire (msgpack ``bin`` and the timestamp
extension): decoding from the wire refuses anything else, so a template sent as text or
a date sent as an ISO string is refused at the door, with the field named.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

Code = Annotated[str, Field(pattern=r"^[a-z]{2}$", description="ISO 3166 alpha-2, lowercase")]
Id = Annotated[str, Field(min_length=1, max_length=128)]
# every text a partner or an encounter system writes has a bound (docs/security.md)
Short = Annotated[str, Field(max_length=64)]
Name = Annotated[str, Field(max_length=200)]
Text = Annotated[str, Field(max_length=2000)]


def _wire(kind: type, label: str) -> BeforeValidator:
    """Strict on the wire only (``codec.decode_body`` validates with the context
    ``{"wire": True}``): a template sent as text or a time sent as an ISO string is
    refused at the door with the field named, not coerced and failing later. Rows read
    back from the database (JSON) are still coerced."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("wire") and not isinstance(value, kind):
            raise ValueError(f"must be {label}, not {type(value).__name__}")
        return value

    return BeforeValidator(check)


#: raw bytes: msgpack ``bin`` (format family 0xc4-0xc6), never a string
Bytes = Annotated[bytes, _wire(bytes, "msgpack bin (raw bytes)")]
#: an instant: msgpack timestamp (extension type -1), never a string or a number
Timestamp = Annotated[datetime, _wire(datetime, "a msgpack timestamp (extension type -1)")]


PARTIAL_DATE = r"^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$"
_PARTIAL_DATE = re.compile(PARTIAL_DATE)


def _partial_date(value: str, info: ValidationInfo) -> str:
    """A date of birth as the contract writes it, checked where it comes in (the wire, a
    gallery import: the context ``{"wire": True}``), not on rows read back, so a value
    stored before the check still reads. A month 13 or a 30 February is refused by name:
    it would be kept, released and searched as it came."""
    if not (info.context and info.context.get("wire")):
        return value
    try:  # the missing month and day as the first: a date that exists, or ValueError
        if not _PARTIAL_DATE.fullmatch(value):
            raise ValueError
        date.fromisoformat((value + "-01-01")[:10])
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 date: YYYY, YYYY-MM or YYYY-MM-DD"
        ) from None
    return value


#: a date of birth, whole or partial (``1990``, ``1990-02``, ``1990-02-28``)
PartialDate = Annotated[
    str,
    Field(
        max_length=64,  # Short's bound, on every read: a longer value stored before still reads
        description="ISO 8601 date, may be partial: YYYY, YYYY-MM or YYYY-MM-DD",
        json_schema_extra={"pattern": PARTIAL_DATE},
    ),
    AfterValidator(_partial_date),
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(when: datetime) -> datetime:
    """A time from outside (a typed option, an imported file) in UTC: one without a zone
    is taken as UTC, as biox writes every time; one with a zone is converted. Times read
    from the database are already so (``store.UTCDateTime``)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False)
