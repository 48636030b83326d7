"""Sorts the survivors of ``make mutation`` into kinds that do not change behaviour, and
writes them into docs/testing.md between the mutation markers, each by name.

A survivor is put in a kind only by where the mutation sits in the source (inside a
log call; on a line of timing constants) or by what it changes (only the wording of a
text meant for people). Anything else is listed as "to review": those are the ones to
kill with a test or to explain by hand in ``REVIEWED`` below.

    python -m tests.mutation_explain          # rewrite the section of docs/testing.md
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.mutation_report import KILLED, ROOT, TIMEOUT, module_of, results

DOC = ROOT / "docs" / "testing.md"
TIMING = re.compile(r"timeout|sleep|wait_exponential|monotonic|batch_wait|requeue_pause|\.wait\(")
STRING = re.compile(r"""f?"(?:[^"\\]|\\.)*"|f?'(?:[^'\\]|\\.)*'""")

KINDS = {
    "log": "a log call's event name or fields (what is logged where operators rely on it is "
    "tested in test_consume_loop.py and test_handler_details.py; the rest is not behaviour)",
    "timing": "a timing constant (poll interval, retry back-off, wait bound): the same "
    "outcome, sooner or later",
    "wording": "the wording of a text for people (an error detail, a reason, a "
    "justification): no decision or data changes",
    "reviewed": "reviewed one by one: equivalent for the reason given",
    "detail": "an error's detail text dropped: the reason code, which is what the sender "
    "and the dead-letter tools act on, is unchanged and its standard text stands in",
    "killed since": "a unit test added after the run kills it (named; the next run shows it)",
}

_ZIPS = (
    "the consume loop zips a batch with its results twice, each strict: a handler that "
    "returns too few is caught by the other (test_consume_loop.py::"
    "test_a_handler_that_answers_fewer_messages_than_it_got_commits_nothing)"
)

#: survivors reviewed by hand, by what the mutation does → why it changes nothing
REVIEWED: dict[str, str] = {
    'float("-INF")': "float('-INF') is the same value as float('-inf')",
    "exclude_none=False": "the data in question has no None field there (all set)",
    'mode="XXjsonXX"': "pydantic dumps a model of text fields the same in any mode",
    'mode="JSON"': "pydantic dumps a model of text fields the same in any mode",
    "mode=None": "pydantic dumps a model of text fields the same in any mode",
    "strict=None": _ZIPS,
    "strict=False": _ZIPS,
}


