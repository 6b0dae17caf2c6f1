"""Phone profiles predicted from the published per-op tables, and the shipped LUT files."""

import numpy as np
import pytest

from device_bench import phone_profiles
from device_bench.lut import select_parts
from device_bench.parts import ir_prims, module_prims, shipped_archs
from model import arch as archlib
from model.latency import load_lut, network_keys
from model.space import load_space


@pytest.mark.parametrize("device,n_rows", [("pixel-proxylessnas", 71), ("note10", 465)])
def test_published_tables_parse_and_fit_within_15pct_leave_one_out(device, n_rows):
    rows = phone_profiles.parse_published(device)
    assert len(rows) == n_rows and all(r.ms > 0 and r.prims for r in rows)
    f = phone_profiles.fit(rows)
    assert (f.coef >= 0).all()
    assert 100 * f.loo_ape.mean() <= 15


def test_nnmeter_rows_are_mbconv_blocks_and_stem_convs():
    rows = {r.key.split(":", 1)[1]: r for r in phone_profiles.parse_published("pixel4")}
    assert len(rows) == 1800
    r = rows["conv_112_16_16_1_1_hard_swish_3_nose"]  # expand 1: the expand conv is there; S=1, 16->16: residual
    assert [p.kind for p in r.prims] == ["pw", "dw", "pw", "add"] and r.hs == 2 * 16 * 112 * 112 and r.se == 0
    r = rows["conv_112_16_16_3_2_hard_swish_3_nose"]
    assert [p.kind for p in r.prims] == ["pw", "dw", "pw"] and r.prims[1].stride == 2 and r.prims[0].macs == \
        112 * 112 * 16 * 48
    r = rows["firstconv_224_3_24_2_3"]
    assert [p.kind for p in r.prims] == ["conv"] and r.prims[0].macs == 112 * 112 * 24 * 3 * 9
    assert any(r.se for r in rows.values()) and all(r.hs for r in rows.values())


def test_seven_by_seven_kernels_cost_more_than_five_by_five_per_block():
    rho = phone_profiles.k7_ratio()  # from the one published table with 7x7 kernels
    assert rho > 0
    f, _ = phone_profiles.device_fit("pixel6", loo=False)
    assert f.rho == rho
    k5 = phone_profiles.features(ir_prims(32, 24, 32, 32, 192, 5, 1, residual=True))
    k7 = phone_profiles.features(ir_prims(32, 24, 32, 32, 192, 7, 1, residual=True))
    assert f.predict(k7) > f.predict(k5) > 0


def test_pixel_expand_is_a_ratio_and_note10_expand_is_absolute():
    px = {r.key.split(":", 1)[1]: r for r in phone_profiles.parse_published("pixel-proxylessnas")}
    r = px["expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0"]
    assert [p.kind for p in r.prims] == ["pw", "dw", "pw"] and r.prims[0].macs == 112 * 112 * 16 * 48
    nt = {r.key.split(":", 1)[1]: r for r in phone_profiles.parse_published("note10")}
    r = nt["expanded_conv-input:112x112x24-output:56x56x32-expand:72-kernel:5-stride:2-idskip:0-se:0-hs:0"]
    assert r.prims[0].macs == 112 * 112 * 24 * 72 and r.prims[1].kernel == 5 and r.hs == r.se == 0
    r = nt["expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"]
    assert [p.kind for p in r.prims] == ["dw", "pw", "add"]  # mid == in: no expand conv


def test_block_primitives_from_the_module_match_the_analytic_block():
    _, parts, _ = select_parts("default", with_shipped=False)
    p = parts["ir_k5_e6|in=64x48x24|out=24|s=1"]
    got = module_prims(p.module(), p.sample())
    assert got == ir_prims(64, 48, 24, 24, 144, 5, 1, residual=True)


def test_transposed_convs_are_priced_from_their_macs():
    arch = archlib.load("efficientpose_a")  # plain head: full ConvTranspose2d 96->64, 64->32
    net_parts = [p for p in select_parts("default")[1].values() if p.key == network_keys(arch)[-1]]
    prims = module_prims(net_parts[0].module(), net_parts[0].sample())
    assert [p.kind for p in prims][:2] == ["tconv", "tconv"]
    assert prims[0].macs == 16 * 12 * 96 * 64 * 4 * 4


@pytest.mark.parametrize("device", ["pixel", "pixel4", "pixel6", "xiaomi11", "note10"])
def test_shipped_phone_profiles(device):
    space = load_space("default")
    lut = load_lut(device, space)  # covers every key of the space (else this raises)
    h = lut.header
    assert h["provenance"].startswith("predicted from data/published-luts/") and h["device"] == device
    assert h["error"]["loo_mape_pct"] <= 8 and h["search_space_sha256"] == space.sha256
    assert h["fingerprint"]["kind"] == "predicted"
    # what no published row is like says how it was priced: skip, 7x7 kernels (nn-Meter has none), the head
    # (a head behind a neck has no transposed convs, "_d_": a 3x3 depthwise and a 1x1 conv, like the table's rows)
    assert all("how" in e for k, e in lut.entries.items() if k.startswith(("skip", "head", "neck")) and "_d_" not in k)
    if device != "note10":
        assert all("ReLU" in e["how"] for k, e in lut.entries.items() if not k.startswith("skip"))
        assert "7x7 depthwise" in lut.entries["ir_k7_e6|in=64x48x24|out=24|s=1"]["how"]
    # the search reads it by name
    from search.cost import load_cost

    assert load_cost(device, space).unit == "ms"
    for a in shipped_archs():
        assert not lut.missing(network_keys(a)), a.name
    skips = [k for k in space.lut_keys() if k.startswith("skip")]
    assert skips and all(lut.ms(k) == 0 for k in skips)
    # relations any sane profile keeps: wider/bigger-kernel blocks cost more, the SimpleBaseline head is heavy
    assert lut.ms("ir_k7_e6|in=64x48x24|out=24|s=1") > lut.ms("ir_k3_e3|in=64x48x24|out=24|s=1")
    lat = {a.name: lut.latency(a) for a in shipped_archs()}
    assert lat["efficientpose-a"] < lat["efficientpose-b"] < lat["efficientpose-c"]
    assert lat["efficientpose-a-mbv1"] < lat["efficientpose-a"]  # separable head is cheaper than the plain one
    assert np.isfinite(list(lat.values())).all()
