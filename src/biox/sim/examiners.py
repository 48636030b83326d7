"""Examiners played by a script, for the demo and the tests (§8).

A scripted examiner takes the oldest open case like a person with ``biox review next``
would, compares the probe's biographic data with each candidate's, and sends its decision
through the same message a person's decision is.
"""

from __future__ import annotations

import threading

from biox.broker.link import Link
from biox.broker.publisher import Publisher
from biox.database import session_for
from biox.queries import examiners
from biox.queries.examiners import Side
from biox.settings import Settings
from biox.store import ReviewCaseRow
from biox.wire.messages import ReviewVerdict


def biographic_examiner(
    case: ReviewCaseRow, candidates: list[Side]
) -> tuple[ReviewVerdict, str | None]:
    """A scripted examiner for demos and tests: a candidate whose name and date of birth
    agree with what the subject gave at the encounter is the same person."""
    probe = case.probe_biographic
    keys = ("family_name", "given_names", "date_of_birth")
    for side in candidates:
        bio = side.record.biographic if side.record else {}
        if all(probe.get(k) and probe.get(k) == bio.get(k) for k in keys):
            return ReviewVerdict.match, side.identity_ref
    return ReviewVerdict.no_match, None


class ScriptedExaminers(threading.Thread):
    """Examiners at every participant, played by a script (§8): each takes the oldest open
    case, compares the probe's biographic data with each candidate's, and decides."""

    def __init__(self, url: str, settings: Settings, codes: list[str]) -> None:
        super().__init__(name="scripted-examiners", daemon=True)
        self.url = url
        self.settings = settings
        self.codes = codes
        self.stop = threading.Event()
        self.decided: list[tuple[str, ReviewCaseRow, ReviewVerdict, str | None]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        link = Link(self.url, name="scripted-examiners").start()
        try:
            publisher = Publisher(link)
            while not self.stop.is_set():
                if not any([self._one(code, publisher) for code in self.codes]):
                    self.stop.wait(0.3)
        except BaseException as exc:  # reported by the demo, which then fails
            self.failure = exc
        finally:
            link.close()

    def _one(self, code: str, publisher: Publisher) -> bool:
        examiner = f"examiner-{code}-1"
        with session_for(self.settings.database_for(code)) as session:
            case = examiners.take_next(session, examiner, self.settings.review_lease_s)
            if case is None:
                return False
            verdict, ref = biographic_examiner(case, examiners.sides(session, case))
        publisher.send([examiners.decision_message(code, case, verdict, ref, examiner)])
        self.decided.append((code, case, verdict, ref))
        return True
