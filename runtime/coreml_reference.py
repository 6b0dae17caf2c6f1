"""A reference executor for saved Core ML models, so Core ML artifacts can be checked on Linux, where
`MLModel.predict` does not run.

It reads the files Core ML itself reads, never the PyTorch source:
- .mlpackage (ML Program): the MIL program in the package's model.mlmodel protobuf (coremltools.proto classes), with
  weights from the weights/*.bin blob files (coremltools' own blob reader, `libmilstoragepython`), and runs its ops
  one by one with torch/numpy. Every op output is cast to the dtype the program declares for it, so an fp16 program
  is run with fp16 storage between ops (compute in fp32, as Core ML's CPU path does).
- .mlmodel (NeuralNetwork): see `runtime.coreml_nn`.
An op it does not know raises `UnsupportedOp` naming it: it never skips one.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from posekit.errors import UserError
from posekit.io import require_file
from runtime.coreml_decode_ops import DECODE_MIL_OPS

from .coreml_ops import (  # noqa: F401  (UnsupportedOp, unpack_bits: part of this module's interface)
    UnsupportedOp,
    _t,
    op_batch_norm,
    op_conv,
    op_conv_transpose,
    op_depth_to_space,
    op_max_pool,
    op_pixel_shuffle,
    op_upsample_nearest_neighbor,
    unpack_bits,
)


def _proto():
    from posekit.coreml_import import ct  # imported lazily: coremltools is slow to import

    return ct.proto


def _mil_dtypes():
    D = _proto().MIL_pb2.DataType
    return {D.FLOAT16: np.float16, D.FLOAT32: np.float32, D.FLOAT64: np.float64, D.INT8: np.int8,
            D.INT16: np.int16, D.INT32: np.int32, D.INT64: np.int64, D.UINT8: np.uint8, D.UINT16: np.uint16,
            D.UINT32: np.uint32, D.UINT64: np.uint64, D.BOOL: np.bool_, D.INT4: np.int8, D.UINT1: np.uint8,
            D.UINT2: np.uint8, D.UINT3: np.uint8, D.UINT4: np.uint8, D.UINT6: np.uint8}


def _sub_byte_bits(dtype_enum) -> tuple[int, bool] | None:
    """(bits, signed) of a sub-byte MIL dtype, None for whole-byte ones."""
    D = _proto().MIL_pb2.DataType
    return {D.INT4: (4, True), D.UINT1: (1, False), D.UINT2: (2, False), D.UINT3: (3, False),
            D.UINT4: (4, False), D.UINT6: (6, False)}.get(dtype_enum)


# ---------------------------------------------------------------------------------------------- blob file (weights)
BLOB_SENTINEL = 0xDEADBEEF


def blob_span(weight_file: str | Path, metadata_offset: int) -> tuple[int, int]:
    """(data offset, size in bytes) of the blob whose metadata starts at `metadata_offset` in a MIL weight file
    (documented format: 64-byte storage header, then per blob a 64-byte metadata record {uint32 sentinel 0xDEADBEEF,
    uint32 dtype, uint64 size, uint64 data offset} and the 64-byte aligned data)."""
    with open(weight_file, "rb") as f:
        f.seek(metadata_offset)
        sentinel, _dtype, size, offset = struct.unpack("<IIQQ", f.read(24))
    if sentinel != BLOB_SENTINEL:
        raise UserError(f"{weight_file}: no blob metadata at offset {metadata_offset}")
    return offset, size


class _Blobs:
    """Weight blob files of one package, read with coremltools' reader (the one Core ML's converter writes with)."""

    def __init__(self, weights_dir: Path):
        self.dir, self.readers = weights_dir, {}

    def read(self, file_name: str, offset: int, dtype_enum) -> np.ndarray:
        from posekit.coreml_import import ct  # noqa: F401  (first: coremltools without the deps it only probes)

        # isort: split
        from coremltools.libmilstoragepython import _BlobStorageReader

        path = self.dir / file_name.split("/")[-1]  # "@model_path/weights/weight.bin"
        if path not in self.readers:
            if not path.is_file():
                raise UserError(f"{path}: weight file named by the program is missing")
            self.readers[path] = _BlobStorageReader(str(path))
        r = self.readers[path]
        D = _proto().MIL_pb2.DataType
        method = {D.FLOAT32: "float", D.FLOAT16: "fp16", D.INT8: "int8", D.UINT8: "uint8", D.INT16: "int16",
                  D.UINT16: "uint16", D.INT32: "int32", D.UINT32: "uint32", D.INT4: "int4", D.UINT1: "uint1",
                  D.UINT2: "uint2", D.UINT3: "uint3", D.UINT4: "uint4", D.UINT6: "uint6"}.get(dtype_enum)
        if method is None:
            raise UnsupportedOp(f"{path}: blob of MIL dtype {D.Name(dtype_enum)} at offset {offset}")
        v = np.asarray(getattr(r, f"read_{method}_data")(offset))
        return v.view(np.float16) if dtype_enum == D.FLOAT16 else v


# ---------------------------------------------------------------------------------------------------- MIL values
def _tensor_type(t):
    """(dtype enum, shape or None) of a MIL ValueType holding a tensor."""
    if t.WhichOneof("type") != "tensorType":
        raise UnsupportedOp(f"MIL value type {t.WhichOneof('type')}")
    tt = t.tensorType
    shape = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return tt.dataType, None
        shape.append(d.constant.size)
    return tt.dataType, tuple(shape)


def _value(v, blobs: _Blobs):
    """A MIL Value (immediate or blob file) as numpy array / scalar / str."""
    dtype_enum, shape = _tensor_type(v.type)
    D = _proto().MIL_pb2.DataType
    np_dtype = _mil_dtypes().get(dtype_enum)
    kind = v.WhichOneof("value")
    if kind == "blobFileValue":
        a = blobs.read(v.blobFileValue.fileName, v.blobFileValue.offset, dtype_enum)
    elif kind == "immediateValue":
        iv = v.immediateValue
        if iv.WhichOneof("value") != "tensor":
            raise UnsupportedOp(f"MIL immediate value of kind {iv.WhichOneof('value')}")
        tv = iv.tensor
        which = tv.WhichOneof("value")
        if which == "strings":
            s = list(tv.strings.values)
            return s[0] if shape == () else s
        if which == "bytes":
            raw = np.frombuffer(tv.bytes.values, np.uint8)
            sub = _sub_byte_bits(dtype_enum)
            count = int(np.prod(shape)) if shape else 1
            a = unpack_bits(raw, sub[0], count, sub[1]) if sub else raw.view(np_dtype)
        else:
            a = np.array(list(getattr(tv, which).values))
    else:
        raise UnsupportedOp(f"MIL value of kind {kind}")
    if np_dtype is None:
        raise UnsupportedOp(f"MIL dtype {D.Name(dtype_enum)}")
    a = np.asarray(a).astype(np_dtype, copy=False)
    if shape is not None:
        a = a.reshape(shape)
    return a


# ------------------------------------------------------------------------------------------------------- MIL ops
def _f32(v):
    return np.asarray(v, np.float32)


def _affine_dequantize(a):
    q, zp, sc, axis = a["quantized_data"], a["zero_point"], a["scale"], int(a["axis"])
    shape = [1] * q.ndim
    if np.ndim(sc) == 1:
        shape[axis] = -1
    zp, sc = np.reshape(zp, shape if np.ndim(zp) == 1 else ()), np.reshape(sc, shape if np.ndim(sc) == 1 else ())
    return (q.astype(np.float32) - zp.astype(np.float32)) * sc.astype(np.float32)


def _blockwise_shift_scale(a):
    """iOS18: out = scale * (data - offset); scale/offset have data's rank, each dim a divisor of data's."""
    data, scale, offset = a["data"], a["scale"], a.get("offset")
    out = data.astype(np.float32)

    def expand(p):
        p = p.astype(np.float32)
        for ax in range(data.ndim):
            p = np.repeat(p, data.shape[ax] // p.shape[ax], axis=ax)
        return p

    if offset is not None:
        out = out - expand(offset)
    return (out * expand(scale)).astype(scale.dtype)


def _lut_to_dense(a):
    if "shape" in a:  # iOS16: flat LUT of 2^n entries, indices n-bit packed LSB first, output shape given
        lut, shape = a["lut"], [int(v) for v in np.asarray(a["shape"]).ravel()]
        nbits = int(np.log2(lut.size))
        idx = unpack_bits(a["indices"], nbits, int(np.prod(shape)))
        return lut[idx.astype(np.int64)].reshape(shape)
    # iOS18: indices have the output's shape; lut (*groups per axis, 2^n, vector size)
    idx, lut = a["indices"].astype(np.int64), a["lut"]
    if lut.shape[-1] != 1 or a.get("vector_axis") is not None:
        raise UnsupportedOp("constexpr_lut_to_dense with vector palettization (vector size > 1)")
    grids = np.ix_(*[np.arange(n) // (n // g) for n, g in zip(idx.shape, lut.shape[:-2])])
    return lut[(*grids, idx, 0)]


def _cast(a):
    dt = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int8": np.int8, "uint8": np.uint8,
          "bool": np.bool_}.get(a.get("dtype", a.get("output_dtype")))
    if dt is None:
        raise UnsupportedOp(f"cast to {a.get('dtype', a.get('output_dtype'))!r}")
    src = a["x"] if "x" in a else a["source_val"]
    return np.asarray(src).astype(dt)


MIL_OPS = {
    "const": lambda a: a["val"],
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_cast": _cast,
    "cast": _cast,
    "identity": lambda a: a["x"],
    "conv": op_conv,
    "conv_transpose": op_conv_transpose,
    "batch_norm": op_batch_norm,
    "relu": lambda a: np.maximum(_f32(a["x"]), 0),
    "relu6": lambda a: np.clip(_f32(a["x"]), 0, 6),
    "clip": lambda a: np.clip(_f32(a["x"]), _f32(a["alpha"]), _f32(a["beta"])),
    "sigmoid": lambda a: 1 / (1 + np.exp(-_f32(a["x"]))),
    "add": lambda a: _f32(a["x"]) + _f32(a["y"]),
    "sub": lambda a: _f32(a["x"]) - _f32(a["y"]),
    "mul": lambda a: _f32(a["x"]) * _f32(a["y"]),
    "real_div": lambda a: _f32(a["x"]) / _f32(a["y"]),
    "maximum": lambda a: np.maximum(_f32(a["x"]), _f32(a["y"])),
    "minimum": lambda a: np.minimum(_f32(a["x"]), _f32(a["y"])),
    "pixel_shuffle": op_pixel_shuffle,
    "depth_to_space": op_depth_to_space,
    "reshape": lambda a: np.reshape(a["x"], [int(v) for v in np.ravel(a["shape"])]),
    "transpose": lambda a: np.transpose(a["x"], [int(v) for v in np.ravel(a["perm"])]),
    "concat": lambda a: np.concatenate(list(a["values"]), axis=int(a["axis"])),
    "max_pool": op_max_pool,
    "upsample_nearest_neighbor": op_upsample_nearest_neighbor,
    **DECODE_MIL_OPS,  # the in-graph keypoint decode (model/decode.py)
}


# ------------------------------------------------------------------------------------------------------ programs
def model_file(path: Path) -> tuple[Path, Path | None]:
    """(model.mlmodel protobuf, weights dir or None) of a .mlpackage (its Manifest's root model) or a .mlmodel."""
    if path.is_dir():
        from posekit.coreml_import import ct  # noqa: F401  (first: coremltools without the deps it only probes)

        # isort: split
        from coremltools.libmodelpackage import ModelPackage

        if not (path / "Manifest.json").is_file():
            raise UserError(f"{path}: not an .mlpackage (no Manifest.json)")
        spec_path = Path(ModelPackage(str(path)).getRootModel().path())
        return spec_path, spec_path.parent / "weights"
    return require_file(path, "Core ML model"), None


class CoreMLProgram:
    """A saved Core ML model, runnable with numpy/torch: `run({'image': x}) -> {'heatmaps': y}`.

    `inputs` describe the feeds: name, shape, dtype, kind ('tensor' | 'image') and for an image its color space
    (the executor takes image inputs as float RGB pixels in [0, 255], NCHW, and reorders to BGR when the model asks).
    `op_counts` lists the ops the program holds (every one is executable, or loading failed naming it).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        spec_path, weights = model_file(self.path)
        spec = _proto().Model_pb2.Model()
        try:
            spec.ParseFromString(spec_path.read_bytes())
        except Exception as e:
            raise UserError(f"{spec_path}: not a Core ML model protobuf ({e})") from e
        self.spec, self.kind = spec, spec.WhichOneof("Type")
        self.inputs = [_feature(f) for f in spec.description.input]
        self.outputs = [f.name for f in spec.description.output]
        if self.kind == "mlProgram":
            self._impl = _MilProgram(spec.mlProgram, _Blobs(weights or spec_path.parent))
        elif self.kind == "neuralNetwork":
            from runtime.coreml_nn import NeuralNetworkProgram

            self._impl = NeuralNetworkProgram(spec.neuralNetwork, self.inputs, self.outputs)
        else:
            raise UnsupportedOp(f"{self.path}: Core ML model type {self.kind!r} (expected mlProgram or neuralNetwork)")
        self.op_counts = self._impl.op_counts

    def run(self, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
        """Run on `feeds` (name -> array). keep_all: return every intermediate tensor too (for locating errors)."""
        feeds = dict(feeds)
        for f in self.inputs:
            if f["name"] not in feeds:
                raise UserError(f"{self.path}: missing input {f['name']!r}")
            x = np.asarray(feeds[f["name"]], np.float32)
            if f["kind"] == "image" and f.get("color") == "BGR":
                x = x[:, ::-1]
            feeds[f["name"]] = x
        env = self._impl.run(feeds)
        for name, var in zip(self.outputs, self._impl.output_vars):  # the description's names, by position
            env[name] = env[var]
        return env if keep_all else {k: np.asarray(env[k], np.float32) for k in self.outputs}

    def predict(self, feeds):
        return self.run(feeds)

    def op_order(self) -> list[tuple[str, str]]:
        """(op type, output name) of every computing op, in execution order (for `run(keep_all=True)`)."""
        return self._impl.op_order()


def _feature(f) -> dict:
    t = f.type.WhichOneof("Type")
    if t == "imageType":
        it = f.type.imageType
        names = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}
        return {"name": f.name, "kind": "image", "shape": [1, 3 if it.colorSpace != 10 else 1, it.height, it.width],
                "color": names.get(it.colorSpace, str(it.colorSpace))}
    if t == "multiArrayType":
        return {"name": f.name, "kind": "tensor", "shape": list(f.type.multiArrayType.shape)}
    raise UnsupportedOp(f"Core ML feature {f.name!r} of type {t}")


class _MilProgram:
    def __init__(self, prog, blobs: _Blobs):
        if "main" not in prog.functions:
            raise UnsupportedOp("ML program without a 'main' function")
        fn = prog.functions["main"]
        self.block = fn.block_specializations[fn.opset]
        self.inputs = [(i.name, _tensor_type(i.type)[0]) for i in fn.inputs]
        self.blobs = blobs
        self.output_vars = list(self.block.outputs)
        from collections import Counter

        self.op_counts = dict(Counter(op.type for op in self.block.operations))
        unknown = sorted(set(self.op_counts) - set(MIL_OPS))
        if unknown:
            raise UnsupportedOp(f"ML program op(s) the reference executor does not implement: {', '.join(unknown)}")
        self.consts = {}  # const / constexpr outputs, computed once
        dtypes = _mil_dtypes()
        for op in self.block.operations:
            if op.type == "const" or op.type.startswith("constexpr_"):
                for out, val in zip(op.outputs, self._exec(op, self.consts, dtypes)):
                    self.consts[out.name] = val

    def _args(self, op, env):
        args = {k: _value(v, self.blobs) for k, v in op.attributes.items() if k != "name"}
        for k, arg in op.inputs.items():
            vals = []
            for b in arg.arguments:
                if b.WhichOneof("binding") == "name":
                    if b.name not in env:
                        raise UserError(f"op {op.type} reads {b.name!r}, which nothing computed")
                    vals.append(env[b.name])
                else:
                    vals.append(_value(b.value, self.blobs))
            args[k] = vals[0] if len(vals) == 1 and k != "values" else vals
        return args

    def _exec(self, op, env, dtypes):
        if len(op.blocks):
            raise UnsupportedOp(f"op {op.type} with nested blocks (control flow)")
        try:
            res = MIL_OPS[op.type](self._args(op, env))
        except UnsupportedOp:
            raise
        except Exception as e:
            raise UserError(f"ML program op {op.type} ({op.outputs[0].name}): {type(e).__name__}: {e}") from e
        res = res if isinstance(res, tuple) else (res,)
        out = []
        for o, r in zip(op.outputs, res):
            if isinstance(r, np.ndarray):  # store as the program declares (fp16 programs keep fp16 between ops)
                dt = dtypes.get(_tensor_type(o.type)[0])
                r = r.astype(dt) if dt is not None else r
            out.append(r)
        return out

    def op_order(self):
        return [(op.type, o.name) for op in self.block.operations
                if op.type != "const" and not op.type.startswith("constexpr_") for o in op.outputs]

    def run(self, feeds):
        dtypes = _mil_dtypes()
        env = dict(self.consts)
        for name, dt in self.inputs:
            env[name] = np.asarray(feeds[name]).astype(dtypes[dt])
        for op in self.block.operations:
            if op.type == "const" or op.type.startswith("constexpr_"):
                continue
            for out, val in zip(op.outputs, self._exec(op, env, dtypes)):
                env[out.name] = val
        return {k: v for k, v in env.items() if k not in self.consts or k in self.output_vars}
