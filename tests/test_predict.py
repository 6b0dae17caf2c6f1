"""`posenas` (posekit.console) and `posenas predict` (predict/): the console lists and dispatches every stage; predict
runs an artifact on real COCO images from the file's own metadata (the artifact copied alone, no manifest, no
checkpoint) and its keypoints agree with PyTorch's on the same crops (OKS-agreement, posekit.evaluate)."""

import json
import shutil

import cv2
import numpy as np
import pytest

from posekit import console
from posekit.keypoints import REPO

VAL = REPO / "data" / "coco-mini" / "val2017"
DETS = REPO / "data" / "coco-mini" / "annotations" / "person_detection_results_val2017.json"
IMAGES = [VAL / "000000000785.jpg", VAL / "000000040083.jpg"]


def test_posenas_help_lists_every_stage(capsys):
    assert console.main(["--help"]) == 0
    text = capsys.readouterr().out
    for stage in ("model", "device_bench", "search", "train", "convert", "quantize", "parity", "demo", "predict"):
        assert f"\n  {stage} " in text
        assert (REPO / stage / "__main__.py").is_file()  # each is a real stage CLI
    assert console.main([]) == 2


def test_posenas_dispatches_to_the_stage_cli(capsys):
    try:
        rc = console.main(["predict", "--help"])
    except SystemExit as e:  # argparse's --help exits 0 unless the stage's main_guard returns it
        rc = e.code
    assert rc == 0 and "python -m predict" in capsys.readouterr().out
    assert console.main(["nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_pyproject_declares_the_console_script():
    import tomllib

    p = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert p["project"]["scripts"]["posenas"] == "posekit.console:main"
    assert "predict*" in p["tool"]["setuptools"]["packages"]["find"]["include"]


def test_predict_bad_input_is_one_error_line(tmp_path, capsys):
    from predict.pose_from_artifact import read_boxes

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    assert console.main(["predict", "--model", str(model), str(IMAGES[0]), "--min-score", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("error: argument --min-score: expected a finite number >= 0 and <= 1, "
                                               "got '2' (see python -m predict --help)")
    assert console.main(["predict", "--model", str(model), str(tmp_path / "none.jpg")]) == 2
    assert "none.jpg: no such image file" in capsys.readouterr().err
    bad = tmp_path / "dets.json"
    for body, msg in (([{"image_id": 1}], r"\[0\].bbox: missing"),
                      ([{"image_id": 1, "bbox": [0, 0, -1, 2]}], r"\[0\].bbox: width and height"),
                      ([{"image_id": "a", "bbox": [0, 0, 1, 2]}], r"\[0\].image_id: expected an integer"),
                      ({"x": 1}, "expected a list")):
        bad.write_text(json.dumps(body))
        with pytest.raises(Exception, match=msg):
            read_boxes(bad, 0.5)
    # a model folder without a manifest, and an artifact without our metadata
    assert console.main(["predict", "--model", str(tmp_path), str(IMAGES[0]), "--out", str(tmp_path / "o")]) == 2
    assert "needs manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def _gt_boxes(n_images: int = 4):
    """(images, COCO detection results) from the bundled train2017 annotations' person boxes (labelled persons): the
    images the test model was fitted on, where its heatmaps have real peaks."""
    ann = json.loads((REPO / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
            for a in ann["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")]
    ids = sorted({d["image_id"] for d in dets})[:n_images]
    files = {i["id"]: i["file_name"] for i in ann["images"]}
    images = [REPO / "data" / "coco-mini" / "train2017" / files[i] for i in ids]
    return images, [d for d in dets if d["image_id"] in ids]


def _torch_keypoints(ckpt, images, boxes_by_image):
    """PyTorch's keypoints on the same crops, made by the data pipeline (posekit.transforms) from the checkpoint."""
    import torch

    from model.checkpoint import load_checkpoint
    from posekit.evaluate import keypoints_from_heatmaps
    from posekit.transforms import box_to_center_scale, load_image_crop

    net, arch, _ = load_checkpoint(ckpt)
    kps = []
    for img in images:
        for box in boxes_by_image[int(img.stem)]:
            c, s = box_to_center_scale(box, arch.input_size)
            x, M = load_image_crop(img, c, s, arch.input_size)
            with torch.no_grad():
                hm = net.eval()(torch.from_numpy(x)[None]).numpy()
            kps.append(keypoints_from_heatmaps(hm, [M])[0])
    return np.stack(kps)


def _predict_alone(out, m, fmt, precision, tmp_path, images=IMAGES, dets=DETS):
    """Copy one artifact alone into an empty folder (no manifest, no checkpoint) and run `posenas predict` on it."""
    a = next(a for a in m["artifacts"] if a["format"] == fmt and a["precision"] == precision)
    alone = tmp_path / "alone"
    alone.mkdir()
    src = out / a["file"]
    dst = alone / src.name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    res = tmp_path / "pred"
    argv = ["predict", "--model", str(dst), *map(str, images), "--out", str(res)]
    assert console.main(argv + (["--boxes", str(dets)] if dets else [])) == 0
    return json.loads((res / "keypoints.json").read_text()), res


def _agreement(out, m, fmt, precision, tmp_path, images=IMAGES, dets=DETS):
    from posekit.evaluate import oks_agreement
    from predict.pose_from_artifact import read_boxes

    results, res = _predict_alone(out, m, fmt, precision, tmp_path, images, dets)
    by_image = read_boxes(dets, 0.5)
    boxes = {int(p.stem): [b for b, _ in by_image[int(p.stem)]] for p in images}
    ref = _torch_keypoints(m["source"]["checkpoint"], images, boxes)
    pred = np.array([r["keypoints"] for r in results], np.float64).reshape(len(results), -1, 3)
    assert [r["image_id"] for r in results] == [int(p.stem) for p in images for _ in boxes[int(p.stem)]]
    areas = np.array([b[2] * b[3] for p in images for b in boxes[int(p.stem)]])
    for p in images:  # the overlay is a real image of the input's size
        png = cv2.imread(str(res / f"{p.stem}_pose.png"))
        assert png is not None and png.shape == cv2.imread(str(p)).shape
    return oks_agreement(ref, pred, areas), ref, pred


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "coreml-mlprogram"])
def test_predict_fp32_from_metadata_alone_matches_pytorch(app_artifacts, tmp_path, fmt):
    out, m = app_artifacts
    oks, ref, pred = _agreement(out, m, fmt, "fp32", tmp_path)
    assert len(oks) == 6 and oks.min() > 0.99, oks
    assert np.abs(pred[..., :2] - ref[..., :2]).max() < 1.0  # the same heatmap cells (sub-pixel: float rounding)


def test_predict_int8_from_metadata_alone_within_parity(app_artifacts, tmp_path):
    out, m = app_artifacts
    images, dets = _gt_boxes()
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    oks, _, _ = _agreement(out, m, "tflite", "int8", tmp_path, images, tmp_path / "dets.json")
    assert len(oks) == len(dets) >= 8 and np.nanmean(oks) >= 0.90, oks


def test_predict_whole_image_and_model_folder(app_artifacts, tmp_path):
    """No --boxes: the whole image is one person; a model folder runs its tflite int8 (manifest)."""
    out, m = app_artifacts
    results, _ = _predict_alone(out, m, "tflite", "fp32", tmp_path, dets=None)
    assert [r["image_id"] for r in results] == [int(p.stem) for p in IMAGES]
    assert all(len(r["keypoints"]) == 3 * 17 for r in results)
    from predict.pose_from_artifact import resolve_model

    assert resolve_model(out).name == "model_int8.tflite"


def test_predict_without_metadata_uses_the_manifest_or_says_what_is_missing(app_artifacts, tmp_path, capsys):
    import onnx

    out, m = app_artifacts
    a = next(a for a in m["artifacts"] if a["format"] == "onnx")
    d = tmp_path / "model"
    (d / "onnx").mkdir(parents=True)
    model = onnx.load(str(out / a["file"]))
    del model.metadata_props[:]  # as converted before metadata was embedded
    onnx.save(model, str(d / a["file"]))
    argv = ["predict", "--model", str(d / a["file"]), str(IMAGES[0]), "--out", str(tmp_path / "o")]
    assert console.main(argv) == 2
    assert "metadata_props has no 'posenas' entry" in capsys.readouterr().err
    from posekit.io import sha256_file

    # the manifest such a convert wrote lists these very bytes (a file changed after its manifest is refused)
    m = {**m, "artifacts": [{**x, "sha256": sha256_file(d / a["file"])} if x is a else x for x in m["artifacts"]]}
    (d / "manifest.json").write_text(json.dumps(m))
    assert console.main(argv) == 0
    assert f"using {d / 'manifest.json'}" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "o" / "keypoints.json").read_text())) == 1


