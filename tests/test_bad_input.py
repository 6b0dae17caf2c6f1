"""Bad input across stages (issue 16): a malformed record in the data is one `error:` line naming the file, the
record and the field, exit 2, and nothing half-written."""

import json
import shutil

import pytest

from posekit.keypoints import DEFAULT_COCO

ANN = "person_keypoints_{}.json"


def bad_tree(tmp_path, split="train2017", edit=None):
    """A copy of the bundled COCO tree whose `split` annotations hold one annotation with 50 keypoint values."""
    root = tmp_path / "coco"
    shutil.copytree(DEFAULT_COCO, root)
    f = root / "annotations" / ANN.format(split)
    d = json.loads(f.read_text())
    a = next(a for a in d["annotations"] if a["num_keypoints"])
    (edit or (lambda a: a.update(keypoints=a["keypoints"][:50])))(a)
    f.write_text(json.dumps(d))
    return root, f, a["id"]


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_convert_refuses_bad_calibration_data_before_writing_anything(tmp_path, capsys):
    """The issue's row: convert used to leave arch.yaml and model_fp32.tflite without a manifest."""
    import torch

    from convert.cli import main
    from model import build, load
    from model.checkpoint import save_checkpoint
    from train.loop import with_input

    torch.manual_seed(0)
    arch = with_input(load("efficientpose_a"), (64, 48))
    ckpt = save_checkpoint(tmp_path / "m.pt", build(arch), arch)
    root, f, ann_id = bad_tree(tmp_path)
    out = tmp_path / "artifacts"
    rc = main(["--ckpt", str(ckpt), "--data", str(root), "--targets", "tflite-int8", "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(f) in line and f"(id {ann_id}).keypoints: 50 values" in line
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("edit, field", [
    (lambda a: a.update(keypoints=a["keypoints"][:50]), "keypoints: 50 values"),
    (lambda a: a["keypoints"].__setitem__(4, "abc"), 'keypoints[4]: expected a number, got "abc"'),
    (lambda a: a.update(keypoints=None), "keypoints: expected a list of 51 values, got null"),
    (lambda a: a.pop("bbox"), "bbox: missing"),
], ids=["50 values", "abc", "null", "no bbox"])
def test_train_refuses_a_malformed_annotation_in_one_line(tmp_path, capsys, edit, field):
    from train.cli import main

    root, f, ann_id = bad_tree(tmp_path, edit=edit)
    rc = main(["--data", str(root), "--input", "64x48", "--epochs", "1", "--out", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"error: {f}: annotations[") and f"(id {ann_id}).{field}" in line, line
    assert not (tmp_path / "run").exists()


def test_coco_file_with_mpii_sized_persons_names_the_joint_count(tmp_path, capsys):
    """Every annotation with 16 joints (MPII-sized) used to be '86 persons with no labelled joint'."""
    from train.cli import main

    root = tmp_path / "coco"
    shutil.copytree(DEFAULT_COCO, root)
    f = root / "annotations" / ANN.format("train2017")
    d = json.loads(f.read_text())
    for a in d["annotations"]:
        a["keypoints"] = a["keypoints"][:48]
    f.write_text(json.dumps(d))
    rc = main(["--data", str(root), "--input", "64x48", "--epochs", "1", "--out", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "keypoints: 48 values (16 joints), expected 51 (17 joints" in line, line


def test_train_names_a_missing_val_split_before_training(tmp_path, capsys):
    from train.cli import main

    rc = main(["--val-split", "nosuch", "--input", "64x48", "--epochs", "1", "--out", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--val-split nosuch: no " in line and "person_keypoints_nosuch.json" in line
    assert not (tmp_path / "run").exists()


def test_val_split_without_the_fields_cocoeval_reads_is_named_before_training(tmp_path, capsys):
    from train.cli import main

    root, f, ann_id = bad_tree(tmp_path, split="val2017", edit=lambda a: a.pop("num_keypoints"))
    rc = main(["--data", str(root), "--input", "64x48", "--epochs", "1", "--out", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"{f}: annotations[" in line and f"(id {ann_id}).num_keypoints: missing" in line, line
    assert not (tmp_path / "run").exists()