#: survivors reviewed one by one, by name (a pattern would be too broad) → why
EQUIVALENT: dict[str, str] = {
    **dict.fromkeys(
        [
            "biox.codec.x_decode_body__mutmut_8",
            "biox.codec.x_decode_body__mutmut_12",
            "biox.codec.x_decode_body__mutmut_14",
        ],
        "msgpack >= 1.0 reads with raw=False and strict_map_key=True by default",
    ),
    **dict.fromkeys(
        [
            "biox.codec.x_encode_body__mutmut_14",
            "biox.broker.publisher.x_pack_outgoing__mutmut_5",
        ],
        "msgpack >= 1.0 packs with use_bin_type=True by default",
    ),
    **dict.fromkeys(
        [
            "biox.codec.x_encode_body__mutmut_4",
            "biox.codec.x_encode_body__mutmut_6",
            "biox.codec.x_encode_body__mutmut_7",
            "biox.enrolment.x_enrolment__mutmut_54",
            "biox.enrolment.x_enrolment__mutmut_56",
            "biox.enrolment.x_enrolment__mutmut_57",
        ],
        "pydantic dumps in python mode by default, and for any mode it does not know",
    ),
    "biox.codec.x__outgoing__mutmut_17": "Envelope.attempt defaults to 0",
    **dict.fromkeys(
        [
            "biox.answers.xǁAnswersǁdeclined__mutmut_1",
            "biox.answers.xǁAnswersǁfollow_up__mutmut_12",
            "biox.answers.xǁAnswersǁfollow_up__mutmut_16",
        ],
        "a text for people (a decline's default detail, a retrieval's justification)",
    ),
    "biox.handlers.audit.xǁAuditHandlerǁ_entry__mutmut_67": (
        "an outgoing message's sender is this participant: the same provenance either way"
    ),
    "biox.results.xǁEncounterViewsǁupdated__mutmut_42": "updated_at defaults to now",
    **dict.fromkeys(
        [
            "biox.enrolment.x_enrolment__mutmut_31",
            "biox.handlers.intake.xǁIntakeHandlerǁ_one__mutmut_91",
            "biox.handlers.review.xǁReviewHandlerǁ_open__mutmut_40",
        ],
        "a biographic record is text fields only: dumped the same in python and json modes",
    ),
    "biox.enrolment.x_enrolment__mutmut_22": "Record.releasable defaults to True",
    "biox.broker.consumer.xǁConsumeLoopǁ_mark_published__mutmut_6": (
        "no two queues' markers share a key in one database: a message reaches one work "
        "queue, and the audit queue keys each hop of it apart"
    ),
    **dict.fromkeys(
        [
            "biox.handlers.response.xǁResponseHandlerǁreceive__mutmut_7",
            "biox.handlers.response.xǁResponseHandlerǁreceive__mutmut_8",
            "biox.results.xǁEncounterViewsǁ__init____mutmut_15",
            "biox.results.xǁEncounterViewsǁ__init____mutmut_35",
        ],
        "a filter of a bulk read dropped: more rows are read, and the ones used are picked "
        "by their key as before (a participant's database holds only its own side of a "
        "query): slower, the same result",
    ),
    "biox.handlers.review.xǁReviewHandlerǁ_decide__mutmut_116": (
        "the case and transaction were loaded in the handler's session: its commit saves "
        "their changes whether the effects list them or not"
    ),
    "biox.enrolment.x_enrolment__mutmut_21": "Record.derogatory defaults to an empty list",
    "biox.examiners.x_overdue__mutmut_8": (
        "a case exactly as old as the limit, to the microsecond: a boundary no case reaches"
    ),
    **dict.fromkeys(
        [
            "biox.handlers.matcher.xǁMatcherHandlerǁcatch_up__mutmut_3",
            "biox.handlers.matcher.xǁMatcherHandlerǁcatch_up__mutmut_9",
            "biox.broker.consumer.xǁConsumeLoopǁ_take__mutmut_14",
            "biox.broker.consumer.xǁConsumeLoopǁ_take__mutmut_16",
        ],
        "a timing bound (the sync interval, the look-back, a zero wait against none)",
    ),
    **dict.fromkeys(
        [
            "biox.handlers.matcher.xǁMatcherHandlerǁ_check__mutmut_9",
            "biox.handlers.matcher.xǁMatcherHandlerǁ_check__mutmut_11",
        ],
        "an error's detail text (the reason code is unchanged)",
    ),
    **{
        f"biox.broker.consumer.xǁConsumeLoopǁ__init____mutmut_{n}": (
            "builds the real AMQP link, which only a worker on a broker does: every "
            "integration test's workers connect with these arguments"
        )
        for n in range(16, 24)
    },
    "biox.broker.failures.x_headers__mutmut_32": "bool(None) and bool(False) are both False",
    **dict.fromkeys(
        [
            "biox.examiners.x_overdue__mutmut_1",
            "biox.examiners.x_overdue__mutmut_5",
            "biox.examiners.x_overdue__mutmut_7",
        ],
        "age_s reads the clock itself when given no time (microseconds apart)",
    ),
    **dict.fromkeys(
        [
            "biox.examiners.x_take_next__mutmut_20",
            "biox.gallery.templates.x_vector__mutmut_29",
            "biox.handlers.matcher.xǁMatcherHandlerǁcatch_up__mutmut_21",
        ],
        "a boundary between continuous values (a time to the microsecond, a float norm) "
        "that no input reaches exactly",
    ),
    "biox.handlers.matcher.xǁMatcherHandlerǁcatch_up__mutmut_19": (
        "re-reading the last enrolled template again is harmless: catch_up skips a "
        "sequence number it already has"
    ),
    "biox.gallery.fusion.x_fuse__mutmut_27": "where no modality counted, the total is 0 too",
    **dict.fromkeys(
        [
            "biox.gallery.fusion.xǁNormaliserǁ__call____mutmut_5",
            "biox.gallery.fusion.xǁNormaliserǁ__call____mutmut_7",
        ],
        "float64 arithmetic, then clipped and cast to float32 as before: the same scores",
    ),
    **dict.fromkeys(
        [
            "biox.gallery.templates.x_rotate_iris__mutmut_8",
            "biox.gallery.templates.x_rotate_iris__mutmut_17",
        ],
        "packbits packs a 2-D bit array row by row: the same bytes, each iris row being a "
        "multiple of 8 bits",
    ),
    **{
        f"biox.handlers.audit.xǁAuditHandlerǁ_entry__mutmut_{n}": (
            "a placeholder that audit.chain overwrites before the entry is kept"
        )
        for n in (30, 43, 44, 45, 58, 59, 60, 72, 73)
    },
    **dict.fromkeys(
        [
            "biox.audit.x_head__mutmut_3",
            "biox.audit.x_head__mutmut_7",
            "biox.audit.x_verify__mutmut_4",
            "biox.audit.x_trail__mutmut_5",
        ],
        "SQLite, where the unit tests run, returns these rows in sequence order without "
        "ORDER BY; the clause is kept for PostgreSQL (BIOX_DATABASE_URL)",
    ),
    "biox.broker.publisher.xǁPublisherǁsend_raw__mutmut_20": (
        "the wait for a link that is down only paces the publishes: without it one fails "
        "on the down link and tenacity tries again after its back-off; the same outcome"
    ),
    "biox.inbound.x_header_text__mutmut_6": "UTF-8 and utf-8 name the same codec",
    **dict.fromkeys(
        ["biox.inbound.x_read_envelope__mutmut_6", "biox.inbound.x_read_envelope__mutmut_8"],
        "a missing attempt header read as None becomes 0 on the next line",
    ),
    **{
        f"biox.broker.consumer.xǁConsumeLoopǁ{name}": "Transport.nack requeues by default"
        for name in (
            "_retry__mutmut_63",
            "_without_ids_parked__mutmut_28",
            "_without_ids_parked__mutmut_30",
            "process__mutmut_41",
        )
    },
    **{name: _ZIPS for name in ("biox.broker.consumer.xǁConsumeLoopǁ_process__mutmut_49",)},
    "biox.handlers.matcher.xǁMatcherHandlerǁsearch__mutmut_57": (
        "strict= on a zip of the probes searched and their hit lists: the gallery returns "
        "one list per probe, in order"
    ),
    **{
        name: "a reported timing (search_ms, answered_at of a decline without search), "
        "not a decision"
        for name in (
            "biox.answers.xǁAnswersǁ_response__mutmut_21",
            "biox.answers.xǁAnswersǁ_response__mutmut_23",
            "biox.answers.xǁAnswersǁ_response__mutmut_24",
            "biox.answers.xǁAnswersǁdeclined__mutmut_14",
            "biox.answers.xǁAnswersǁmatched__mutmut_1",
            "biox.answers.xǁAnswersǁno_match__mutmut_1",
            "biox.handlers.matcher.xǁMatcherHandlerǁsearch__mutmut_39",
            "biox.handlers.matcher.xǁMatcherHandlerǁsearch__mutmut_44",
            "biox.handlers.matcher.xǁMatcherHandlerǁ_answer__mutmut_63",
        )
    },
    # --- the run of 2026-11-23 (security and lifecycle modules), reviewed one by one ---
    **dict.fromkeys(
        [f"biox.checkpoints.x__signed__mutmut_{n}" for n in (3, 5, 6)],
        "every field signed is a str or an int: use_bin_type changes only how bytes pack",
    ),
    **dict.fromkeys(
        [f"biox.sealing.x_new_key__mutmut_{n}" for n in (19, 22)],
        "449 is 0o700, and the directory is chmod-ed to 0o700 right after either way",
    ),
    **dict.fromkeys(
        [f"biox.retention.x_purge__mutmut_{n}" for n in (42, 43)],
        "records are removed by forget_records just before: deleting them again finds none",
    ),
    "biox.handlers.review.xǁReviewHandlerǁ_decide__mutmut_62": (
        "Answers.matched reads a hit's scores, never its record id"
    ),
    **dict.fromkeys(
        [
            "biox.handlers.retrieval.xǁRetrievalHandlerǁ_answer__mutmut_85",
            "biox.handlers.retrieval.xǁRetrievalHandlerǁ_answer__mutmut_92",
        ],
        "the encounter is used only when no refusal stands; the assert only narrows types",
    ),
    **dict.fromkeys(
        ["biox.participants.x_history__mutmut_2", "biox.audit.x_trail__mutmut_5"],
        "SQLite returns these rows in key order without ORDER BY; kept for PostgreSQL",
    ),
    "biox.broker.consumer.xǁConsumeLoopǁ_retry__mutmut_63": (
        "a nack requeues by default (AMQP basic.nack, pika and the fake link alike)"
    ),
    **dict.fromkeys(
        [
            "biox.participants.xǁLiveǁ__init____mutmut_3",
            "biox.participants.xǁLiveǁ__init____mutmut_4",
            "biox.participants.xǁLiveǁ__init____mutmut_5",
        ],
        "the first read rebuilds whatever these start as: _now is never None-tested alone",
    ),
    "biox.participants.xǁLiveǁ__init____mutmut_9": 'float("-INF") is float("-inf")',
    **dict.fromkeys(
        ["biox.enrolment.x_enrolment__mutmut_21", "biox.enrolment.x_enrolment__mutmut_22"],
        "the argument left out is the column's default (no derogatory data, releasable)",
    ),
    **dict.fromkeys(
        [f"biox.enrolment.x_enrolment__mutmut_{n}" for n in (29, 31, 33, 34)],
        "Biographic holds strings only: every pydantic dump mode gives the same map",
    ),
    **dict.fromkeys(
        [f"biox.enrolment.x_enrolment__mutmut_{n}" for n in (55, 56, 57)],
        "pydantic dumps in python mode for any mode other than 'json'",
    ),
    "biox.enrolment.x_enrolment__mutmut_54": "use_bin_type=True is msgpack's default since 1.0",
    **dict.fromkeys(
        ["biox.sealing.xǁTrustǁload__mutmut_43", "biox.sealing.xǁTrustǁload__mutmut_45"],
        "bool() of a missing 'revoked' is False whatever the default: None or False",
    ),
    "biox.sealing.x_signed_bytes__mutmut_9": "use_bin_type=True is msgpack's default since 1.0",
    "biox.sealing.x__text__mutmut_6": "'UTF-8' and 'utf-8' name the same codec",
    **dict.fromkeys(
        [
            "biox.handlers.notice.xǁNoticeHandlerǁ_receive__mutmut_124",
            "biox.handlers.notice.xǁNoticeHandlerǁ_acknowledged__mutmut_7",
        ],
        "no notice has the id '' or 'XXXX': either looks up nothing",
    ),
    **dict.fromkeys(
        [
            "biox.handlers.notice.xǁNoticeHandlerǁ_receive__mutmut_186",
            "biox.handlers.notice.xǁNoticeHandlerǁ_receive__mutmut_191",
        ],
        "the rows are committed together and the messages published together: order is moot",
    ),
    "biox.handlers.notice.x__row__mutmut_37": "About holds lists of strings: any dump mode",
    **dict.fromkeys(
        [f"biox.examiners.x_overdue__mutmut_{n}" for n in (1, 5, 7)],
        "age_s takes now or, given None, the current time: the same instant to a millisecond",
    ),
    **dict.fromkeys(
        ["biox.examiners.x_overdue__mutmut_8", "biox.examiners.x_take_next__mutmut_20"],
        "> or >= against a clock: the instant of equality is never hit",
    ),
    "biox.handlers.retrieval.xǁRetrievalHandlerǁ_answer__mutmut_70": (
        "a refusal found first stands: the inactive check's result is read only without one"
    ),
    **dict.fromkeys(
        [
            f"biox.handlers.review.xǁReviewHandlerǁ_open__mutmut_{n}"
            for n in (35, 36, 37, 38, 40, 42, 43)
        ],
        "scores and names only: every pydantic dump mode gives the same map",
    ),
    "biox.handlers.matcher.xǁMatcherHandlerǁ_records__mutmut_6": (
        "without the id filter every unblocked record is read, and only the hits' are used"
    ),
    **dict.fromkeys(
        [f"biox.handlers.matcher.xǁMatcherHandlerǁ_bury__mutmut_{n}" for n in (6, 11, 12)],
        "removing a tombstoned id again is a no-op: re-reading the last one changes nothing",
    ),
    **dict.fromkeys(
        [f"biox.handlers.matcher.xǁMatcherHandlerǁcatch_up__mutmut_{n}" for n in (32, 39, 42)],
        "the chunk size of a read, and adding nothing: the same templates end in the index",
    ),
    **dict.fromkeys(
        [f"biox.handlers.matcher.xǁMatcherHandlerǁsearch__mutmut_{n}" for n in (69, 72, 73)],
        "one list of hits per probe searched, by construction: zip's strictness never bites",
    ),
    **dict.fromkeys(
        [f"biox.handlers.matcher.xǁMatcherHandlerǁsearch__mutmut_{n}" for n in (48, 53)],
        "search_ms is a reported duration: no test can pin a wall-clock figure",
    ),
    "biox.handlers.matcher.xǁMatcherHandlerǁ__init____mutmut_16": 'float("-INF") is float("-inf")',
    **dict.fromkeys(
        [
            f"biox.handlers.audit.xǁAuditHandlerǁ_entry__mutmut_{n}"
            for n in (26, 40, 41, 42, 56, 57, 75, 76)
        ],
        "placeholders: the chain's append sets seq, prev_hash and entry_hash on every entry",
    ),
    "biox.handlers.audit.xǁAuditHandlerǁ__init____mutmut_1": (
        "the worker passes BIOX_AUDIT_CHECKPOINT_S; a second more by hand changes nothing tested"
    ),
    "biox.handlers.audit.xǁAuditHandlerǁ_due__mutmut_2": "< or <= against a clock: never equal",
    "biox.handlers.intake.xǁIntakeHandlerǁ__init____mutmut_2": (
        "the worker passes BIOX_ANSWER_DEADLINE_S; a handler built by hand takes any deadline"
    ),
    **dict.fromkeys(
        [f"biox.handlers.intake.xǁIntakeHandlerǁ_one__mutmut_{n}" for n in (117, 119, 121, 122)],
        "Biographic holds strings only: every pydantic dump mode gives the same map",
    ),
    "biox.broker.failures.x_headers__mutmut_29": "bool(None) and bool(False) are both False",
    **dict.fromkeys(
        ["biox.retention.x_purge__mutmut_32", "biox.retention.x_purge__mutmut_48"],
        "< or <= against the clock: a row expiring at the very microsecond is never met",
    ),
    **dict.fromkeys(
        [
            "biox.routes.xǁRouteTableǁsender_roles__mutmut_4",
            "biox.routes.xǁRouteTableǁsender_roles__mutmut_7",
        ],
        "no kind has both own and encounter-system senders: = and |= build the same set",
    ),
    "biox.routes.x_route__mutmut_11": (
        "the route table is built at import, before mutmut turns a mutant on; test_routes.py "
        "asserts encounter.result is the one kind not audited"
    ),
    "biox.broker.consumer.xǁConsumeLoopǁ__init____mutmut_24": (
        "the real link is built only against a broker: the integration tests run it with "
        "the settings it is given"
    ),
    **dict.fromkeys(
        [
            "biox.broker.consumer.xǁConsumeLoopǁ__init____mutmut_37",
            "biox.broker.consumer.xǁConsumeLoopǁ_take__mutmut_3",
            "biox.broker.consumer.xǁConsumeLoopǁ_take__mutmut_8",
            "biox.broker.consumer.xǁConsumeLoopǁmaintain__mutmut_18",
            "biox.handlers.response.xǁResponseHandlerǁmaintain__mutmut_22",
        ],
        "a pause, a poll timeout or a clock boundary: when, never whether",
    ),
    "biox.broker.consumer.xǁConsumeLoopǁmaintain__mutmut_6": "None or 0 is 0",
    **dict.fromkeys(
        [
            "biox.broker.consumer.xǁConsumeLoopǁ_sealed__mutmut_3",
            "biox.broker.consumer.xǁConsumeLoopǁ_sealed__mutmut_4",
        ],
        "a partner kind always goes from one participant to another: sender != recipient "
        "holds with either side None",
    ),
    "biox.broker.consumer.xǁConsumeLoopǁ_retry__mutmut_70": (
        "a nack requeues by default (AMQP basic.nack, pika and the fake link alike)"
    ),
    "biox.handlers.response.xǁResponseHandlerǁmaintain__mutmut_10": (
        "only a requester's rows have an answer_due: the provider's are never late"
    ),
    "biox.results.xǁEncounterViewsǁresult__mutmut_37": "updated_at defaults to utcnow()",
    "biox.results.xǁEncounterViewsǁ_outcome__mutmut_48": (
        "a query without an answer has no retrievals: a retrieval follows a match"
    ),
    "biox.lifecycle.x__answers__mutmut_12": (
        "at a participant, a row whose provider is the partner is always its requester's"
    ),
    "biox.lifecycle.x__retrieved__mutmut_12": (
        "only what a partner released carries a source (the asker's rows): the role is implied"
    ),
    **dict.fromkeys(
        ["biox.lifecycle.x_correct_from__mutmut_58", "biox.lifecycle.x_correct_from__mutmut_60"],
        "a stored answer is a Response dump: it always has its candidates list",
    ),
    **dict.fromkeys(
        [
            "biox.handlers.audit.xǁAuditHandlerǁ_entry__mutmut_7",
            "biox.handlers.audit.xǁAuditHandlerǁ_entry__mutmut_15",
        ],
        "every routing key has a dot, and only a hop's second word is in HOPS",
    ),
    **dict.fromkeys(
        ["biox.sealing.x_new_key__mutmut_19", "biox.sealing.x_new_key__mutmut_22"],
        "os.chmod(own, 0o700) follows the mkdir: the directory ends owner-only either way",
    ),
    **dict.fromkeys(
        ["biox.sealing.x_memory_rings__mutmut_10", "biox.sealing.x_memory_rings__mutmut_16"],
        "in-memory rings hold one key each: its creation time orders nothing",
    ),
    "biox.participants.xǁLiveǁnow__mutmut_3": (
        "< or <= at the refresh boundary: two monotonic readings are never exactly apart"
    ),
    "biox.handlers.response.xǁResponseHandlerǁmaintain__mutmut_1": (
        "the bound of one deadline pass (500 or 501 rows): the rest are taken at the next "
        "pass (test_contract.py checks the bound itself with limit=2)"
    ),
    "biox.handlers.review.xǁReviewHandlerǁobserve__mutmut_2": (
        "the backlog gauges' help text (None is printed as 'None'): no sample changes"
    ),
    "biox.lifecycle.x__found__mutmut_7": (
        "strict= on a zip of two triples: every caller passes three columns"
    ),
    "biox.broker.consumer.xǁConsumeLoopǁ_dispatch__mutmut_35": _ZIPS,
}

