"""Phone profiles without a phone: fit a per-op latency model on published per-op tables, predict our keys.

The published tables (data/published-luts, see data/SOURCES.md) time ImageNet-224 MobileNet blocks on a Pixel 1
(ProxylessNAS) and a Samsung Note10 (once-for-all, inputs 160..224). Each entry, and each of our LUT parts, is
described by its primitives (1x1 / KxK / depthwise / transposed convs, residual adds; `parts.module_prims`) and
reduced to a few features: MACs per conv kind, depthwise MACs per kernel size, tensor elements moved, op count,
and on Note10 the h-swish and squeeze-excite elements (zero for our nets). Latency = non-negative weights . features,
fitted to minimise relative error (NNLS on rows scaled by 1/latency); leave-one-out MAPE is the honest error.
Transposed convs enter through the same features: MACs on the input grid (each input pixel scatters a KxK patch)
and tensor sizes, a depthwise one with the depthwise weights of its kernel size, a full one with the KxK conv weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import nnls

from posekit.errors import UserError

from .parts import Part, Prim, conv_prim, ir_prims, module_prims

PUBLISHED = Path(__file__).resolve().parent.parent / "data" / "published-luts"
SOURCES = {
    "pixel": {"files": ["pixel1_proxylessnas_mobile_trim.yaml"], "expand": "ratio", "phone": "Google Pixel 1",
              "origin": "ProxylessNAS mobile_trim.yaml (han-cai/files a7c9bcd5), TFLite, ImageNet-224 MobileNetV2 "
                        "space; thread count not recorded"},
    "note10": {"files": [f"note10_ofa_{r}_lookup_table.yaml" for r in (160, 176, 192, 208, 224)], "expand": "abs",
               "phone": "Samsung Galaxy Note10",
               "origin": "once-for-all note10 lookup tables 160..224 (han-cai/files a7c9bcd5), TFLite, "
                         "MobileNetV3 space"},
}
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


def parse_published(device: str) -> list[Row]:
    """The conv entries of a published table as rows (pooling and the fully connected classifier are skipped: our
    networks have neither)."""
    src = SOURCES[device]
    rows = []
    for name in src["files"]:
        path = PUBLISHED / name
        try:
            table = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{path}: cannot read the published table ({e})") from None
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


@dataclass
class Fit:
    coef: np.ndarray
    loo_ape: np.ndarray  # leave-one-out absolute percentage error per row

    def predict(self, x: np.ndarray) -> float:
        return float(np.asarray(x) @ self.coef)


def fit(rows: list[Row]) -> Fit:
    """NNLS on relative error; leave-one-out refits once per row."""
    x = np.stack([features(r.prims, r.hs, r.se) for r in rows])
    y = np.array([r.ms for r in rows])
    a = x / y[:, None]
    coef, _ = nnls(a, np.ones(len(y)))
    ape = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c, _ = nnls(a[keep], np.ones(keep.sum()))
        ape[i] = abs(x[i] @ c - y[i]) / y[i]
    return Fit(coef, ape)


def part_features(part: Part, deploy=None) -> np.ndarray:
    if part.is_identity:
        return np.zeros(len(FEATURES))
    m = part.module()
    if deploy is not None:
        m = deploy(m)
    return features(module_prims(m, part.sample()))


def predict_lut(device: str, parts: dict[str, Part], deploy=None) -> tuple[dict, dict]:
    """(header fields, entries) of the predicted profile for `device` ('pixel' or 'note10')."""
    if device not in SOURCES:
        raise UserError(f"no published table to predict '{device}' from (one of {', '.join(SOURCES)})")
    src = SOURCES[device]
    rows = parse_published(device)
    f = fit(rows)
    plain = np.array([r.hs == 0 and r.se == 0 for r in rows])
    rel_rmse = float(np.sqrt(np.mean(f.loo_ape ** 2)))
    entries = {}
    for key, part in parts.items():
        ms = 0.0 if part.is_identity else max(0.0, f.predict(part_features(part, deploy)))
        entries[key] = {"median_ms": round(ms, 5), "mean_ms": round(ms, 5), "std_ms": round(ms * rel_rmse, 5), "n": 0}
    error = {
        "metric": "leave-one-out MAPE over the published conv entries",
        "loo_mape_pct": round(100 * float(f.loo_ape.mean()), 2),
        "loo_median_ape_pct": round(100 * float(np.median(f.loo_ape)), 2),
        "loo_max_ape_pct": round(100 * float(f.loo_ape.max()), 2),
        "loo_mape_pct_plain_rows": round(100 * float(f.loo_ape[plain].mean()), 2) if plain.any() else None,
        "n_entries": len(rows), "n_plain_rows": int(plain.sum()),
    }
    header = {
        "provenance": f"predicted from {', '.join('data/published-luts/' + n for n in src['files'])} "
                      f"({src['phone']}; {src['origin']})",
        "error": error,
        "model": {
            "kind": "non-negative linear model over per-part features, fitted on relative error (scipy nnls)",
            "features": list(FEATURES),
            "coef_ms": {k: round(float(c), 6) for k, c in zip(FEATURES, f.coef)},
            "units": "mmac/melems: millions of MACs / tensor elements; ops: convs + adds; hs/se: Note10 only",
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
