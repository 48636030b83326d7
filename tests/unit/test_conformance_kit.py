"""The conformance kit's own expectations (issue 21 (3)): the mated case is drawn from the
partner's gallery as it was built, per partner, and a failure says what the kit assumed
and how to tell it otherwise."""

from __future__ import annotations

from biox.sim.conformance import Kit
from tests.registry import operating

REGISTRY = operating()


def test_the_mated_case_is_drawn_from_the_partners_gallery_and_a_miss_says_what_was_assumed():
    kit = Kit(REGISTRY, "us", seed=7, gallery_size={"mx": 150, "sv": 40})
    assert kit.sizes == {"us": 150, "mx": 150, "sv": 40}
    case = kit.mated()
    ref = case.name.removeprefix("mated: a capture of ")
    partner = ref.split("-")[0].lower()
    others = [p for p in ("mx", "sv") if p != partner]
    outcomes = [{"partner": partner, "status": "no_match"}] + [
        {"partner": p, "status": "no_match"} for p in others
    ]
    said = case.check([[{"revision": 2, "status": "complete", "outcomes": outcomes}]])
    assert said is not None
    assert f"expected match {ref}" in said
    assert f"of a {kit.sizes[partner]}-identity gallery (seed 7)" in said
    assert "give --gallery-size and --seed" in said
    matched = [{**outcomes[0], "status": "match", "candidates": [{"identity_ref": ref}]}]
    assert (
        case.check([[{"revision": 2, "status": "complete", "outcomes": matched + outcomes[1:]}]])
        is None
    )


def test_a_probe_of_an_identity_outside_the_gallery_says_so(tmp_path, monkeypatch):
    """Issue 21 (7): the guide's probe is in the quick start's gallery; one that is not is
    named, rather than silently making a non-mated query."""
    from typer.testing import CliRunner

    from biox.cli import app
    from biox.settings import Settings
    from biox.sim.galleries import build_gallery

    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    build_gallery(Settings(data_dir=tmp_path), "mx", 20, 2026)
    import numpy as np

    from biox.sim import synth

    beyond = next(
        n
        for n in range(synth.last_member("mx", 20) + 1, 10_000)
        if synth.member_of("mx", np.array([n]))[0]
    )
    runner = CliRunner()
    ref = synth.identity_ref("mx", beyond)  # in a bigger gallery of mx's, not in this one
    out = runner.invoke(app, ["synth", "probe", ref, "-o", str(tmp_path / "a")])
    assert out.exit_code == 0 and "not in mx's gallery of 20" in out.output, out.output
    out = runner.invoke(app, ["synth", "probe", "MX-000000002", "-o", str(tmp_path / "b")])
    assert "in no gallery mx builds" in out.output, out.output
    out = runner.invoke(app, ["synth", "probe", "MX-000000001", "-o", str(tmp_path / "c")])
    assert out.exit_code == 0 and "non-mated" not in out.output, out.output


def test_before_the_readiness_exchange_the_kit_says_no_partner_would_be_asked(
    tmp_path, monkeypatch
):
    """Before §34's readiness every case would be refused `inactive_requester`, which says
    nothing about the encounter system: the kit says so up front, with what to do, and
    exits 2 before it sends anything."""
    from typer.testing import CliRunner

    from biox.cli import app
    from biox.registry import Registry
    from biox.settings import Settings
    from biox.sim.galleries import build_gallery
    from biox.wire.errors import Reason
    from tests.registry import SHIPPED

    pending = Registry.load(SHIPPED)
    assert Kit(pending, "us", gallery_size=20).no_partner_asked() == {
        "mx": Reason.inactive_requester,
        "sv": Reason.inactive_requester,
    }
    assert Kit(REGISTRY, "us", gallery_size=20).no_partner_asked() == {}
    us_ready = tmp_path / "us-ready.toml"  # us sent its notice; neither partner has
    us_ready.write_text(SHIPPED.read_text().replace('status = "pending"', 'status = "active"', 1))
    assert Kit(Registry.load(us_ready), "us", gallery_size=20).no_partner_asked() == {
        "mx": Reason.inactive_provider,
        "sv": Reason.inactive_provider,
    }
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_REGISTRY", str(SHIPPED))
    build_gallery(Settings(data_dir=tmp_path), "mx", 20, 2026)
    url = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens: nothing may be sent
    out = CliRunner().invoke(app, ["conformance", "-p", "us", "--amqp-url", url])
    assert out.exit_code == 2, out.output
    said = " ".join(out.output.split())
    assert "us would ask no partner, so the cases cannot show the contract: mx: " in said
    assert "inactive_requester (requesting participant is not active (§34, §36))" in said
    assert "`biox participants ready -p us` here and each partner's own" in said


def test_an_operator_certificate_comes_with_its_key_and_the_ca(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from biox.cli import app
    from biox.settings import Settings
    from biox.sim.galleries import build_gallery

    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    build_gallery(Settings(data_dir=tmp_path), "mx", 20, 2026)
    url = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens: nothing may be sent
    base = ["conformance", "-p", "us", "--amqp-url", url]
    pem = tmp_path / "oscar.pem"
    for more, ca in (
        (["--operator-cert", str(pem)], "ca.pem"),
        (["--operator-key", str(pem)], "ca.pem"),
        (["--operator-cert", str(pem), "--operator-key", str(pem)], None),
    ):
        if ca:
            monkeypatch.setenv("BIOX_TLS_CA", ca)
        else:
            monkeypatch.delenv("BIOX_TLS_CA", raising=False)
        out = CliRunner().invoke(app, [*base, *more])
        assert out.exit_code == 2, out.output
        assert "--operator-cert and --operator-key go together, with BIOX_TLS_CA" in out.output