#: survivors a unit test added after the last full run is written to kill (the next run
#: confirms it) → the test. Empty after a run that had every test: the survivors it lists
#: were re-run against the tests of the commit the table reports.
_PARTICIPANTS = "biox.participants."
_RACE = "test_participants.py::test_sync_retries_a_lost_race_four_times_waiting_longer_each_time"
_PARTIAL = "test_participants.py::test_sync_adds_every_participant_missing_after_one_already_known"
_LIVE = (
    "test_participants.py::"
    "test_live_rebuilds_only_on_a_change_and_sees_contacts_and_other_registries"
)
_UNKNOWN = (
    "test_participants.py::test_a_row_for_a_participant_not_in_the_file_does_not_hide_the_others"
)
KILLED_SINCE: dict[str, str] = {
    **{_PARTICIPANTS + f"x_sync__mutmut_{n}": _RACE for n in (1, 30, 31, 32, 33, 34, 35, 36, 37)},
    **{_PARTICIPANTS + f"x_sync__mutmut_{n}": _PARTIAL for n in (7, 22, 26)},
    **{_PARTICIPANTS + f"xǁLiveǁnow__mutmut_{n}": _LIVE for n in (15, 17, 19, 20, 21, 26)},
    _PARTICIPANTS + "xǁLiveǁ__init____mutmut_1": _LIVE,
    _PARTICIPANTS + "x_overlay__mutmut_7": _UNKNOWN,
    **{
        f"biox.identity.x_check_identity__mutmut_{n}": (
            "test_identity.py::test_a_refusal_names_who_the_broker_says_spoke"
        )
        for n in (5, 7, 11, 13, 24, 26)
    },
    **{
        f"biox.sealing.xǁKeyRingǁopen__mutmut_{n}": (
            "test_sealing.py::test_each_refusal_names_what_failed_for_the_dead_letter"
        )
        for n in (17, 19, 25, 27, 30, 32, 45, 47, 54, 56)
    },
    **{
        f"biox.sealing.xǁKeyRingǁseal__mutmut_{n}": (
            "test_sealing.py::test_each_refusal_names_what_failed_for_the_dead_letter"
        )
        for n in (6, 8)
    },
    **{
        f"biox.sealing.xǁKeyRingǁopen__mutmut_{n}": (
            "test_sealing.py::"
            "test_a_signed_body_not_sealed_to_the_key_it_names_is_undecryptable_and_said_so"
        )
        for n in (60, 61, 62, 63)
    },
    **{
        f"biox.handlers.notice.xǁNoticeHandlerǁ{fn}__mutmut_{n}": f"test_{test}"
        for fn, ns, test in (
            (
                "build",
                (5, 10),
                "notice_handler.py::test_the_worker_builds_its_handler_with_its_own_settings",
            ),
            (
                "_send",
                (41,),
                "notice_handler.py::test_a_deadline_the_operator_gives_is_the_one_sent",
            ),
            (
                "_send",
                (97, 108, 109, 110),
                "notice_handler.py::test_our_consent_reply_answers_"
                "their_request_and_nothing_else_touches_it",
            ),
            (
                "_receive",
                (72, 76, 77, 79, 82, 83, 104, 108, 109),
                "notice_handler.py::test_a_"
                "status_or_contacts_notice_is_kept_in_the_partners_history_with_its_text",
            ),
            (
                "_receive",
                (85, 87, 88, 90, 95, 96, 97, 98),
                "notice_handler.py::test_a_"
                "discontinuation_caps_what_that_partner_sent_and_says_how_much",
            ),
            (
                "_receive",
                (157, 158),
                "notice_handler.py::test_a_deletion_sends_the_encounter_"
                "system_its_result_again_under_a_derived_id",
            ),
            (
                "_keep",
                (4, 6, 13, 15),
                "checkpoints.py::test_a_partner_keeps_genuine_checkpoints_once_and_refuses_others",
            ),
        )
        for n in ns
    },
    **{
        f"biox.lifecycle.x_{fn}__mutmut_{n}": (
            "test_lifecycle.py::test_one_copy_already_in_the_wanted_state_does_not_stop_the_others"
        )
        for fn, n in (("block_from", 31), ("correct_from", 34))
    },
    **{
        f"biox.handlers.retrieval.xǁRetrievalHandlerǁ{fn}__mutmut_{n}": (
            "test_participants.py::test_the_workers_read_the_refresh_interval_from_their_settings"
        )
        for fn, n in (("build", 4), ("build", 8), ("__init__", 1))
    },
    "biox.policy.eligibility.x_provider_refusal__mutmut_17": (
        "test_eligibility.py::test_the_provider_checks_the_subject_again_on_what_it_receives"
    ),
    **dict.fromkeys(
        [
            "biox.policy.release.xǁSendRuleǁcovers__mutmut_7",
            "biox.policy.release.xǁParticipantPolicyǁminimised__mutmut_6",
        ],
        "test_release_policy.py::test_a_send_rule_for_one_purpose_minimises_only_that_purpose",
    ),
    **dict.fromkeys(
        [
            "biox.answers.xǁAnswersǁfollow_up__mutmut_17",
            "biox.answers.xǁAnswersǁfollow_up__mutmut_18",
        ],
        "test_answers.py::test_the_retrieval_rule_fires_only_after_a_match",
    ),
    "biox.answers.xǁAnswersǁmatched__mutmut_42": (
        "test_answers.py::test_an_examiners_match_on_a_national_is_declined_in_the_examiners_name"
    ),
    **{
        f"biox.handlers.matcher.xǁMatcherHandlerǁ{fn}__mutmut_{n}": f"test_matcher.py::test_{t}"
        for fn, ns, t in (
            ("_records", (7,), "a_blocked_record_is_not_matched_even_when_the_index_finds_it"),
            (
                "_check",
                (18, 19, 24, 25),
                "the_provider_declines_a_subject_it_may_not_be_asked_"
                "about_whatever_the_requester_says",
            ),
            ("_check", (4, 6), "a_query_for_another_provider_is_refused_naming_it"),
            (
                "search",
                (56, 58, 59),
                "a_matcher_under_a_worker_reports_its_search_time_and_gallery_size",
            ),
            ("_bury", (9,), "tombstones_written_after_a_catch_up_are_applied_at_the_next_one"),
        )
        for n in ns
    },
    **{
        f"biox.routes.xǁRouteTableǁcheck_sender__mutmut_{n}": (
            "test_routes.py::test_the_sender_check_follows_each_routes_senders"
        )
        for n in (8, 10, 16, 18)
    },
    **dict.fromkeys(
        ["biox.broker.failures.x_refusal__mutmut_4", "biox.broker.failures.x_refusal__mutmut_11"],
        "test_contract.py::test_a_refusal_row_keeps_what_the_annual_review_counts",
    ),
    **dict.fromkeys(
        [
            "biox.handlers.intake.xǁIntakeHandlerǁbuild__mutmut_9",
            "biox.handlers.intake.xǁIntakeHandlerǁbuild__mutmut_10",
            "biox.handlers.intake.xǁIntakeHandlerǁ_one__mutmut_171",
            "biox.handlers.intake.xǁIntakeHandlerǁ_one__mutmut_172",
        ],
        "test_contract.py::test_intake_takes_its_deadline_from_settings_and_minimises_per_partner",
    ),
    **{
        f"biox.broker.consumer.xǁConsumeLoopǁ{fn}__mutmut_{n}": (
            "test_consume_loop.py::test_the_counters_an_operator_reads_at_stop_count_every_message"
        )
        for fn, ns in (
            ("_dead", (25, 26, 29, 30, 31)),
            ("_retry", (52, 53, 56, 57, 58)),
            ("_record", (19, 21)),
        )
        for n in ns
    },
    **dict.fromkeys(
        [
            "biox.broker.consumer.xǁConsumeLoopǁ__init____mutmut_32",
            "biox.broker.consumer.xǁConsumeLoopǁ__init____mutmut_33",
        ],
        "test_consume_loop.py::test_the_counters_an_operator_reads_at_stop_count_every_message",
    ),
    "biox.results.xǁEncounterViewsǁresult__mutmut_39": (
        "test_outputs.py::test_an_answer_is_kept_marked_with_its_source_and_the_result_shows_"
        "every_partner (checked by hand: the resumed run's test map predates this function)"
    ),
    "biox.lifecycle.x_correct_from__mutmut_9": (
        "test_lifecycle.py::test_a_correction_removing_a_field_a_copy_never_had_changes_nothing_else"
    ),
    **{
        f"biox.sealing.x_load_ring__mutmut_{n}": (
            "test_sealing.py::test_a_participant_without_private_keys_is_told_how_to_make_them"
        )
        for n in (25, 26)
    },
}

