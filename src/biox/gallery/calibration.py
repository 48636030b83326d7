"""Calibration: raw comparison scores to log-likelihood ratios, and the thresholds that
give a chosen false-positive identification rate (FPIR) at the gallery's size.

Why log-likelihood ratios: a face cosine, a finger cosine and an iris Hamming distance
mean nothing on a common scale, and the mean of min-max normalised scores judges a
face-only probe and a ten-print one by different standards. A log-LR says how much more
likely the comparison is under "same person" than under "different people"; for
independent evidence they add (Bayes). So each element (the face, each finger, each
eye) is mapped to its log-LR by its modality's map, and the decision score is their
sum: a modality that is absent adds nothing, and every finger counts.

Each map is a logistic regression of mated/non-mated on the raw score (scikit-learn),
with the classes weighted equally so that the fitted log-odds are the log-LR, floored
where an isotonic regression of the same data says the lowest scores stop being
evidence. The floor matters because real genuine scores have a long low tail (unusable
captures): the straight line alone would make a poor face a veto of twenty units where
the data say a few. The line matters at the top, where isotonic regression goes flat
and a look-alike would tie with a mate. Beyond the highest score seen the map is flat:
no element carries more evidence than the data showed (``--method isotonic`` keeps the
isotonic steps throughout, for comparison). Scores whose mated median is not above the
non-mated median (swapped labels, a distance given as a similarity) are refused.

Why the thresholds follow the gallery: in open-set search a non-mated probe is compared
with every identity, so FPIR at size ``N`` is the chance that the *best* impostor of
``N`` passes: ``1 - (1 - p)^(N / n)`` for ``p`` at the searched size ``n``. FPIR 0.1 %
at a million identities needs the maximum's tail far beyond any sample, so the top 50
(at least 1 %) of the sample's maxima are modelled as exponential (peaks over
threshold; for a calibrated log-LR the per-comparison impostor tail is bounded by
``exp(-t)``) and the threshold is read from that model; above the tail, from the
sample's quantiles. docs/matching.md, "Decision quality", has the
measured results; ``bench/evaluate.py`` measures them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import structlog

from biox.gallery.fusion import Fused, MeanRule, Scorer, by_modality, normalised
from biox.gallery.gallery import Gallery, Hit
from biox.wire.messages import Evidence

log = structlog.get_logger("biox.calibration")

FORMAT = 1
MODALITIES = ("face", "finger", "iris")
TAIL_COUNT = 50  # the highest non-mated maxima modelled as the tail (at least 1 %)
MIN_PER_CLASS = 20
FIT_IMPOSTORS = 400_000
SCORE_COLUMNS = ("probe_id", "candidate_id", "modality", "score", "mated")


class CalibrationError(ValueError):
    """The scores cannot be calibrated as given; the message says why and what to fix."""


@dataclass(frozen=True)
class ScoreMap:
    """Raw score to log-LR: linear between the points ``xs`` (rising) and ``ys``, flat
    beyond them, so no element carries more evidence than the data showed."""

    xs: list[float]
    ys: list[float]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(raw, np.float64), self.xs, self.ys)

    @classmethod
    def fit(cls, modality: str, scores: np.ndarray, mated: np.ndarray, method: str) -> ScoreMap:
        genuine, impostor = int(mated.sum()), int((~mated).sum())
        if min(genuine, impostor) < MIN_PER_CLASS:
            raise CalibrationError(
                f"{modality}: {genuine} mated and {impostor} non-mated comparisons; "
                f"at least {MIN_PER_CLASS} of each are needed"
            )
        if np.median(scores[mated]) <= np.median(scores[~mated]):
            raise CalibrationError(
                f"{modality}: mated comparisons do not score higher than non-mated ones; "
                "are the labels swapped, or the score a distance (give a similarity)?"
            )
        x = scores.astype(np.float64)
        # classes weighted equally: the fitted posterior's log-odds are then the log-LR
        weight = np.where(mated, 0.5 / genuine, 0.5 / impostor) * len(x)
        if method not in ("logistic", "isotonic"):
            raise CalibrationError(f"unknown method {method!r}: logistic or isotonic")
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        # no posterior closer to 0 or 1 than one comparison in the smaller class allows
        eps = 1.0 / (2 * min(genuine, impostor))
        steps = IsotonicRegression(y_min=eps, y_max=1 - eps, out_of_bounds="clip")
        steps.fit(x, mated.astype(float), sample_weight=weight)
        p = np.asarray(steps.y_thresholds_, np.float64)
        xs, ys = np.asarray(steps.X_thresholds_, np.float64), np.log(p / (1 - p))
        if method == "isotonic":
            return cls(xs.tolist(), ys.tolist())
        line = LogisticRegression(C=1e4, max_iter=1000)
        line.fit(x.reshape(-1, 1), mated.astype(int), sample_weight=weight)
        slope, intercept = float(line.coef_[0, 0]), float(line.intercept_[0])
        top = float(x.max())
        start = max(float(x.min()), (float(ys[0]) - intercept) / slope)
        return cls([start, top], [slope * start + intercept, slope * top + intercept])


@dataclass(frozen=True)
class Tail:
    """The distribution of the best fused log-LR of a non-mated probe searched against
    ``searched`` identities: empirical quantiles, then an exponential tail above ``u``."""

    searched: int
    u: float
    p_u: float
    scale: float
    quantiles: list[tuple[float, float]] = field(default_factory=list)  # (P(max > t), t)

    @classmethod
    def fit(cls, maxima: np.ndarray, searched: int) -> Tail:
        if len(maxima) < 200:
            raise CalibrationError(
                f"{len(maxima)} non-mated probes; at least 200 are needed to model the tail"
            )
        ordered = np.sort(maxima)
        share = max(TAIL_COUNT / len(ordered), 0.01)
        u = float(np.quantile(ordered, 1 - share))
        over = ordered[ordered > u] - u
        scale = float(over.mean()) if len(over) else 1.0
        levels = np.geomspace(share, 1.0, 120)
        quantiles = [(float(p), float(np.quantile(ordered, 1 - p))) for p in levels]
        return cls(searched, u, float(len(over) / len(ordered)), scale, quantiles)

    def exceed(self, t: float) -> float:
        """P(best of ``searched`` impostors > t)."""
        if t >= self.u:
            return self.p_u * math.exp(-(t - self.u) / self.scale)
        for p, q in self.quantiles:  # p rising, t falling
            if t >= q:
                return p
        return 1.0

    def fpir(self, t: float, gallery_size: int) -> float:
        return float(1.0 - (1.0 - self.exceed(t)) ** (gallery_size / self.searched))

    def threshold(self, fpir: float, gallery_size: int) -> float:
        """The lowest score whose FPIR at ``gallery_size`` is at most ``fpir``."""
        p = 1.0 - (1.0 - fpir) ** (self.searched / max(gallery_size, 1))
        if p <= self.p_u:
            return self.u + self.scale * math.log(self.p_u / p)
        ps = np.array([q[0] for q in self.quantiles])
        ts = np.array([q[1] for q in self.quantiles])
        return float(np.interp(p, ps, ts))


class LikelihoodRatio:
    """The calibrated scorer: the sum of per-element log-LRs (``fusion.Scorer``)."""

    name = "llr"

    def __init__(self, maps: dict[str, ScoreMap]) -> None:
        self.maps = maps

    def __call__(self, raw: dict[str, np.ndarray]) -> Fused:
        evidence: dict[str, np.ndarray] = {}
        for modality, parts in by_modality(raw).items():
            mapping = self.maps.get(modality)
            if mapping is None:  # a modality the calibration never saw: no evidence
                continue
            llrs = np.stack([mapping(v) for v in parts])
            present = ~np.isnan(llrs)
            evidence[modality] = np.where(
                present.any(axis=0), np.where(present, llrs, 0.0).sum(axis=0), np.nan
            )
        total = (
            np.nansum(np.stack(list(evidence.values())), axis=0)
            if evidence
            else np.zeros(len(next(iter(raw.values()))) if raw else 0)
        )
        return Fused(total.astype(np.float32), normalised(raw), evidence)


@dataclass(frozen=True)
class Calibration:
    """What ``biox calibrate`` writes and the matchers load (``BIOX_CALIBRATION``)."""

    maps: dict[str, ScoreMap]
    tail: Tail
    fpir_match: float = 0.001
    fpir_review: float = 0.01
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def thresholds(self, gallery_size: int) -> tuple[float, float]:
        """(match, review) thresholds at ``gallery_size``: FPIR ``fpir_match`` and
        ``fpir_review`` there. Below the review threshold: no match."""
        return (
            self.tail.threshold(self.fpir_match, gallery_size),
            self.tail.threshold(self.fpir_review, gallery_size),
        )

    def scorer(self) -> LikelihoodRatio:
        return LikelihoodRatio(self.maps)

    def to_dict(self) -> dict[str, object]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        if data.get("format") != FORMAT:
            raise CalibrationError(f"calibration format {data.get('format')!r}, not {FORMAT}")
        maps = {m: ScoreMap(**v) for m, v in dict(data["maps"]).items()}  # type: ignore[call-overload]
        tail = dict(data["tail"])  # type: ignore[call-overload]
        tail["quantiles"] = [tuple(q) for q in tail["quantiles"]]
        return cls(
            maps,
            Tail(**tail),
            float(data["fpir_match"]),  # type: ignore[arg-type]
            float(data["fpir_review"]),  # type: ignore[arg-type]
            str(data.get("source", "")),
            dict(data.get("counts", {})),  # type: ignore[call-overload]
        )

    def save(self, path: Path) -> None:
        """Written beside and moved into place: a matcher reloading reads it whole."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.staged")
        staged.write_text(json.dumps(self.to_dict(), indent=1))
        staged.replace(path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f"{path}: not a biox calibration ({exc})") from exc


