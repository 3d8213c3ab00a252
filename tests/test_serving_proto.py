"""The committed generated code is what grpcio-tools makes of the committed .proto (fails when stale)."""

from __future__ import annotations

from serving.protogen import GENERATED, PROTO_ROOT, generate


def test_generated_code_is_up_to_date(tmp_path):
    fresh = generate(tmp_path)
    assert [p.name for p in fresh] == list(GENERATED)
    for path in fresh:
        committed = PROTO_ROOT / "coopnets" / "v1" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m serving.protogen` and commit the result"
        )


def test_contract_names_the_mask_convention():
    text = (PROTO_ROOT / "coopnets" / "v1" / "coopnets.proto").read_text()
    assert "1 = missing" in text and "WHITE (255) = MISSING" in text
