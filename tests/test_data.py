"""posekit.data / heatmap / evaluate on the bundled real COCO and MPII subsets."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from posekit import heatmap
from posekit.data import CocoPose, MpiiPose, box_to_center_scale, get_affine, load_coco, load_image_crop
from posekit.errors import UserError
from posekit.evaluate import coco_eval, evaluate_model, gt_heatmap_ap, load_headboxes, pckh
from posekit.keypoints import COCO_FLIP_PAIRS, DEFAULT_COCO, DEFAULT_MPII, MEAN, STD

DET = DEFAULT_COCO / "annotations" / "person_detection_results_val2017.json"


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def test_bundled_jsons_load_in_pycocotools():
    from pycocotools.cocoeval import COCOeval

    for split, n_img, n_ann in (("train2017", 30, 87), ("val2017", 4, 14)):
        coco = load_coco(DEFAULT_COCO / "annotations" / f"person_keypoints_{split}.json")
        assert (len(coco.imgs), len(coco.anns)) == (n_img, n_ann)
        COCOeval(coco, coco.loadRes(str(DET)) if split == "val2017" else coco, iouType="keypoints")


def test_gt_heatmaps_encode_decode_eval_agree():
    """Acceptance: ground truth -> heatmaps -> decode -> back-projection -> COCOeval gives AP >= 0.95."""
    stats = quiet(gt_heatmap_ap, DEFAULT_COCO, "val2017", (256, 192))
    assert stats["AP"] >= 0.95, stats


def test_gt_heatmaps_at_128x96_and_sigma_scales_with_size():
    """The targets' sigma follows the published configs (2 at 64x48, 3 at 96x72) and halves at 32x24."""
    from posekit.heatmap import sigma_for

    assert (sigma_for((64, 48)), sigma_for((96, 72)), sigma_for((32, 24)), sigma_for((16, 12))) == (2, 3, 1, 1)
    ds = quiet(CocoPose, input_size=(128, 96), train=False)
    assert ds.sigma == 1.0
    stats = quiet(gt_heatmap_ap, DEFAULT_COCO, "val2017", (128, 96))
    assert stats["AP"] >= 0.95, stats


def test_items_shapes_and_normalization():
    ds = quiet(CocoPose, input_size=(128, 96), train=True)
    assert len(ds) == 53 and ds.skipped["persons with no labelled joint"] == 33
    batch = default_collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 128, 96) and batch["image"].dtype == torch.float32
    assert batch["heatmaps"].shape == (3, 17, 32, 24) and batch["weights"].shape == (3, 17, 1)
    assert float(batch["heatmaps"].max()) <= 1.0
    for k in ("image_id", "center", "scale", "score", "area", "affine", "joints"):
        assert k in batch["meta"]
    # normalization: the un-normalized image is in [0, 1]
    rgb = batch["image"].numpy().transpose(0, 2, 3, 1) * STD + MEAN
    assert rgb.min() > -1e-4 and rgb.max() < 1 + 1e-4


def test_load_image_crop_matches_dataset():
    ds = quiet(CocoPose, split="val2017", input_size=(128, 96), train=False)
    s, item = ds.samples[0], ds[0]
    crop, M = load_image_crop(s["path"], s["center"], s["scale"], (128, 96))
    assert np.array_equal(crop, item["image"].numpy()) and np.allclose(M, item["meta"]["affine"])


def test_decode_quarter_pixel_and_flip_convention():
    joints = np.array([[20.3, 33.9], [50.0, 70.6], [5.2, 100.4]])  # input pixels in a 128x96 crop
    hm, wt = heatmap.encode(joints, [1, 1, 1], (32, 24))
    coords, maxv = heatmap.decode(hm[None])
    err = np.abs(heatmap.heatmap_to_input(coords[0]) - joints)
    assert err.max() <= 0.25 * 4 + 1e-6 and (maxv > 0.8).all() and wt.sum() == 3
    # flipping the input (x -> W-1-x) is exactly flipping the heatmap: no one-pixel shift needed
    flipped = joints.copy()
    flipped[:, 0] = 96 - 1 - flipped[:, 0]
    hf, _ = heatmap.encode(flipped, [1, 1, 1], (32, 24))
    assert np.allclose(heatmap.flip_back(hf[None], [])[0], hm, atol=1e-6)


def test_flip_affine_is_mirrored_crop():
    c, s = box_to_center_scale([100, 50, 120, 200], (128, 96))
    a, _ = load_image_crop(DEFAULT_COCO / "val2017" / "000000000785.jpg", c, s, (128, 96))
    b, Mf = load_image_crop(DEFAULT_COCO / "val2017" / "000000000785.jpg", c, s, (128, 96), flip=True)
    assert np.allclose(a[..., ::-1], b, atol=1e-5)
    M = get_affine(c, s, (128, 96))
    p = np.array([130.0, 99.0])
    assert np.allclose(Mf[:, :2] @ p + Mf[:, 2], [96 - 1 - (M[0, :2] @ p + M[0, 2]), M[1, :2] @ p + M[1, 2]])