class Calibrated:
    """What a matcher decides with, batch by batch: the calibration in ``path``, read
    again when the file changes (``biox calibrate`` replaces it whole) and kept as it was
    when a new one is unreadable; without one, the mean rule and ``fallback`` thresholds."""

    def __init__(self, path: Path, fallback: tuple[float, float]) -> None:
        self.path = path
        self.fallback = fallback
        self.current: Calibration | None = None
        self._seen: tuple[int, int] | None = None
        self._applied: tuple[Calibration | None, Scorer] = (None, MeanRule())

    def now(self) -> Calibration | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self.current is not None:
                log.warning("calibration_removed", path=str(self.path))
            self.current, self._seen = None, None
            return None
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen = seen
            try:
                self.current = Calibration.load(self.path)
                log.info("calibration_loaded", path=str(self.path), source=self.current.source)
            except CalibrationError as exc:
                log.warning("calibration_refused", path=str(self.path), reason=str(exc))
        return self.current

    def apply(self, gallery: Gallery) -> tuple[float, float]:
        """Sets the gallery's scorer; returns the (match, review) thresholds at its size
        now: calibrated thresholds rise as the gallery grows (docs/matching.md)."""
        calibration = self.now()
        if calibration is not self._applied[0]:  # loaded, replaced or removed
            self._applied = (
                calibration,
                MeanRule() if calibration is None else calibration.scorer(),
            )
        gallery.scorer = self._applied[1]
        return self.thresholds_at(gallery.size, calibration)

    def thresholds_at(
        self, gallery_size: int, calibration: Calibration | None = None
    ) -> tuple[float, float]:
        """(match, review) thresholds for a gallery of ``gallery_size`` (a sharded one's:
        the sum of its shards'), from ``calibration`` or the current one."""
        calibration = calibration or self.now()
        if calibration is None:
            return self.fallback
        return calibration.thresholds(max(gallery_size, 1))

    def evidence(self, hit: Hit, gallery_size: int) -> Evidence | None:
        """The strength of ``hit`` for the requester and the examiner (wire ``Evidence``)."""
        if hit.evidence is None or self.current is None:
            return None
        return Evidence(
            log_lr=hit.fused,
            modalities=hit.evidence,
            fpir=round(self.current.tail.fpir(hit.fused, max(gallery_size, 1)), 9),
            gallery_size=gallery_size,
        )