ERROR_DETAIL = re.compile(r"(\w+Error)\((Reason\.\w+)")


def show(name: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True, cwd=ROOT
    ).stdout


def parse(shown: str) -> tuple[list[tuple[str, str]], list[int]]:
    """(removed, added) line pairs, and the removed lines' numbers within the function
    (1 = its ``def`` line), from a mutant's diff."""
    minus: list[str] = []
    plus: list[str] = []
    where: list[int] = []
    line = 0
    for text in shown.splitlines():
        if text.startswith(("---", "+++", "#")):
            continue
        if text.startswith("@@"):
            line = int(re.match(r"@@ -(\d+)", text).group(1)) - 1  # type: ignore[union-attr]
        elif text.startswith("-"):
            line += 1
            minus.append(text[1:])
            where.append(line)
        elif text.startswith("+"):
            plus.append(text[1:])
        else:
            line += 1
    pairs = list(zip(minus, plus + [""] * (len(minus) - len(plus)), strict=False))
    return pairs or [("", "")], where


def function_span(name: str) -> tuple[Path, int, int]:
    """The source file and the first and last lines of the function a mutant lives in."""
    module, _, rest = name.rpartition(".x")
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    rest = rest.rsplit("__mutmut_", 1)[0]
    parts = rest.split("ǁ")[1:] if rest.startswith("ǁ") else [rest[1:]]
    tree = ast.parse(path.read_text())
    body: list[ast.stmt] = tree.body
    for part in parts[:-1]:  # classes
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == part).body
    functions = [n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    func = next(n for n in functions if n.name == parts[-1])
    return path, func.lineno, func.end_lineno or func.lineno


def source_lines(
    path: Path, first: int, last: int, removed: list[str], where: list[int]
) -> list[int]:
    """Where the removed lines are in the source: found by their text inside the function
    (the nearest to mutmut's own count when a line occurs more than once)."""
    text = path.read_text().splitlines()
    out = []
    for line, guess in zip(removed, where, strict=False):
        found = [n for n in range(first, last + 1) if text[n - 1].strip() == line.strip()]
        if found:
            out.append(min(found, key=lambda n: abs(n - (first + guess - 1))))
    return out


def log_lines(path: Path) -> set[int]:
    """Every line inside a ``log.*(...)`` call of a module."""
    out: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
        ):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def kind_of(
    pairs: list[tuple[str, str]], lines: list[int], logged: set[int], name: str = ""
) -> str:
    if name in KILLED_SINCE:
        return "killed since"
    if name in EQUIVALENT:
        return "reviewed"
    removed = " ".join(a.strip() for a, _ in pairs)
    added = " ".join(b.strip() for _, b in pairs)
    kept = ERROR_DETAIL.search(removed)
    if (
        kept
        and kept.group(0) in added
        and removed.split(kept.group(0))[0] == added.split(kept.group(0))[0]
    ):
        return "detail"
    if lines and all(n in logged for n in lines):
        return "log"
    if TIMING.search(removed):
        return "timing"
    if removed and STRING.sub('""', removed) == STRING.sub('""', added):
        literals = STRING.findall(removed)
        if any(" " in lit or lit.startswith(("f'", 'f"')) for lit in literals):
            return "wording"
    if any(key in added for key in REVIEWED):
        return "reviewed"
    return "to review"