def test_detection_boxes_and_predictions_format():
    ds = quiet(CocoPose, split="val2017", input_size=(64, 48), train=False, boxes=DET)
    assert len(ds) == 118 and float(ds[0]["weights"].sum()) == 0
    stats = quiet(evaluate_model, lambda x: np.zeros((len(x), 17, 16, 12), np.float32), input_size=(64, 48),
                  boxes=DET, flip=False, return_predictions=True, limit=10)
    r = stats["predictions"][0]
    assert set(r) == {"image_id", "category_id", "keypoints", "score"} and len(r["keypoints"]) == 51
    assert stats["num_persons"] == 10


def test_evaluate_model_scores_an_oracle_with_flip():
    """A predict_fn that answers the ground-truth heatmaps of each crop (and of its mirror image) scores AP ~1
    through the flip-test path: runtime, flip_back and COCOeval agree."""
    ds = quiet(CocoPose, split="val2017", input_size=(128, 96), train=False)
    table = {}
    for i in range(len(ds)):
        it = ds[i]
        img, hm = it["image"].numpy(), it["heatmaps"].numpy()
        table[img.tobytes()] = hm
        table[np.ascontiguousarray(img[..., ::-1]).tobytes()] = heatmap.flip_back(hm[None], COCO_FLIP_PAIRS)[0]
    stats = quiet(evaluate_model, lambda x: np.stack([table[im.tobytes()] for im in x]), input_size=(128, 96),
                  flip=True, batch_size=5)
    assert stats["AP"] >= 0.95, stats


def test_coco_eval_empty_results_is_zero():
    assert coco_eval([], DEFAULT_COCO / "annotations" / "person_keypoints_val2017.json")["AP"] == 0.0


# ---- bad input ------------------------------------------------------------------------------------------------
def make_tree(tmp_path, edit):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(DEFAULT_COCO / "val2017", root / "val2017")
    d = json.loads((DEFAULT_COCO / "annotations" / "person_keypoints_val2017.json").read_text())
    edit(d, root)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(d))
    return root


def test_per_sample_faults_are_counted_skips_with_one_warning(tmp_path):
    def edit(d, root):
        (root / "val2017" / d["images"][0]["file_name"]).unlink()  # missing image
        anns = [a for a in d["annotations"] if a["image_id"] != d["images"][0]["id"] and a["num_keypoints"]]
        anns[0]["bbox"] = [5000, 5000, 50, 50]  # box outside the image
        anns[1]["keypoints"] = [0] * 51  # no labelled joint
        anns[1]["num_keypoints"] = 0

    root = make_tree(tmp_path, edit)
    with pytest.warns(UserWarning, match="skipped") as rec:
        ds = CocoPose(root, "val2017", (64, 48), train=True)
    assert len(rec) == 1
    assert ds.skipped["missing or empty image file"] == 1 and ds.skipped["box outside the image"] == 1
    assert ds.skipped["persons with no labelled joint"] >= 1
    assert all(ds[i]["image"].shape == (3, 64, 48) for i in range(len(ds)))


def test_malformed_json_and_joint_mismatch_are_user_errors(tmp_path):
    root = make_tree(tmp_path, lambda d, root: None)
    with pytest.raises(UserError, match="num_joints mismatch"):
        CocoPose(root, "val2017", (64, 48), num_joints=16)
    (root / "annotations" / "person_keypoints_val2017.json").write_text('{"images": [')
    with pytest.raises(UserError, match="person_keypoints_val2017.json: malformed"):
        CocoPose(root, "val2017", (64, 48))
    with pytest.raises(UserError, match="no such"):
        CocoPose(tmp_path / "nowhere", "val2017", (64, 48))
    bad_det = tmp_path / "det.json"
    bad_det.write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="det.json"):
        CocoPose(DEFAULT_COCO, "val2017", (64, 48), train=False, boxes=bad_det)


def _first_labelled(d):
    return next(a for a in d["annotations"] if a["num_keypoints"])


