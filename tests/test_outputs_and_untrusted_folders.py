"""Issue 25: folders you were sent, outputs that already exist, files that lie. Nothing is written outside the named
output, nothing is deleted, nothing in a folder is trusted; every fault is one `error:` line, exit 2.

The lower-layer mechanisms (posekit.io, posekit.safe_paths, posekit.yaml_file, runtime.artifact_check, the arch,
LUT and image bounds) are tested on real files here; the walk over every output option of every stage's CLI finds
the options from the parsers themselves (tests/test_cli.py's PARSERS)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from posekit.errors import UserError
from posekit.io import atomic_path, atomic_write_text, check_writable
from posekit.keypoints import REPO
from posekit.safe_paths import confined, inside, output_folder
from tests.test_cli import PARSERS, walk

VAL = REPO / "data" / "coco-mini" / "val2017"
IMAGE = VAL / "000000000785.jpg"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def tree(root: Path) -> dict:
    """Every file under root with its bytes: what must be unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def shared_tmp():
    """A temp folder every user can reach (pytest's is root-only 0700): the unprivileged checks run in it."""
    d = Path(tempfile.mkdtemp(prefix="posenas-outputs-"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):  # read-only folders made by a test: writable again so they can be removed
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d)


# ---- posekit.io: outputs never destroy what is there --------------------------------------------------------------
def test_a_file_is_never_written_where_a_folder_stands(tmp_path):
    d = tmp_path / "report.json"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="a folder stands there"):
        atomic_write_text(d, "x")
    assert tree(d) == {"sub/keep.txt": b"precious"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp left beside it


def test_a_symlink_out_of_its_folder_is_refused_and_the_target_untouched(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    d = tmp_path / "out"
    d.mkdir()
    (d / "report.json").symlink_to(outside / "passwd")
    with pytest.raises(UserError, match="symlink leading out of its folder"):
        atomic_write_text(d / "report.json", "x")
    assert (outside / "passwd").read_text() == "root:x:0:0" and (d / "report.json").is_symlink()


def test_a_fifo_is_refused_and_a_regular_file_replaced(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(tmp_path / "pipe", "x")
    f = tmp_path / "a.json"
    f.write_text("old")
    atomic_write_text(f, "new")
    assert f.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "pipe"]


def test_a_package_folder_is_replaced_only_by_a_new_package(tmp_path):
    pkg = tmp_path / "model.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "old").write_text("old")
    with atomic_path(pkg, suffix=".mlpackage") as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "new").write_text("new")
    assert tree(pkg) == {"Data/new": b"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]
    with pytest.raises(UserError, match="a folder stands there"), atomic_path(pkg) as tmp:
        tmp.write_text("a file where the package is")
    assert tree(pkg) == {"Data/new": b"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


def test_an_output_under_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match=r"f is not a folder"):
        check_writable(tmp_path / "f" / "x" / "out.json")
    with pytest.raises(UserError, match="f is not a folder"):
        atomic_write_text(tmp_path / "f" / "out.json", "x")
    assert (tmp_path / "f").read_text() == "a file"


def _unprivileged(fn) -> tuple[int, str]:
    """(exit code, stderr) of fn() run as an unprivileged user: as root in a forked child that drops to nobody
    (root writes through any mode bits; CI runs as root), else here. A UserError counts as exit 2 with its line."""
    import contextlib
    import io
    import sys

    def call(err):
        with contextlib.redirect_stderr(err):
            try:
                fn()
                return 0
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 1
            except UserError as e:
                print(f"error: {e}", file=err)
                return 2

    if os.geteuid() != 0:
        err = io.StringIO()
        return call(err), err.getvalue()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody; its stderr text goes up the pipe
        code = 3
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with open(w, "w") as err:
                code = call(err)
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_check_writable_refuses_a_read_only_folder_for_a_normal_user(shared_tmp):
    ro = shared_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, err = _unprivileged(lambda: check_writable(ro / "new" / "keypoints.json"))
    assert code == 2 and f"no permission to write in {ro}" in one_error_line(err), err
    assert _unprivileged(lambda: check_writable(ro))[0] == 2  # the folder itself as an output folder
    assert not (ro / "new").exists()


# ---- every output option of every stage: an existing folder, a symlink out of the tree, a read-only parent ---------
OUTPUT_WORDS = ("out", "output", "json", "results", "plot", "cache", "artifacts")


def output_options():
    """(stage, subcommand prefix, option, 'file' | 'dir') of every output option the stage parsers declare."""
    found = []
    for stage, make in PARSERS.items():
        for prefix, act in walk(make()):
            kind = getattr(act.type, "output", None)
            name = act.option_strings[-1].lstrip("-")
            if name in OUTPUT_WORDS:  # a new output option without an output type would escape these checks
                assert kind in ("file", "dir"), f"{stage} {' '.join(prefix)} --{name}: use posekit.cli.output_*"
            if kind:
                found.append((stage, prefix, act.option_strings[-1], kind))
    return found


OPTIONS = output_options()


def test_the_walk_finds_the_issue_rows_options():
    have = {(s, " ".join(p), o) for s, p, o, _ in OPTIONS}
    for row in [("model", "scale", "--output"), ("device_bench", "bench", "--json"), ("train", "", "--results"),
                ("predict", "", "--out"), ("train", "", "--out"), ("parity", "", "--out")]:
        assert row in have, row
    assert len(OPTIONS) >= 17  # quantize's run hands its options to convert's parser (issue 24): counted there


def _parse(stage, prefix, opt, value):
    """(exit code, stderr) of parsing `opt value` alone in the stage's parser (types run as the option is read)."""
    import contextlib
    import io

    parser = PARSERS[stage]()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args([*prefix, opt, str(value)])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize("stage, prefix, opt, kind", OPTIONS,
                         ids=[f"{s} {' '.join(p)} {o}".replace("  ", " ") for s, p, o, _ in OPTIONS])
def test_every_output_option_refuses_what_would_destroy_or_escape(stage, prefix, opt, kind, shared_tmp):
    # an existing folder with files where a file goes; a file where a folder goes
    taken = shared_tmp / "taken"
    if kind == "file":
        (taken / "sub").mkdir(parents=True)
        (taken / "sub" / "keep.txt").write_text("precious")
    else:
        taken.write_text("precious")
    before = tree(shared_tmp)
    code, err = _parse(stage, prefix, opt, taken)
    assert code == 2 and opt in one_error_line(err) and str(taken) in err, err
    # a symlink out of the tree
    outside = shared_tmp / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    inner = shared_tmp / "tree"
    inner.mkdir()
    (inner / "link").symlink_to(outside / "passwd" if kind == "file" else outside)
    before = tree(shared_tmp)
    code, err = _parse(stage, prefix, opt, inner / "link")
    assert code == 2 and "symlink leading out of its folder" in one_error_line(err), err
    # a read-only parent (as root: checked as nobody, since root writes through any mode bits)
    ro = shared_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = ro / ("out.json" if kind == "file" else "run")
    code, err = _unprivileged(lambda: PARSERS[stage]().parse_args([*prefix, opt, str(target)]))
    assert code == 2 and "no permission to write in" in one_error_line(err), err
    assert tree(shared_tmp) == before and not target.exists()
    # and a fresh path passes the option's check (other required options may still be missing)
    code, err = _parse(stage, prefix, opt, shared_tmp / "fresh" / ("x.json" if kind == "file" else "run"))
    assert "cannot write" not in err, err


# ---- an artifacts folder is untrusted ------------------------------------------------------------------------------
def test_inside_refuses_dotdot_absolute_and_symlinks_out(tmp_path):
    d = tmp_path / "art"
    (d / "tflite").mkdir(parents=True)
    (d / "tflite" / "m.tflite").write_bytes(b"x")
    (tmp_path / "secret").write_text("s")
    (d / "tflite" / "link.tflite").symlink_to(tmp_path / "secret")
    (d / "tflite" / "ok_link.tflite").symlink_to("m.tflite")
    assert inside(d, "tflite/m.tflite") == d / "tflite" / "m.tflite"
    assert inside(d, "tflite/ok_link.tflite").resolve() == (d / "tflite" / "m.tflite").resolve()
    for rel, msg in (("../../../../etc/passwd", r"no '\.\.' part"), ("/etc/passwd", "no absolute path"),
                     ("tflite/../../secret", r"no '\.\.' part"), ("tflite/link.tflite", "leads out of")):
        with pytest.raises(UserError, match=msg):
            inside(d, rel, "manifest.json: artifacts[0].file")


def _manifest_dir(tmp_path, file: str) -> Path:
    """A folder with a manifest listing `file` (the header's fields from a real arch: the contract's form)."""
    from types import SimpleNamespace

    from model.arch import dump, load
    from posekit import manifest

    d = tmp_path / "art"
    d.mkdir()
    arch = load("efficientpose_a")
    src = SimpleNamespace(arch=arch, checkpoint=None, checkpoint_sha256=None, arch_origin="test", random_init=True,
                          note="")
    head = manifest.header(src, dump(arch, d / "arch.yaml"))
    t = {"name": "image", "shape": [1, 256, 192, 3], "dtype": "float32", "layout": "NHWC", "quantization": None}
    entry = {"file": file, "format": "tflite", "precision": "fp32", "quantizer": None, "size_bytes": 10,
             "sha256": "0" * 64, "inputs": [{**t, "kind": "tensor", "normalization_folded": False}],
             "outputs": [{**t, "name": "heatmaps"}]}
    (d / "manifest.json").write_text(json.dumps({**head, "artifacts": [entry]}))
    return d


def test_a_manifest_entry_leading_out_of_the_folder_is_refused(tmp_path, capsys):
    from posekit import manifest

    d = _manifest_dir(tmp_path, "../../../../etc/passwd")
    with pytest.raises(UserError, match=r"artifacts\[0\]\.file: \.\./\.\./\.\./\.\./etc/passwd: must stay inside"):
        manifest.load(d)
    with pytest.raises(UserError, match="does not match"):  # the schema refuses it too
        manifest.validate(json.loads((d / "manifest.json").read_text()))
    # through the stages that read a folder: parity, bench, predict (one line, exit 2, nothing opened or written)
    from device_bench.cli import main as bench
    from parity.cli import main as parity
    from predict.cli import main as predict

    for main, argv in ((parity, ["--model-dir", str(d)]), (bench, ["bench", "--model-dir", str(d)]),
                       (predict, ["--model", str(d), str(IMAGE), "--out", str(tmp_path / "p")])):
        assert main(argv) == 2
        assert "must stay inside" in one_error_line(capsys.readouterr().err)
    assert not (d / "parity").exists() and not (tmp_path / "p").exists()


def test_parity_refuses_a_parity_folder_that_is_a_symlink_out(tmp_path, capsys):
    from parity.cli import main

    d = _manifest_dir(tmp_path, "tflite/m.tflite")
    (tmp_path / "etc").mkdir()
    (d / "parity").symlink_to(tmp_path / "etc")
    assert main(["--model-dir", str(d)]) == 2
    assert "a symlink" in one_error_line(capsys.readouterr().err)
    assert list((tmp_path / "etc").iterdir()) == []
    with pytest.raises(UserError, match="a symlink"):
        output_folder(d, "parity")


def test_writes_under_a_confined_folder_never_leave_it_through_a_symlink(tmp_path):
    out = tmp_path / "parity"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "cache").symlink_to(tmp_path / "elsewhere")
    with confined(out):
        atomic_write_text(out / "report.json", "{}")  # inside: fine
        with pytest.raises(UserError, match="outside"):
            atomic_write_text(out / "cache" / "ref.json", "{}")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    atomic_write_text(out / "cache" / "ref.json", "{}")  # outside the block the rule is not in force


# ---- every stage that runs an artifact checks it -------------------------------------------------------------------
@pytest.fixture(scope="module")
def block_artifacts(tmp_path_factory):
    """A real artifacts folder (one block as fp32 .tflite, manifest in the contract's form), as device_bench's tests
    make it."""
    from types import SimpleNamespace

    from device_bench import host
    from device_bench.lut import select_parts
    from model.arch import dump, load
    from posekit import manifest
    from runtime.tflite import io_details
    from tests.test_device_bench_bench import KEY

    d = tmp_path_factory.mktemp("artifacts") / "block"
    part = select_parts("default", with_shipped=False)[1][KEY]
    src = host.convert_part(part, "fp32", cache=d.parent / "cache")
    dst = d / "tflite" / "model_fp32.tflite"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    io = io_details(dst)
    art = manifest.artifact(d, dst, "tflite", "fp32", None, [
        {**x, "layout": "NHWC", "kind": "tensor", "normalization_folded": False} for x in io["inputs"]],
        [{**x, "layout": "NHWC"} for x in io["outputs"]])
    arch = load("efficientpose_a")
    head = SimpleNamespace(arch=arch, checkpoint=None, checkpoint_sha256=None, arch_origin="test", random_init=True,
                           note="one block")
    manifest.write(d, manifest.header(head, dump(arch, d / "arch.yaml")), [art])
    return d


def damaged(src: Path, dst: Path, how: str) -> Path:
    b = src.read_bytes()
    dst.write_bytes({"cut": b[:4096], "flip": bytes(x ^ 0xFF for x in b[:48]) + b[48:],
                     "tail": b[: len(b) - 64]}[how])
    return dst


@pytest.mark.parametrize("how", ["cut", "flip", "tail"])
def test_a_damaged_tflite_is_one_line_in_the_checker_and_in_bench(block_artifacts, tmp_path, capsys, how):
    from device_bench.cli import main as bench
    from runtime.artifact_check import check_artifact

    src = block_artifacts / "tflite" / "model_fp32.tflite"
    assert check_artifact(src) == src
    bad = damaged(src, tmp_path / "m.tflite", how)
    with pytest.raises(UserError, match="damaged .tflite"):
        check_artifact(bad)
    assert bench(["bench", "--model", str(bad), "--runs", "1", "--warmup", "0"]) == 2
    assert "damaged .tflite" in one_error_line(capsys.readouterr().err)


def test_a_file_changed_after_its_manifest_is_refused_by_bench(block_artifacts, tmp_path, capsys):
    from device_bench.cli import main as bench

    d = shutil.copytree(block_artifacts, tmp_path / "block")
    f = d / "tflite" / "model_fp32.tflite"
    b = bytearray(f.read_bytes())
    b[-100] ^= 1  # one bit in a weight: the file still loads and runs
    f.write_bytes(bytes(b))
    for argv in (["bench", "--model-dir", str(d)], ["bench", "--model", str(f)]):
        assert bench([*argv, "--runs", "1", "--warmup", "0"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "sha256 differs" in line and "model_fp32.tflite" in line


# ---- bounds before allocation ----------------------------------------------------------------------------------------
def test_model_info_on_a_million_channels_is_one_line(tmp_path, capsys):
    from model.cli import main

    a = tmp_path / "big.yaml"
    a.write_text("name: big\nnum_joints: 17\ninput_size: [256, 192]\nstem:\n  - {op: conv_k3, out: 1000000, stride: 2}"
                 "\nblocks:\n" + "  - {op: ir_k3_e6, out: 24, stride: 2}\n" * 3
                 + "head: {type: mbv1, deconv: [64, 32], kernel: 4, sic: true}\n")
    assert main(["info", str(a)]) == 2
    out, err = capsys.readouterr()
    assert "stem[0].out: 1000000 channels" in one_error_line(err) and out == ""


def test_arch_bounds_refuse_flops_and_memory_but_keep_the_shipped_archs():
    from model.arch import MAX_GFLOPS, ArchError, load
    from model.scaling import compound_scale

    for name in ("efficientpose_a", "efficientpose_c", "mobilenetv2_simplebaseline"):
        load(name)
    compound_scale(load("efficientpose_c"), 7)  # the largest compound scaling still builds
    a = load("efficientpose_a")
    with pytest.raises(ArchError, match="GFLOPs|feature map"):
        a.replace(input_size=(4096 * 4, 4096 * 3))
    assert MAX_GFLOPS > 100


BOMB = "name: x\nmeta:\n  a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))


@pytest.mark.parametrize("text, msg", [
    (BOMB, "expands to more than"), ("a: &a [*a]\n", "refers to itself"), ("a: " + "[" * 200 + "]" * 200, "deeper"),
    ("meta:\n  x: " + "[" * 20000 + "]" * 20000, "too deep|deeper")], ids=["billion laughs", "recursive", "deep",
                                                                          "very deep"])
def test_yaml_is_bounded_anywhere_in_the_document(tmp_path, capsys, text, msg):
    from model.cli import main

    f = tmp_path / "arch.yaml"
    f.write_text(text)
    assert main(["check", str(f)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(f) in line and __import__("re").search(msg, line), line


def test_every_yaml_read_goes_through_the_one_reader():
    """No module but posekit/yaml_file.py parses YAML (yaml.safe_dump for writing is fine)."""
    offenders = []
    for p in REPO.rglob("*.py"):
        if any(part in (".venv", "tests") for part in p.relative_to(REPO).parts) or p.name == "yaml_file.py":
            continue
        text = p.read_text()
        if any(s in text for s in ("yaml.safe_load", "yaml.load(", "yaml.full_load", "yaml.unsafe_load",
                                   "yaml.compose", "yaml.SafeLoader")):
            offenders.append(str(p.relative_to(REPO)))
    assert offenders == []


@pytest.mark.parametrize("value, ok", [(1e308, False), (1e-9, False), (20_000.0, False), (0.5, True)])
def test_lut_values_must_be_plausible_latencies(tmp_path, value, ok):
    from model.latency import is_identity_key, load_lut

    lut = json.loads((REPO / "luts" / "pixel.json").read_text())
    key = next(k for k in lut["entries"] if not is_identity_key(k))
    for f in ("median_ms", "mean_ms", "min_ms"):
        if f in lut["entries"][key]:
            lut["entries"][key][f] = value
    p = tmp_path / "lut.json"
    p.write_text(json.dumps(lut))
    if ok:
        assert load_lut(str(p)).ms(key) == value
    else:
        with pytest.raises(UserError, match="not a plausible latency"):
            load_lut(str(p))


def _jpeg_claiming(tmp_path, w: int, h: int) -> Path:
    """A whole, real JPEG whose SOF header is rewritten to claim w x h."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    b = bytearray(buf.tobytes())
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    p = tmp_path / "big.jpg"
    p.write_bytes(bytes(b))
    return p


def test_image_pixels_are_bounded_from_the_header_before_decoding(tmp_path):
    from posekit.transforms import MAX_PIXELS, header_size, read_image

    p = _jpeg_claiming(tmp_path, 20000, 20000)
    assert header_size(p.read_bytes()) == (20000, 20000)
    with pytest.raises(UserError, match=r"20000x20000 = 400,000,000 pixels, more than the 100,000,000"):
        read_image(p)
    assert MAX_PIXELS == 100_000_000
    assert read_image(IMAGE).shape[2] == 3
    with pytest.raises(UserError, match="more than the 1,000 allowed"):
        read_image(IMAGE, max_pixels=1000)


# ---- predict on the shared tiny model's artifacts (tests/app_artifacts.py) -------------------------------------------
def _int8(app_artifacts) -> Path:
    out, man = app_artifacts
    return out / next(a["file"] for a in man["artifacts"] if a["format"] == "tflite" and a["precision"] == "int8"
                      and "io" not in a["file"])


@pytest.mark.slow(30)
@pytest.mark.parametrize("how", ["cut", "flip"])
def test_predict_on_a_damaged_tflite_is_one_line(app_artifacts, tmp_path, capsys, how):
    from predict.cli import main

    bad = damaged(_int8(app_artifacts), tmp_path / "model_int8.tflite", how)
    assert main(["--model", str(bad), str(IMAGE), "--out", str(tmp_path / "o")]) == 2
    assert "damaged .tflite" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow(30)
def test_predict_refuses_a_model_folder_whose_file_changed(app_artifacts, tmp_path, capsys):
    from predict.cli import main
    from tests.app_artifacts import copy_of

    d = copy_of(app_artifacts[0], tmp_path / "art")
    f = d / _int8(app_artifacts).relative_to(app_artifacts[0])
    b = bytearray(f.read_bytes())
    b[-200] ^= 1
    f.write_bytes(bytes(b))
    assert main(["--model", str(d), str(IMAGE), "--out", str(tmp_path / "o")]) == 2
    assert "sha256 differs" in one_error_line(capsys.readouterr().err)
    assert main(["--model", str(f), str(IMAGE), "--out", str(tmp_path / "o")]) == 2  # the file named alone too
    assert "sha256 differs" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow(30)
def test_predict_flags_answers_that_mean_nothing(app_artifacts, tmp_path, capsys):
    from predict.cli import main

    h, w = cv2.imread(str(IMAGE)).shape[:2]
    iid = int(IMAGE.stem)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([
        {"image_id": iid, "category_id": 1, "bbox": [w + 4000, h + 4000, 100, 200], "score": 0.9},  # past the corner
        {"image_id": iid, "category_id": 1, "bbox": [-500, -600, 200, 300], "score": 0.9},  # before it
        {"image_id": iid, "category_id": 1, "bbox": [w - 0.5, 10, 0.8, 0.8], "score": 0.9},  # a sliver on the edge
    ]))
    out = tmp_path / "o"
    assert main(["--model", str(_int8(app_artifacts)), str(IMAGE), "--boxes", str(boxes), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3, text
    res = json.loads((out / "keypoints.json").read_text())
    assert "box_outside_image" in res[0]["flags"] and "box_outside_image" in res[1]["flags"]
    assert "zero_area_crop" in res[2]["flags"]
    # the whole image (no --boxes): a sound answer carries no flag and no warning, unless no joint is confident
    assert main(["--model", str(_int8(app_artifacts)), str(IMAGE), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "keypoints.json").read_text())
    assert ("flags" in res[0]) == ("warning: " in text)
    if "flags" in res[0]:
        assert res[0]["flags"] == ["no_confident_joint"]


@pytest.mark.slow(20)
def test_predict_refuses_an_image_whose_header_is_too_large(app_artifacts, tmp_path, capsys):
    from predict.cli import main

    big = _jpeg_claiming(tmp_path, 20000, 20000)
    assert main(["--model", str(_int8(app_artifacts)), str(big), "--out", str(tmp_path / "o")]) == 2
    assert "20000x20000" in one_error_line(capsys.readouterr().err)
    assert main(["--model", str(_int8(app_artifacts)), str(big), "--out", str(tmp_path / "o"), "--max-pixels",
                 "1000000000"]) in (0, 2)  # raised: decoded (libjpeg finds the 16x16 data short) or refused as corrupt


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    from posekit.lock import folder_lock

    d = tmp_path / "art"
    d.mkdir()
    (tmp_path / "passwd").write_text("root:x:0:0")
    (d / ".lock").symlink_to(tmp_path / "passwd")
    with pytest.raises(UserError, match="a symlink stands there"), folder_lock(d):
        pass
    assert (tmp_path / "passwd").read_text() == "root:x:0:0"
    os.unlink(d / ".lock")
    os.mkfifo(d / ".lock")
    with pytest.raises(UserError, match="not a regular file"), folder_lock(d):
        pass


def test_the_lock_leaves_no_file_behind_and_a_second_writer_is_still_refused(tmp_path):
    """The holder removes .lock as it lets go (a finished or refused run leaves its folder as it was), and while it
    holds the lock a second writer is refused, naming it."""
    from posekit.lock import folder_lock

    d = tmp_path / "art"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with folder_lock(d):
        assert (d / ".lock").is_file()
        with pytest.raises(UserError, match=f"pid {os.getpid()}"), folder_lock(d):
            pass
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    with pytest.raises(UserError, match="bad"), folder_lock(d):
        raise UserError("bad input")
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    with folder_lock(d):  # and it is taken again after
        pass


def test_the_checker_refuses_a_pipe_or_folder_instead_of_blocking(tmp_path):
    from runtime.artifact_check import check_artifact

    os.mkfifo(tmp_path / "m.tflite")
    (tmp_path / "d.onnx").mkdir()
    for name in ("m.tflite", "d.onnx"):
        with pytest.raises(UserError, match="not a regular file"):
            check_artifact(tmp_path / name, "0" * 64)


@pytest.mark.parametrize("name", ["manifest", "lut", "boxes"])
def test_json_nested_past_the_stack_is_one_line(tmp_path, name):
    from model.latency import read_lut
    from posekit import manifest
    from predict.pose_from_artifact import read_boxes

    deep = "[" * 200_000 + "]" * 200_000
    f = tmp_path / ("manifest.json" if name == "manifest" else f"{name}.json")
    f.write_text(deep)
    with pytest.raises(UserError, match="malformed|corrupt"):
        {"manifest": lambda: manifest.load(tmp_path), "lut": lambda: read_lut(f),
         "boxes": lambda: read_boxes(f, 0.5)}[name]()


def test_search_refuses_a_lut_of_1e308_before_training(tmp_path, capsys):
    """The issue's row: a finite but absurd LUT used to train, then fail in derive with state.pt left."""
    from model.latency import is_identity_key
    from search.cli import main

    lut = json.loads((REPO / "luts" / "pixel.json").read_text())
    for k, e in lut["entries"].items():
        if not is_identity_key(k):
            e.update({f: 1e308 for f in ("median_ms", "mean_ms", "min_ms") if f in e})
    p = tmp_path / "pixel.json"
    p.write_text(json.dumps(lut))
    out = tmp_path / "search"
    assert main(["--device", str(p), "--out", str(out), "--epochs", "1"]) == 2
    assert "not a plausible latency" in one_error_line(capsys.readouterr().err)
    assert not (out / "state.pt").exists()