def main() -> int:
    codes = results(ROOT / "mutants")
    survivors = sorted(n for n, c in codes.items() if c in (0, 5, 33))
    by_kind: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    logged: dict[Path, set[int]] = {}
    for name in survivors:
        path, first, last = function_span(name)
        pairs, where = parse(show(name))
        lines = source_lines(path, first, last, [a for a, _ in pairs if a], where)
        kind = kind_of(pairs, lines, logged.setdefault(path, log_lines(path)), name)
        shown = f"{pairs[0][0].strip()} → {pairs[0][1].strip()}".replace("|", "\\|")
        why = KILLED_SINCE.get(name) or EQUIVALENT.get(name) or ""
        by_kind[kind].append((name, shown[:140], why))
    lines = ["### Survivors, by kind", ""]
    lines += ["| kind | survivors | why it changes no behaviour |", "| --- | ---: | --- |"]
    for kind, why in KINDS.items():
        lines.append(f"| {kind} | {len(by_kind.get(kind, []))} | {why} |")
    if by_kind.get("to review"):
        lines.append(
            f"| **to review** | {len(by_kind['to review'])} | not yet killed or explained |"
        )
    for kind in [*KINDS, "to review"]:
        if not by_kind.get(kind):
            continue
        lines += ["", f"<details><summary>{kind}: {len(by_kind[kind])}</summary>", ""]
        for name, shown, why in by_kind[kind]:
            explained = f"`{name}`" if kind != "to review" else name
            lines.append(f"- {explained}: `{shown}`" + (f" — {why}" if why else ""))
        lines += ["", "</details>"]
    text = replace_between(DOC.read_text(), "survivors", lines)
    text = replace_between(text, "mutation-table", table(codes, by_kind))
    DOC.write_text(text)
    print({k: len(v) for k, v in by_kind.items()})
    return 0