@dataclass
class ScoreTable:
    """Comparisons to calibrate from: one row per element compared (a face, one finger,
    one eye), as in a score file (docs/matching.md, "Score files")."""

    probe: np.ndarray  # str
    candidate: np.ndarray  # str
    modality: np.ndarray  # str: face, finger or iris
    score: np.ndarray  # float: higher is more alike
    mated: np.ndarray  # bool

    @classmethod
    def read(cls, path: Path) -> ScoreTable:
        """A score file: Parquet (``.parquet``) or CSV with a header, columns
        ``probe_id, candidate_id, modality, score, mated`` (``quality`` may be present and
        is not used yet). Refused, naming the column, when one is missing or unreadable."""
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        try:
            data = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
        except (OSError, pa.ArrowException) as exc:
            raise CalibrationError(f"{path}: not a readable score file ({exc})") from exc
        missing = [c for c in SCORE_COLUMNS if c not in data.column_names]
        if missing:
            raise CalibrationError(
                f"{path}: no column {missing[0]!r} (need {', '.join(SCORE_COLUMNS)})"
            )
        try:
            score = np.asarray(data["score"].to_numpy(zero_copy_only=False), np.float64)
            mated = np.asarray(data["mated"].to_numpy(zero_copy_only=False)).astype(int)
        except (ValueError, TypeError, pa.ArrowException) as exc:
            raise CalibrationError(f"{path}: score and mated must be numbers ({exc})") from exc
        if not np.isfinite(score).all() or not np.isin(mated, (0, 1)).all():
            raise CalibrationError(f"{path}: score must be finite and mated 0 or 1")
        return cls(
            np.asarray(data["probe_id"].to_pylist(), str),
            np.asarray(data["candidate_id"].to_pylist(), str),
            np.asarray(data["modality"].to_pylist(), str),
            score,
            mated.astype(bool),
        )

    def write(self, path: Path) -> None:
        """The same format, so a synthetic sample can be looked at, or fitted again."""
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "probe_id": self.probe.astype(str),
                "candidate_id": self.candidate.astype(str),
                "modality": self.modality.astype(str),
                "score": self.score.astype(np.float64),
                "mated": self.mated.astype(np.int8),
            }
        )
        pq.write_table(table, path) if path.suffix == ".parquet" else pcsv.write_csv(table, path)