@pytest.mark.slow(90)
def test_predict_uses_in_file_keypoints_of_a_decoded_int8_file(app_artifacts, tmp_path, capsys):
    """`posenas predict --model model_int8_kp.tflite` (issue 28) says it uses the file's own keypoints and gives the
    keypoints of the plain int8 file, each copied alone, within 0.5 px in the image."""
    import subprocess
    import sys

    from tests.app_artifacts import CALIB, copy_of

    out, m = app_artifacts
    d = copy_of(out, tmp_path / "art")
    r = subprocess.run([sys.executable, "-m", "convert", "--ckpt", m["source"]["checkpoint"], "--targets",
                        "tflite-int8-kp", "--calib", str(CALIB), "--out", str(d)], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    m2 = json.loads((d / "manifest.json").read_text())
    kp_entry = next(a for a in m2["artifacts"] if a["file"] == "tflite/model_int8_kp.tflite")
    assert kp_entry["decode"]["float_ops_after_heatmaps"]  # the float tail is listed
    images, dets = _gt_boxes()
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    runs = {}
    for name in ("model_int8.tflite", "model_int8_kp.tflite"):
        alone = tmp_path / f"alone-{name}"
        alone.mkdir()
        shutil.copy(d / "tflite" / name, alone / name)
        capsys.readouterr()
        argv = ["predict", "--model", str(alone / name), *map(str, images), "--boxes", str(tmp_path / "dets.json"),
                "--out", str(tmp_path / f"pred-{name}"), "--no-overlay"]
        assert console.main(argv) == 0
        said = capsys.readouterr().out
        assert ("using the keypoints decoded in the file" in said) == ("_kp" in name), said
        res = json.loads((tmp_path / f"pred-{name}" / "keypoints.json").read_text())
        runs[name] = np.array([x["keypoints"] for x in res], np.float64).reshape(len(res), -1, 3)
    plain, kp = runs["model_int8.tflite"], runs["model_int8_kp.tflite"]
    assert plain.shape == kp.shape and len(plain) == len(dets)
    assert np.abs(plain[..., :2] - kp[..., :2]).max() <= 0.5