def replace_between(text: str, marker: str, lines: list[str]) -> str:
    start = text.index(f"<!-- {marker}:start -->") + len(f"<!-- {marker}:start -->")
    end = text.index(f"<!-- {marker}:end -->")
    return text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:]


def table(
    codes: dict[str, int | None], by_kind: dict[str, list[tuple[str, str, str]]]
) -> list[str]:
    """The score per module: killed by the run, then counting the tests written since."""
    kind_of_name = {name: kind for kind, rows in by_kind.items() for name, _, _ in rows}
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, code in codes.items():
        row = per[module_of(name).removeprefix("biox.")]
        row["mutants"] += 1
        if code in KILLED or code in TIMEOUT:
            row["killed"] += 1
        elif code is None:
            row["not run"] += 1
        else:
            row["survived"] += 1
            kind = kind_of_name.get(name, "to review")
            row[{"killed since": "since", "to review": "open"}.get(kind, "named")] += 1
    cols = ["mutants", "killed", "survived", "since", "named", "open"]
    out = [
        "| module | mutants | killed | survived | killed since by a new test | named "
        "(equivalent, log, timing, wording) | not explained | score | with the new tests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total: dict[str, int] = defaultdict(int)
    for module in sorted(per):
        row = per[module]
        if not row["mutants"]:
            continue
        for c in [*cols, "not run"]:
            total[c] += row[c]
        out.append(_row(module, row, cols))
    out.append(_row("**all**", total, cols, bold=True))
    if total["not run"]:
        out.append(f"\n{total['not run']} mutants not run yet.")
    return out


def _row(label: str, row: dict[str, int], cols: list[str], bold: bool = False) -> str:
    n = row["mutants"]
    score = f"{row['killed'] / n:.1%}".replace("%", " %")
    with_new = f"{(row['killed'] + row['since']) / n:.1%}".replace("%", " %")
    cells = [f"{row[c]:,}".replace(",", " ") for c in cols] + [score, with_new]
    if bold:
        cells = [f"**{c}**" for c in cells]
    return f"| {label} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