BAD_RECORDS = {  # table rows of issue 16, and more in the same spirit: (edit, field named in the error)
    "50 keypoint values": (lambda a, d: a.update(keypoints=a["keypoints"][:50]), "keypoints: 50 values"),
    "keypoint abc": (lambda a, d: a["keypoints"].__setitem__(7, "abc"), 'keypoints[7]: expected a number, got "abc"'),
    "keypoints null": (lambda a, d: a.update(keypoints=None), "keypoints: expected a list of 51 values, got null"),
    "bbox missing": (lambda a, d: a.pop("bbox"), "bbox: missing"),
    "bbox of 3": (lambda a, d: a.update(bbox=[1, 2, 3]), "bbox: expected 4 numbers, got 3"),
    "bbox NaN": (lambda a, d: a["bbox"].__setitem__(2, float("nan")), "bbox[2]: expected a finite number"),
    "keypoint true": (lambda a, d: a["keypoints"].__setitem__(2, True), "keypoints[2]: expected a number, got true"),
    "image_id unknown": (lambda a, d: a.update(image_id=123456789), "image_id: 123456789 is not in images"),
    "id duplicated": (lambda a, d: a.update(id=d["annotations"][-1]["id"]), "duplicate annotation id"),
    "every person has 16 joints": (lambda a, d: [b.update(keypoints=b["keypoints"][:48]) for b in d["annotations"]],
                                   "keypoints: 48 values (16 joints), expected 51 (17 joints"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_malformed_record_names_file_record_and_field(tmp_path, case):
    edit, field = BAD_RECORDS[case]
    root = make_tree(tmp_path, lambda d, root: edit(_first_labelled(d), d))
    with pytest.raises(UserError) as e:
        CocoPose(root, "val2017", (64, 48))
    msg = str(e.value)
    assert msg.startswith(str(root / "annotations" / "person_keypoints_val2017.json") + ": annotations[")
    assert "(id " in msg and field in msg and "\n" not in msg, msg


def test_malformed_image_records_are_named(tmp_path):
    root = make_tree(tmp_path, lambda d, root: d["images"][1].pop("height"))
    with pytest.raises(UserError, match=r"images\[1\] \(id \d+\)\.height: missing"):
        load_coco(root / "annotations" / "person_keypoints_val2017.json")
    root = make_tree(tmp_path / "b", lambda d, root: d["images"][0].update(width="640"))
    with pytest.raises(UserError, match=r"images\[0\] \(id \d+\)\.width: expected a positive number"):
        load_coco(root / "annotations" / "person_keypoints_val2017.json")


def test_truncated_and_missing_images_are_skipped_and_named(tmp_path):
    """A JPEG cut to a third decodes in libjpeg with only 'Premature end of JPEG file': it counts as unreadable
    and is named in the summary, as a missing image is."""
    names = {}

    def edit(d, root):
        names["cut"], names["gone"] = d["images"][0]["file_name"], d["images"][1]["file_name"]
        p = root / "val2017" / names["cut"]
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
        (root / "val2017" / names["gone"]).unlink()

    root = make_tree(tmp_path, edit)
    with pytest.warns(UserWarning) as rec:
        ds = CocoPose(root, "val2017", (64, 48), train=False)
    msg = str(rec[0].message)
    assert names["cut"] in msg and "truncated JPEG" in msg and names["gone"] in msg, msg
    assert ds.skipped["unreadable image file"] == 1 and ds.skipped["missing or empty image file"] == 1
    from posekit.transforms import read_image

    with pytest.raises(UserError, match=f"{names['cut']}: cannot read image \\(truncated JPEG"):
        read_image(root / "val2017" / names["cut"])


def test_mpii_malformed_fields_are_named(tmp_path):
    shutil.copytree(DEFAULT_MPII, tmp_path / "m")
    f = tmp_path / "m" / "annot" / "valid.json"
    good = json.loads(f.read_text())
    for edit, field in ((lambda e: e["joints"][3].__setitem__(0, "abc"), "[1].joints[3][0]: expected a number"),
                        (lambda e: e.pop("scale"), "[1].scale: missing"),
                        (lambda e: e.update(center=None), "[1].center: expected a list"),
                        (lambda e: e.update(joints=e["joints"][:15]), "[1].joints: the data has 15 joints")):
        d = json.loads(json.dumps(good))
        edit(d[1])
        f.write_text(json.dumps(d))
        with pytest.raises(UserError, match=re_escape(f"{f}: {field}")):
            MpiiPose(tmp_path / "m", "valid", (64, 64))


def re_escape(s):
    import re

    return re.escape(s)


# ---- MPII ---------------------------------------------------------------------------------------------------------
def test_mpii_items_and_pckh_needs_head_boxes(tmp_path):
    ds = MpiiPose(input_size=(128, 128), train=True)
    assert len(ds) == 5
    it = ds[0]
    assert it["image"].shape == (3, 128, 128) and it["heatmaps"].shape == (16, 32, 32)
    assert float(MpiiPose(input_size=(128, 128), train=False)[0]["weights"].sum()) == 16
    with pytest.raises(UserError, match="PCKh needs the MPII head boxes"):
        pckh(np.zeros((5, 16, 2)), np.zeros((5, 16, 2)), np.ones((5, 16)), None)
    gt = np.stack([g[0] for g in ds.gt])
    vis = np.stack([g[1] for g in ds.gt])
    hb_file = tmp_path / "heads.json"
    hb_file.write_text(json.dumps([[0, 0, 40, 40]] * 5))
    hb = load_headboxes(hb_file)
    assert pckh(gt, gt, vis, hb)["PCKh"] == 1.0
    assert pckh(gt + 30, gt, vis, hb)["PCKh"] == 0.0  # 30 px > 0.5 * 0.6 * 56.6 px
    assert DEFAULT_MPII.is_dir()


def test_unreadable_image_falls_back_with_a_warning(tmp_path):
    def edit(d, root):
        (root / "val2017" / d["images"][0]["file_name"]).write_bytes(b"not a jpeg at all")

    root = make_tree(tmp_path, edit)
    ds = quiet(CocoPose, root, "val2017", (64, 48), train=False)
    with pytest.warns(UserWarning, match="cannot read image"):
        item = ds[0]
    assert item["meta"]["image_id"] != ds.samples[0]["image_id"]