def fit(
    table: ScoreTable,
    searched: int,
    fpir_match: float = 0.001,
    fpir_review: float = 0.01,
    source: str = "",
    method: str = "logistic",
) -> Calibration:
    """Per-modality maps from every row; the tail from the best fused log-LR of each
    non-mated probe (a probe with no mated row) over the ``searched`` identities."""
    unknown = sorted(set(table.modality.tolist()) - set(MODALITIES))
    if unknown:
        raise CalibrationError(f"unknown modality {unknown[0]!r}: use face, finger or iris")
    maps = {
        m: ScoreMap.fit(m, *_balanced(table.score[rows], table.mated[rows]), method)
        for m in MODALITIES
        if (rows := table.modality == m).any()
    }
    llr = np.zeros(len(table.score))
    for m, mapping in maps.items():
        rows = table.modality == m
        llr[rows] = mapping(table.score[rows])
    pair = np.char.add(np.char.add(table.probe.astype(str), "\x1f"), table.candidate.astype(str))
    pairs, inverse = np.unique(pair, return_inverse=True)
    fused = np.bincount(inverse, weights=llr, minlength=len(pairs))
    pair_probe = np.array([p.split("\x1f", 1)[0] for p in pairs.tolist()])
    mated_probes = set(table.probe[table.mated].astype(str).tolist())
    non_mated = ~np.isin(pair_probe, list(mated_probes))
    probes, at = np.unique(pair_probe[non_mated], return_inverse=True)
    maxima = np.full(len(probes), -np.inf)
    np.maximum.at(maxima, at, fused[non_mated])
    counts = {
        "mated_comparisons": int(table.mated.sum()),
        "non_mated_comparisons": int((~table.mated).sum()),
        "non_mated_probes": len(probes),
        "mated_probes": len(mated_probes),
    }
    return Calibration(maps, Tail.fit(maxima, searched), fpir_match, fpir_review, source, counts)


def _balanced(scores: np.ndarray, mated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``FIT_IMPOSTORS`` non-mated rows, drawn evenly: the classes are weighted
    equally anyway, and a fit on millions of impostor rows costs minutes for nothing."""
    impostors = np.flatnonzero(~mated)
    if len(impostors) <= FIT_IMPOSTORS:
        return scores, mated
    even = np.linspace(0, len(impostors) - 1, FIT_IMPOSTORS).astype(np.int64)
    keep = np.concatenate([np.flatnonzero(mated), impostors[even]])
    return scores[keep], mated[keep]
