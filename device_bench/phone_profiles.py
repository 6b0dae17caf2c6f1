"""Phone profiles without a phone: fit a per-op latency model on published per-op tables, predict our keys.

The published tables (data/published-luts, see data/SOURCES.md) time ImageNet-224 MobileNet blocks on a Pixel 1
(ProxylessNAS) and a Samsung Note10 (once-for-all, inputs 160..224). Each entry, and each of our LUT parts, is
described by its primitives (1x1 / KxK / depthwise / transposed convs, residual adds; `parts.module_prims`) and
reduced to a few features: MACs per conv kind, depthwise MACs per kernel size, tensor elements moved, op count,
and on Note10 the h-swish and squeeze-excite elements (zero for our nets). Latency = non-negative weights . features,
fitted to minimise relative error (NNLS on rows scaled by 1/latency); leave-one-out MAPE is the honest error.
Transposed convs enter through the same features: MACs on the input grid (each input pixel scatters a KxK patch)
and tensor sizes, a depthwise one with the depthwise weights of its kernel size, a full one with the KxK conv weight.

Since nn-Meter's per-block tables (Pixel 1, Pixel 4, Pixel 6, Xiaomi Mi 11: 1,800 MobileNetV3 MBConv blocks and stem
convs each, TFLite benchmark_model, 1 thread, XNNPACK) are there, `pixel`, `pixel4`, `pixel6` and `xiaomi11` are
fitted on them. What those tables lack is priced by a stated rule, written into each entry's `how`: 7x7 depthwise
MACs at the 5x5 per-MAC cost times the 7x7/5x5 ratio fitted on the Pixel 1 ProxylessNAS table (the only published
table with 7x7 kernels); our ReLU blocks without the fitted hard-swish term (TFLite fuses ReLU into the conv, while
hard-swish is a pass of its own); transposed convs as above; skip 0 ms. The ProxylessNAS Pixel 1 table (2018 TFLite)
is not mixed into the nn-Meter fit: the nn-Meter Pixel 1 model puts it at ~0.45x, another runtime altogether.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import nnls

from posekit import yaml_file
from posekit.errors import UserError

if TYPE_CHECKING:  # .parts builds PyTorch modules: imported where used, so `python -m device_bench --help` stays light
    from .parts import Part, Prim

PUBLISHED = Path(__file__).resolve().parent.parent / "data" / "published-luts"
_NNMETER = ("nn-Meter {f} (microsoft/nn-Meter dev/hybrid-transformer 9c31e190): 1,788 MobileNetV3 MBConv blocks "
            "(k3/k5, expand 1-6, SE or not, hard-swish) + 12 stem convs, TFLite benchmark_model, 1 thread on a big "
            "core (taskset 70), XNNPACK")
SOURCES = {
    "pixel": {"files": ["nnmeter_pixel1_mbconv_v3.json"], "format": "nnmeter", "phone": "Google Pixel 1",
              "origin": _NNMETER.format(f="pixel1_lut_ln_v3.json")},
    "pixel4": {"files": ["nnmeter_pixel4_mbconv_v3.json"], "format": "nnmeter", "phone": "Google Pixel 4",
               "origin": _NNMETER.format(f="pixel4_lut_ln_v3.json")},
    "pixel6": {"files": ["nnmeter_pixel6_mbconv_v3.json"], "format": "nnmeter", "phone": "Google Pixel 6",
               "origin": _NNMETER.format(f="pixel6_lut_ln_v3.json")},
    "xiaomi11": {"files": ["nnmeter_xiaomi11_mbconv_v3.json"], "format": "nnmeter", "phone": "Xiaomi Mi 11",
                 "origin": _NNMETER.format(f="xiaomi11_lut_ln_v3.json")},
    "pixel-proxylessnas": {"files": ["pixel1_proxylessnas_mobile_trim.yaml"], "expand": "ratio",
                           "phone": "Google Pixel 1",
                           "origin": "ProxylessNAS mobile_trim.yaml (han-cai/files a7c9bcd5), TFLite (2018), "
                                     "ImageNet-224 MobileNetV2 space; thread count not recorded"},
    "note10": {"files": [f"note10_ofa_{r}_lookup_table.yaml" for r in (160, 176, 192, 208, 224)], "expand": "abs",
               "phone": "Samsung Galaxy Note10",
               "origin": "once-for-all note10 lookup tables 160..224 (han-cai/files a7c9bcd5), TFLite, "
                         "MobileNetV3 space"},
}
PHONES = ("pixel", "pixel4", "pixel6", "xiaomi11", "note10")  # the predicted profiles `predict --device` writes
K7_SOURCE = "pixel-proxylessnas"  # the one published table with 7x7 depthwise kernels
FEATURES = ("pw_mmac", "conv_mmac", "dw3_mmac", "dw5_mmac", "dw7_mmac", "melems", "ops", "hs_melems", "se_melems")
_KEY = re.compile(r"^(?P<op>[A-Za-z_0-9]+)-input:(?P<i>\d+x\d+x\d+)-output:(?P<o>[\dx]+)(?P<rest>.*)$")


@dataclass
class Row:
    key: str
    source: str
    prims: list[Prim]
    hs: int = 0  # elements through h-swish
    se: int = 0  # elements scaled by squeeze-excite
    ms: float = 0.0


def features(prims: list[Prim], hs: int = 0, se: int = 0) -> np.ndarray:
    f = dict.fromkeys(FEATURES, 0.0)
    for p in prims:
        if p.kind in ("pw",):
            f["pw_mmac"] += p.macs
        elif p.kind in ("conv", "tconv"):
            f["conv_mmac"] += p.macs
        elif p.kind in ("dw", "tconv_dw"):
            f[f"dw{min(7, max(3, p.kernel | 1))}_mmac"] += p.macs
        f["melems"] += p.in_elems + p.out_elems
        f["ops"] += 1
    f["hs_melems"], f["se_melems"] = hs, se
    return np.array([f[k] / (1 if k == "ops" else 1e6) for k in FEATURES])


def _hwc(s: str) -> tuple[int, int, int]:
    h, w, c = (int(v) for v in s.split("x"))
    return h, w, c


def parse_nnmeter(device: str) -> list[Row]:
    """nn-Meter's `conv_{H}_{Cin}_{Cout}_{E}_{S}_hard_swish_{K}_{se|nose}` (an MBConv block on an HxH input: 1x1
    expand to E*Cin, KxK depthwise with stride S, optional squeeze-excite, 1x1 project, a residual add when S=1 and
    Cin=Cout; hard-swish after the expand and depthwise convs) and `firstconv_{H}_3_{Cout}_{S}_{K}` (the stem conv,
    hard-swish) as rows. The expand conv is there at E=1 too: that reading fits the table better (LOO 4.6% vs 4.9%
    on Pixel 4)."""
    import json

    from .parts import conv_prim, ir_prims

    rows = []
    for name in SOURCES[device]["files"]:
        path = PUBLISHED / name
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read the published table ({e})") from None
        for key, ms in table.items():
            p = key.split("_")
            try:
                if p[0] == "conv" and len(p) == 10 and p[6:8] == ["hard", "swish"]:
                    h, cin, cout, e, stride, k = (int(v) for v in (*p[1:6], p[8]))
                    mid, ho = cin * e, -(-h // stride)
                    prims = ir_prims(h, h, cin, cout, mid, k, stride, stride == 1 and cin == cout)
                    hs, se = mid * h * h + mid * ho * ho, (mid * ho * ho if p[9] == "se" else 0)
                elif p[0] == "firstconv" and len(p) == 6:
                    h, cin, cout, stride, k = (int(v) for v in p[1:6])
                    ho = -(-h // stride)
                    prims, hs, se = [conv_prim(cin, cout, k, stride, h, h)], cout * ho * ho, 0
                else:
                    raise ValueError(key)
                ms = float(ms)
                assert np.isfinite(ms) and ms > 0
            except (ValueError, AssertionError, TypeError):
                raise UserError(f"{path}: entry {key!r}: expected conv_H_Cin_Cout_E_S_hard_swish_K_se|nose or "
                                f"firstconv_H_3_Cout_S_K with a latency > 0 (ms)") from None
            rows.append(Row(f"{name}:{key}", device, prims, hs, se, ms))
    return rows


def parse_published(device: str) -> list[Row]:
    """The conv entries of a published table as rows (pooling and the fully connected classifier are skipped: our
    networks have neither)."""
    from .parts import conv_prim, ir_prims

    src = SOURCES[device]
    if src.get("format") == "nnmeter":
        return parse_nnmeter(device)
    rows = []
    for name in src["files"]:
        path = PUBLISHED / name
        table = yaml_file.load(path)  # the one YAML reader (bounded)
        for key, v in table.items():
            m = _KEY.match(key)
            if not m or not isinstance(v, dict) or "mean" not in v:
                raise UserError(f"{path}: entry {key!r}: expected '<op>-input:HxWxC-output:...' with a mean")
            if m["op"] not in ("expanded_conv", "Conv", "Conv_1"):
                continue
            (h, w, cin), (ho, wo, cout) = _hwc(m["i"]), _hwc(m["o"])
            opts = dict(kv.split(":") for kv in m["rest"].strip("-").split("-") if kv)
            stride = 1 if ho == h else 2
            hs_on, se_on = opts.get("hs") == "1", opts.get("se") == "1"
            if m["op"] == "expanded_conv":
                e, k = int(opts["expand"]), int(opts["kernel"])
                mid = cin * e if src["expand"] == "ratio" else e
                prims = ir_prims(h, w, cin, cout, mid, k, stride, opts["idskip"] == "1", expand_conv=mid != cin)
                hs = (mid * h * w * (mid != cin) + mid * ho * wo) if hs_on else 0
                se = mid * ho * wo if se_on else 0
            elif m["op"] in ("Conv", "Conv_1") and h > 1:
                k = 3 if m["op"] == "Conv" else 1
                prims = [conv_prim(cin, cout, k, stride, h, w)]
                hs = cout * ho * wo if device == "note10" else 0  # MobileNetV3's first and last convs use h-swish
                se = 0
            else:
                continue
            rows.append(Row(f"{name}:{key}", device, prims, hs, se, float(v["mean"])))
    return rows


DW5, DW7 = FEATURES.index("dw5_mmac"), FEATURES.index("dw7_mmac")


def fold_k7(x: np.ndarray, rho: float | None) -> np.ndarray:
    """7x7 depthwise MACs priced as 5x5 ones times `rho` (for tables without 7x7 rows: their dw7 weight is unfit)."""
    x = np.array(x, dtype=float)
    if rho is not None:
        x[..., DW5] += rho * x[..., DW7]
        x[..., DW7] = 0.0
    return x


@dataclass
class Fit:
    coef: np.ndarray
    loo_ape: np.ndarray | None  # leave-one-out absolute percentage error per row
    rho: float | None = None  # 7x7 / 5x5 depthwise per-MAC ratio when the table has no 7x7 rows

    def predict(self, x: np.ndarray) -> float:
        return float(fold_k7(x, self.rho) @ self.coef)


def fit(rows: list[Row], rho: float | None = None, loo: bool = True) -> Fit:
    """NNLS on relative error; leave-one-out refits once per row."""
    x = fold_k7(np.stack([features(r.prims, r.hs, r.se) for r in rows]), rho)
    y = np.array([r.ms for r in rows])
    a = x / y[:, None]
    coef, _ = nnls(a, np.ones(len(y)))
    if not loo:
        return Fit(coef, None, rho)
    ape = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c, _ = nnls(a[keep], np.ones(keep.sum()))
        ape[i] = abs(x[i] @ c - y[i]) / y[i]
    return Fit(coef, ape, rho)


def k7_ratio() -> float:
    """The 7x7 / 5x5 depthwise per-MAC cost ratio of the one published table with 7x7 kernels."""
    c = fit(parse_published(K7_SOURCE), loo=False).coef
    if c[DW5] <= 0 or c[DW7] <= 0:
        raise UserError(f"{K7_SOURCE}: no 5x5 / 7x7 depthwise cost fitted; cannot price 7x7 kernels")
    return float(c[DW7] / c[DW5])


def part_features(part: Part, deploy=None) -> np.ndarray:
    from .parts import module_prims

    if part.is_identity:
        return np.zeros(len(FEATURES))
    m = part.module()
    if deploy is not None:
        m = deploy(m)
    return features(module_prims(m, part.sample()))


def device_fit(device: str, loo: bool = True) -> tuple[Fit, list[Row]]:
    if device not in SOURCES:
        raise UserError(f"no published table to predict '{device}' from (one of {', '.join(PHONES)})")
    rows = parse_published(device)
    has7 = any(p.kind == "dw" and p.kernel == 7 for r in rows for p in r.prims)
    return fit(rows, None if has7 else k7_ratio(), loo), rows


def _how(part: Part, x: np.ndarray, f: Fit, relu_note: bool, deploy) -> str | None:
    """How an entry was obtained where the table has nothing like it (None: like the table's own rows)."""
    if part.is_identity:
        return "skip: identity, 0 ms by definition"
    how = []
    if f.rho is not None and x[DW7] > 0:
        how.append(f"7x7 depthwise priced per MAC as 5x5 x {f.rho:.2f} (the 7x7/5x5 ratio fitted on "
                   f"{SOURCES[K7_SOURCE]['files'][0]}; this table has no 7x7 kernels)")
    if relu_note:
        how.append("ReLU (fused into the conv in TFLite): the table's blocks all use hard-swish; its fitted "
                   "hard-swish term is left out")
    if part.kind == "neck":
        how.append("BiFPN neck: no published row is like it; priced by its convs (depthwise, 1x1) and their tensor "
                   "sizes alone: its fusion multiply-adds, nearest resizes, max pools and the part's packing "
                   "slices are not features of the table")
    if part.kind == "head" and part.arch.head.deconv:  # a head behind a neck has no transposed convs
        how.append("head transposed convs: MACs on the input grid priced as full KxK convs"
                   + ("; depthwise ones as deployed (model.deploy: stride-1 depthwise conv + pixel shuffle)"
                      if deploy else ""))
    return "; ".join(how) or None


def predict_lut(device: str, parts: dict[str, Part], deploy=None) -> tuple[dict, dict]:
    """(header fields, entries) of the predicted profile for `device` (one of PHONES)."""
    f, rows = device_fit(device)
    src = SOURCES[device]
    relu_note = all(r.hs > 0 for r in rows)
    plain = np.array([r.hs == 0 and r.se == 0 for r in rows])
    rel_rmse = float(np.sqrt(np.mean(f.loo_ape ** 2)))
    entries = {}
    for key, part in parts.items():
        x = part_features(part, deploy)
        ms = 0.0 if part.is_identity else f.predict(x)
        if not part.is_identity and not ms > 0:
            raise UserError(f"{device}: {key}: the fitted model predicts {ms} ms (features {x.tolist()})")
        e = {"median_ms": round(ms, 5), "mean_ms": round(ms, 5), "std_ms": round(ms * rel_rmse, 5), "n": 0}
        how = _how(part, x, f, relu_note, deploy)
        if how:
            e["how"] = how
        entries[key] = e
    error = {
        "metric": "leave-one-out MAPE over the published entries (each row predicted by a fit without it)",
        "loo_mape_pct": round(100 * float(f.loo_ape.mean()), 2),
        "loo_median_ape_pct": round(100 * float(np.median(f.loo_ape)), 2),
        "loo_max_ape_pct": round(100 * float(f.loo_ape.max()), 2),
        "loo_mape_pct_plain_rows": round(100 * float(f.loo_ape[plain].mean()), 2) if plain.any() else None,
        "n_entries": len(rows), "n_plain_rows": int(plain.sum()),
        "not_covered": "entries whose `how` is set are extrapolated by the rule it states; the LOO figure does "
                       "not cover that rule",
    }
    header = {
        "provenance": f"predicted from {', '.join('data/published-luts/' + n for n in src['files'])} "
                      f"({src['phone']}; {src['origin']})",
        "error": error,
        "fingerprint": {"kind": "predicted", "phone": src["phone"], "tables": src["files"]},
        "model": {
            "kind": "non-negative linear model over per-part features, fitted on relative error (scipy nnls)",
            "features": list(FEATURES),
            "coef_ms": {k: round(float(c), 6) for k, c in zip(FEATURES, f.coef)},
            "units": "mmac/melems: millions of MACs / tensor elements; ops: convs + adds; hs/se: elements through "
                     "hard-swish / squeeze-excite (zero in our ReLU nets)",
            "k7_per_mac_vs_k5": f.rho,
            "transposed_convs": "full ConvTranspose2d (plain head): MACs on the input grid (each input pixel "
                                "scatters a KxK patch) priced with the KxK conv weight, plus tensor sizes; "
                                + ("depthwise ones are first rewritten by model.deploy.deploy_model (what ships: a "
                                   "stride-1 depthwise conv with one output channel per phase + pixel shuffle) and "
                                   "priced as depthwise convs" if deploy else
                                   "depthwise ones (not deployed) priced with the depthwise weights of the nearest "
                                   "odd kernel >= K"),
            "skip": "identity: 0 ms",
        },
    }
    return header, entries


def arch_features(arch, deploy=None) -> np.ndarray:
    from .parts import arch_parts

    return sum((part_features(p, deploy) for p in arch_parts(arch).values()), np.zeros(len(FEATURES)))


def check_transfer(deploy=None, archs=None) -> list[dict]:
    """Fit without one phone's table (on the other nn-Meter phones' pooled rows), predict that phone's ranking of
    the shipped archs (EfficientPose-A/B/C, MobileNetV2-SimpleBaseline) and compare it with the ranking its own
    table gives. Note10 (its own OFA tables) is held out against all four nn-Meter phones."""
    from scipy.stats import kendalltau

    from model import arch as archlib

    archs = archs or [archlib.load(p) for p in archlib.shipped().values()]
    feats = {a.name: arch_features(a, deploy) for a in archs}
    nnm = [d for d in PHONES if SOURCES[d].get("format") == "nnmeter"]
    rho = k7_ratio()
    tables = {d: parse_published(d) for d in PHONES}
    out = []
    for held in PHONES:
        own, _ = device_fit(held, loo=False)
        pool = [r for d in nnm if d != held for r in tables[d]]
        other = fit(pool, rho, loo=False)
        own_ms = {n: own.predict(x) for n, x in feats.items()}
        tr_ms = {n: other.predict(x) for n, x in feats.items()}
        names = list(feats)
        rank_own = sorted(names, key=own_ms.get)
        rank_tr = sorted(names, key=tr_ms.get)
        tau = kendalltau([own_ms[n] for n in names], [tr_ms[n] for n in names]).statistic
        held_rows = tables[held]
        x = fold_k7(np.stack([features(r.prims, r.hs, r.se) for r in held_rows]), rho)
        y = np.array([r.ms for r in held_rows])
        pred = x @ other.coef
        scale = float(np.median(y / pred))
        out.append({"held_out": held, "fitted_on": [d for d in nnm if d != held], "own_ms": own_ms,
                    "transferred_ms": tr_ms, "rank_own": rank_own, "rank_transferred": rank_tr,
                    "same_ranking": rank_own == rank_tr, "kendall_tau": float(tau),
                    "rows_mape_pct": float(100 * np.mean(np.abs(pred - y) / y)),
                    "rows_mape_pct_one_scale": float(100 * np.mean(np.abs(scale * pred - y) / y)),
                    "scale": scale})
    return out
