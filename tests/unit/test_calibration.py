"""Calibration and the hard population (issue 22): tests that fail when calibration or
fusion is broken, on a small hard gallery built once for the module."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from structlog.testing import capture_logs

from biox.database import session_for
from biox.gallery import calibration as cal
from biox.gallery.calibration import Calibration, CalibrationError, ScoreMap, ScoreTable, Tail
from biox.gallery.fusion import MeanRule
from biox.gallery.gallery import Gallery, Hit
from biox.handlers.matcher import MatcherHandler
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim.population import Hardness, Population, build, score_table
from biox.wire.messages import ResponseStatus
from tests.unit.test_matcher import POLICIES, REGISTRY, ScriptedGallery, ask, record

SIZE = 3000


@pytest.fixture(scope="module")
def hard() -> tuple[Population, Gallery, ScoreTable]:
    pop = Population(11)
    truth = pop.truth(SIZE)
    gallery = Gallery("flat")
    build(pop, truth, gallery)
    sample = pop.probes(truth, 300, 600, stream=1)
    return pop, gallery, score_table(gallery, sample, 10, seed=11)


@pytest.fixture(scope="module")
def fitted(hard) -> Calibration:
    return cal.fit(hard[2], SIZE)


def test_the_hard_population_overlaps_where_the_easy_one_does_not(hard):
    """Mated comparisons reach down into the impostors' range for every modality: some
    captures are unusable, so a single modality alone must miss some mates."""
    table = hard[2]
    for modality in ("face", "finger", "iris"):
        rows = table.modality == modality
        genuine, impostor = table.score[rows & table.mated], table.score[rows & ~table.mated]
        assert np.quantile(genuine, 0.02) < impostor.max(), modality
        assert np.median(genuine) > np.quantile(impostor, 0.999), modality


def test_the_population_is_the_same_for_the_same_seed_and_ages_the_face():
    a, b = Population(3), Population(3)
    assert np.array_equal(a.truth(100).face, b.truth(100).face)
    assert np.array_equal(a.truth(50).face, a.truth(100).face[:50])  # the same people
    young = Population(3, dataclasses.replace(Hardness(), ageing_face=0.0, max_years=15))
    old = Population(3, dataclasses.replace(Hardness(), ageing_face=0.3, max_years=15))
    truth = young.truth(200)
    cos = []
    for pop in (young, old):
        probes = pop.probes(truth, 200, 0, stream=4)
        faces = [
            (p.face, truth.face[m])
            for p, m in zip(probes.probes, probes.mate, strict=True)
            if p.face is not None
        ]
        cos.append(np.median([float(f @ t) for f, t in faces]))
    assert cos[1] < cos[0] - 0.05


def test_swapped_labels_are_refused_with_a_reason(hard):
    table = hard[2]
    swapped = dataclasses.replace(table, mated=~table.mated)
    with pytest.raises(CalibrationError, match="labels swapped"):
        cal.fit(swapped, SIZE)


def test_too_few_comparisons_and_unknown_modalities_are_refused(hard):
    table = hard[2]
    few = np.flatnonzero(table.mated)[:5]
    with pytest.raises(CalibrationError, match="at least 20"):
        ScoreMap.fit("face", table.score[few], table.mated[few], "isotonic")
    odd = dataclasses.replace(
        table, modality=np.where(table.modality == "face", "palm", table.modality)
    )
    with pytest.raises(CalibrationError, match="unknown modality 'palm'"):
        cal.fit(odd, SIZE)


def test_each_map_rises_with_the_score_and_stays_within_what_the_data_supports(hard, fitted):
    table = hard[2]
    for modality, mapping in fitted.maps.items():
        assert np.all(np.diff(mapping.ys) >= 0) and mapping.ys[-1] > mapping.ys[0], modality
        low, mid, high = mapping(np.array([-1.0, 0.5, 2.0]))
        assert low == mapping.ys[0] < high == mapping.ys[-1], modality
        assert low <= mid <= high
        assert mapping.xs[-1] == table.score[table.modality == modality].max()
    steps = cal.fit(table, SIZE, method="isotonic")
    for modality, mapping in steps.maps.items():
        rows = table.modality == modality
        bound = np.log(2 * int(table.mated[rows].sum()))  # one mated comparison's worth
        assert max(abs(mapping.ys[0]), abs(mapping.ys[-1])) <= bound + 1e-9, modality


def test_the_line_is_floored_where_the_lowest_scores_stop_being_evidence(hard):
    """A straight line alone would make an unusable capture a veto; the floor is where
    the isotonic fit of the same data levels off at the bottom."""
    table = hard[2]
    line = cal.fit(table, SIZE).maps["face"]
    steps = cal.fit(table, SIZE, method="isotonic").maps["face"]
    assert line(np.array([-1.0]))[0] == pytest.approx(max(steps.ys[0], line.ys[0]))
    assert line.ys[0] >= steps.ys[0] - 1e-9


def test_an_unknown_method_is_refused(hard):
    with pytest.raises(CalibrationError, match="unknown method 'svm'"):
        cal.fit(hard[2], SIZE, method="svm")


def test_a_missing_modality_adds_nothing_while_a_poor_one_counts_against(fitted):
    """The sum of log-LRs: an absent face contributes zero evidence; a face that is
    present and unlike the candidate's contributes negative evidence. Counting a missing
    modality as a zero score would make absence look like a non-match."""
    scorer = fitted.scorer()
    finger = np.array([0.8, 0.8], np.float32)
    absent = scorer({"finger.2": finger, "face": np.array([np.nan, np.nan], np.float32)})
    alone = scorer({"finger.2": finger})
    unlike = scorer({"finger.2": finger, "face": np.array([0.0, 0.0], np.float32)})
    assert np.allclose(absent.score, alone.score)
    one_finger_missing = scorer({"finger.2": finger, "finger.7": np.array([np.nan, 0.8])})
    assert one_finger_missing.score[0] == pytest.approx(alone.score[0])
    assert one_finger_missing.score[1] == pytest.approx(2 * alone.score[1])
    assert absent.evidence is not None and np.isnan(absent.evidence["face"]).all()
    assert (unlike.score < alone.score - 1).all()


def test_every_finger_is_evidence_of_its_own(fitted):
    scorer = fitted.scorer()
    one = scorer({"finger.2": np.array([0.7], np.float32)}).score[0]
    two = scorer(
        {"finger.2": np.array([0.7], np.float32), "finger.7": np.array([0.7], np.float32)}
    ).score[0]
    assert two == pytest.approx(2 * one, rel=1e-5)
    mean = MeanRule()
    assert mean({"finger.2": np.array([0.7]), "finger.7": np.array([0.7])}).score[
        0
    ] == pytest.approx(mean({"finger.2": np.array([0.7])}).score[0])


def test_thresholds_rise_with_the_gallery_and_keep_the_review_band_below(fitted):
    small, large, huge = (fitted.thresholds(n) for n in (SIZE, 100_000, 1_000_000))
    assert small[1] < small[0] and large[1] < large[0]
    assert small[0] < large[0] < huge[0]
    tail = fitted.tail
    assert tail.fpir(large[0], 100_000) == pytest.approx(fitted.fpir_match, rel=0.01)


def test_the_tail_reads_the_sample_where_it_has_data_and_extrapolates_beyond():
    rng = np.random.default_rng(0)
    maxima = rng.exponential(2.0, 20_000)  # P(max > t) = exp(-t / 2)
    tail = Tail.fit(maxima, 1000)
    for p in (0.3, 0.05, 1e-4, 1e-6):
        assert tail.threshold(p, 1000) == pytest.approx(-2 * np.log(p), rel=0.08)
    assert tail.scale == pytest.approx(2.0, rel=0.2)
    with pytest.raises(CalibrationError, match="at least 200"):
        Tail.fit(maxima[:50], 1000)


def test_the_file_round_trips_and_a_foreign_file_is_refused(fitted, tmp_path):
    path = tmp_path / "calibration.json"
    fitted.save(path)
    loaded = Calibration.load(path)
    assert loaded == fitted  # maps, tail, targets, source and counts
    path.write_text('{"format": 99}')
    with pytest.raises(CalibrationError, match="format 99"):
        Calibration.load(path)
    path.write_text("not json")
    with pytest.raises(CalibrationError, match="not a biox calibration"):
        Calibration.load(path)


def test_calibrated_search_finds_mates_and_keeps_strangers_out(hard, fitted):
    """On held-out probes of the same gallery, the calibrated thresholds admit few
    strangers and find most mates; a calibration on swapped maps finds none."""
    pop, gallery, _ = hard
    sample = pop.probes(pop.truth(SIZE), 200, 400, stream=2)
    gallery.scorer = fitted.scorer()
    try:
        high, _ = fitted.thresholds(SIZE)
        hits = gallery.search(sample.probes, k=10, top=1)
        best = np.array([h[0].fused if h else -np.inf for h in hits])
        top = np.array([h[0].record_id if h else -1 for h in hits])
        mated = sample.mate >= 0
        found = ((best >= high) & (top == sample.mate))[mated].mean()
        strangers = (best >= high)[~mated].mean()
        assert found > 0.9 and strangers <= 0.01
        backwards = {
            m: dataclasses.replace(v, ys=[-y for y in v.ys]) for m, v in fitted.maps.items()
        }
        gallery.scorer = cal.LikelihoodRatio(backwards)
        hits = gallery.search(sample.probes[:200], k=10, top=1)
        assert sum(h[0].record_id == m for h, m in zip(hits, sample.mate[:200], strict=True)) < 50
    finally:
        gallery.scorer = MeanRule()


def test_a_matcher_decides_by_the_calibration_it_finds_and_follows_the_file(tmp_path, fitted):
    """No file: the mean rule's thresholds. A calibration written: its thresholds at the
    gallery's size, and each candidate carries its evidence (log-LR per modality, the
    FPIR it stands for). A broken file keeps the last good one; a removed one falls back."""

    db = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(db) as s:
        s.add_all([record(1), record(2)])
        s.commit()
    path = tmp_path / "calibration.json"
    settings = Settings(calibration=path, threshold_high=0.55, threshold_low=0.3)
    gallery = ScriptedGallery([Hit(2, 0.6, {"face": 0.6})])
    gallery.size = 100_000  # type: ignore[misc]
    handler = MatcherHandler("mx", REGISTRY, gallery, settings, POLICIES.of("mx"))  # type: ignore[arg-type]
    handler.follower.synced_at = float("inf")
    high, low = fitted.thresholds(gallery.size)
    between = (high + low) / 2
    assert ask(handler, db)[3].status is ResponseStatus.match  # 0.55 is the bar without one

    fitted.save(path)
    gallery.hits = [Hit(2, between, {"face": 0.6}, {"face": between - 1, "finger": 1.0})]
    assert ask(handler, db)[3].status is ResponseStatus.pending_review
    _, _, result, _ = ask(handler, db)
    case = ROUTES.decode("review.case", "review.case/1", result.outgoing[1].body)
    evidence = case.candidates[0].evidence
    assert evidence is not None and evidence.modalities == {"face": between - 1, "finger": 1.0}
    assert fitted.fpir_match < evidence.fpir <= fitted.fpir_review + 1e-9
    gallery.hits = [Hit(1, high + 0.5, {"face": 0.9}, {"face": high + 0.5})]
    response = ask(handler, db)[3]
    assert response.status is ResponseStatus.match
    [candidate] = response.candidates
    assert candidate.fused_score == high + 0.5 and candidate.evidence is not None
    assert candidate.evidence.log_lr == high + 0.5 and candidate.evidence.gallery_size == 100_000
    assert candidate.evidence.fpir <= fitted.fpir_match

    with capture_logs() as logs:
        path.write_text('{"format": 1, "broken": true}')
        assert ask(handler, db)[3].status is ResponseStatus.match  # still calibrated
        path.unlink()
        gallery.hits = [Hit(2, 0.4, {"face": 0.4})]
        assert ask(handler, db)[3].status is ResponseStatus.pending_review  # 0.3 <= 0.4 < 0.55
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "calibration_refused",
        "calibration_removed",
    ]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_score_file_round_trips_and_calibrates_as_the_table_did(hard, fitted, tmp_path, suffix):
    """A vendor's scores in the documented format give the same calibration as the
    same comparisons handed over in memory."""
    table = hard[2]
    path = tmp_path / f"scores{suffix}"
    table.write(path)
    read = ScoreTable.read(path)
    assert np.array_equal(read.score, table.score) and np.array_equal(read.mated, table.mated)
    assert cal.fit(read, SIZE).thresholds(100_000) == pytest.approx(fitted.thresholds(100_000))


def test_a_score_file_that_is_not_the_format_is_refused_naming_what(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("probe_id,candidate_id,modality,score\n1,2,face,0.5\n")
    with pytest.raises(CalibrationError, match="no column 'mated'"):
        ScoreTable.read(path)
    path.write_text("probe_id,candidate_id,modality,score,mated\n1,2,face,0.5,yes\n")
    with pytest.raises(CalibrationError, match="mated must be"):
        ScoreTable.read(path)
    path.write_text("probe_id,candidate_id,modality,score,mated\n1,2,face,0.5,2\n")
    with pytest.raises(CalibrationError, match="mated 0 or 1"):
        ScoreTable.read(path)
    with pytest.raises(CalibrationError, match="not a readable score file"):
        ScoreTable.read(tmp_path / "absent.parquet")


def test_biox_calibrate_writes_the_file_a_matcher_reads_and_refuses_a_bad_request(hard, tmp_path):
    from typer.testing import CliRunner

    from biox.cli import app

    scores = tmp_path / "scores.csv"
    hard[2].write(scores)
    out = tmp_path / "calibration.json"
    env = {"BIOX_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    done = runner.invoke(app, ["calibrate", "-p", "mx", "--scores", str(scores)], env=env)
    assert done.exit_code == 2 and "--searched" in done.output
    done = runner.invoke(
        app, ["calibrate", "-p", "mx", "--fpir-match", "0.05", "--fpir-review", "0.01"], env=env
    )
    assert done.exit_code == 2 and "fpir" in done.output
    args = ["calibrate", "-p", "mx", "--scores", str(scores), "--searched", str(SIZE)]
    done = runner.invoke(app, [*args, "--out", str(out)], env=env)
    assert done.exit_code == 0, done.output
    assert "1,000,000 identities: match >=" in " ".join(done.output.split())
    assert Calibration.load(out).thresholds(SIZE) == pytest.approx(
        cal.fit(hard[2], SIZE).thresholds(SIZE)
    )
    swapped = dataclasses.replace(hard[2], mated=~hard[2].mated)
    swapped.write(scores)
    done = runner.invoke(app, [*args, "--out", str(out)], env=env)
    assert done.exit_code == 1 and "labels swapped" in " ".join(done.output.split())


def test_the_tail_is_the_best_fused_candidate_of_each_non_mated_probe():
    """Built by hand: each element's log-LR from its modality's map, summed per (probe,
    candidate), the best candidate per non-mated probe; mated probes stay out of it."""
    rng = np.random.default_rng(5)
    rows: dict[str, list] = {c: [] for c in ("probe", "candidate", "modality", "score", "mated")}

    def add(probe: str, candidate: str, modality: str, score: float, mated: bool) -> None:
        for column, value in zip(rows, (probe, candidate, modality, score, mated), strict=True):
            rows[column].append(value)

    for p in range(400):  # non-mated probes: three candidates, face and one finger each
        for c in range(3):
            add(f"n{p}", f"c{c}", "face", rng.normal(0.0, 0.05), False)
            add(f"n{p}", f"c{c}", "finger", rng.normal(0.0, 0.07), False)
    for p in range(100):  # mated probes: the mate, and one stranger
        add(f"m{p}", f"g{p}", "face", rng.normal(0.7, 0.1), True)
        add(f"m{p}", f"g{p}", "finger", rng.normal(0.7, 0.1), True)
        add(f"m{p}", "c9", "face", rng.normal(0.0, 0.05), False)
    table = ScoreTable(**{c: np.asarray(v) for c, v in rows.items()})
    fitted = cal.fit(table, 3)
    llr = np.where(
        table.modality == "face",
        fitted.maps["face"](table.score),
        fitted.maps["finger"](table.score),
    )
    fused: dict[tuple[str, str], float] = {}
    for probe, candidate, value in zip(table.probe, table.candidate, llr, strict=True):
        fused[(probe, candidate)] = fused.get((probe, candidate), 0.0) + value
    maxima = [max(fused[(f"n{p}", f"c{c}")] for c in range(3)) for p in range(400)]
    assert fitted.tail.quantiles[-1][1] == pytest.approx(min(maxima))
    assert fitted.tail.u == pytest.approx(np.quantile(maxima, 1 - 50 / 400))
    assert fitted.counts == {
        "mated_comparisons": 200,
        "non_mated_comparisons": 2500,
        "non_mated_probes": 400,
        "mated_probes": 100,
    }
    assert fitted.maps["face"].xs[-1] == table.score[table.modality == "face"].max()
    assert fitted.maps["finger"].xs[-1] == table.score[table.modality == "finger"].max()


def test_the_log_lr_is_the_same_whatever_the_share_of_mated_comparisons():
    """Genuine N(1, 1) against impostor N(0, 1): the true log-LR is ``s - 0.5``. With the
    classes weighted equally the fit finds it from 1 mated comparison in 50, as from
    even classes; without the weights the prior would shift it by log(1/50)."""
    rng = np.random.default_rng(9)
    for genuine in (400, 20_000):
        scores = np.concatenate([rng.normal(1, 1, genuine), rng.normal(0, 1, 20_000)])
        mated = np.arange(len(scores)) < genuine
        line = ScoreMap.fit("face", scores, mated, "logistic")
        slope = (line.ys[1] - line.ys[0]) / (line.xs[1] - line.xs[0])
        assert slope == pytest.approx(1.0, abs=0.15)
        assert line.ys[1] == pytest.approx(line.xs[1] - 0.5, abs=0.6)
        assert line.xs[1] == scores.max()


def test_a_matcher_says_which_file_it_loaded_refused_or_lost(tmp_path, fitted):
    path = tmp_path / "calibration.json"
    watched = cal.Calibrated(path, (0.55, 0.3))
    with capture_logs() as logs:
        assert watched.now() is None
        fitted.save(path)
        assert watched.now() == fitted
        assert watched.now() is watched.current  # unchanged: not read again
        path.write_text("{}")
        assert watched.now() == fitted
        path.unlink()
        assert watched.now() is None
    assert [{k: e.get(k) for k in ("event", "path", "source")} for e in logs][:1] == [
        {"event": "calibration_loaded", "path": str(path), "source": fitted.source}
    ]
    refused, removed = logs[1], logs[2]
    assert refused["event"] == "calibration_refused" and refused["path"] == str(path)
    assert "not a biox calibration" in refused["reason"] or "format" in refused["reason"]
    assert removed == {"event": "calibration_removed", "path": str(path), "log_level": "warning"}
    assert len(logs) == 3


def test_a_fit_on_millions_of_impostors_keeps_every_mate_and_an_even_draw(monkeypatch):
    """`_balanced` caps the non-mated rows (the classes are weighted equally, so the
    fit needs no more); every mated row stays, and the draw spans the whole range."""
    monkeypatch.setattr(cal, "FIT_IMPOSTORS", 100)
    scores = np.arange(1000, dtype=np.float64)
    mated = np.zeros(1000, bool)
    mated[[3, 500, 999]] = True
    kept, labels = cal._balanced(scores, mated)
    assert sorted(kept[labels].tolist()) == [3.0, 500.0, 999.0]
    impostors = kept[~labels]
    assert len(impostors) == 100 and not np.isin([3, 500, 999], impostors).any()
    assert impostors.min() < 20 and impostors.max() > 980  # even, not the first hundred
    few = np.zeros(101, bool)
    few[0] = True
    assert len(cal._balanced(scores[:101], few)[0]) == 101  # 100 impostors: all kept


def test_the_file_says_whose_scores_it_came_from(hard, tmp_path):
    """A participant calibrating from a vendor's scores names them; an older file
    without source or counts still loads."""
    fitted = cal.fit(hard[2], SIZE, source="vendor X face 4.2, 2026-11 sample")
    path = tmp_path / "calibration.json"
    fitted.save(path)
    assert Calibration.load(path).source == "vendor X face 4.2, 2026-11 sample"
    data = fitted.to_dict()
    del data["source"], data["counts"]
    path.write_text(__import__("json").dumps(data))
    older = Calibration.load(path)
    assert (older.source, older.counts) == ("", {})
    assert older.maps == fitted.maps
