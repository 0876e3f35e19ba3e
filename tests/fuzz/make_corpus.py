#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz (small, valid and near-valid inputs per target).
Run from anywhere: python3 tests/fuzz/make_corpus.py. The files are committed; libFuzzer adds its
own findings to a separate working corpus (docs/robustness.md)."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def st(header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

# safetensors
put("safetensors", "two_tensors", st({"__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(range(22))))
put("safetensors", "all_dtypes", st({
    "f64": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
    "i64": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},
    "f32": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]},
    "i32": {"dtype": "I32", "shape": [1], "data_offsets": [20, 24]},
    "f16": {"dtype": "F16", "shape": [1], "data_offsets": [24, 26]},
    "i16": {"dtype": "I16", "shape": [1], "data_offsets": [26, 28]},
    "i8": {"dtype": "I8", "shape": [1], "data_offsets": [28, 29]},
    "u8": {"dtype": "U8", "shape": [1], "data_offsets": [29, 30]},
    "bool": {"dtype": "BOOL", "shape": [1], "data_offsets": [30, 31]}}, bytes(31)))
put("safetensors", "misaligned", st({"x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}, bytes(9), pad=False))
put("safetensors", "empty_and_scalar", st({"e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
    "s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, bytes(8)))
put("safetensors", "overlap", st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6)))
put("safetensors", "offset_outside", st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 40]}}, bytes(4)))
put("safetensors", "unknown_dtype", st({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)))
put("safetensors", "truncated", st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))[:30])
put("safetensors", "huge_length", struct.pack("<Q", 2**63 + 5) + b"{}")
put("safetensors", "escapes", st(b'{"\\u00e9\\ud83d\\ude00/\\n":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x07"))

# index (shards written by the fuzz target: model-00001-of-00002.safetensors holds a, b;
# model-00002-of-00002.safetensors holds c; corrupt.safetensors is not a safetensors file)
put("index", "valid", json.dumps({"metadata": {"total_size": 22}, "weight_map": {
    "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
    "c": "model-00002-of-00002.safetensors"}}))
put("index", "missing_key", json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
    "zz": "model-00001-of-00002.safetensors"}}))
put("index", "unmapped_tensor", json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
put("index", "escape", json.dumps({"weight_map": {"a": "../model-00001-of-00002.safetensors"}}))
put("index", "corrupt_shard", json.dumps({"weight_map": {"a": "corrupt.safetensors"}}))
put("index", "missing_shard", json.dumps({"weight_map": {"a": "nope.safetensors"}}))

# config (diffusers config.json of the DiT)
base = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
        "patch_size": [1, 2, 2], "text_len": 512, "in_dim": 16, "dim": 1536, "ffn_dim": 8960,
        "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 12, "num_layers": 30,
        "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-06}
put("config", "t2v_1_3B", json.dumps(base, indent=2))
put("config", "i2v_14B", json.dumps(dict(base, model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824,
                                         num_heads=40, num_layers=40, clip_dim=1280)))
put("config", "vace", json.dumps(dict(base, _class_name="VaceWanModel", model_type="vace",
                                      vace_layers=[0, 2, 4], vace_in_dim=96)))
put("config", "vace_default_layers", json.dumps(dict(base, _class_name="VaceWanModel", model_type="vace",
                                                     vace_layers=None, vace_in_dim=None)))
put("config", "tiny", json.dumps(dict(base, dim=16, ffn_dim=32, freq_dim=8, text_dim=16, num_heads=2,
                                      num_layers=2, text_len=8)))
put("config", "bad_type", json.dumps(dict(base, dim="1536")))
put("config", "unknown_key", json.dumps(dict(base, dims=4)))
put("config", "big_numbers", json.dumps(dict(base, num_layers=9223372036854775807, dim=18446744073709551615)))

# policy
for i, p in enumerate(["offload_model", "offload_model+vae_cpu", "offload_model+t5_cpu", "resident",
                       "t5=cpu,vae=cuda:on_demand,dit=cuda", "offload_model,evict_on_demand",
                       "dit=mock:1:lazy:offload,t5=cpu:pinned", "vae=cuda:0:on_demand:preload:pageable",
                       "t5=gpu:resident, clip = host", "cuda:0", "mock:999", "t5=cpu,vae=cuda:on_demnd"]):
    put("policy", f"p{i:02d}", p)

# cli: task \n size \n frame_num \n gpu_memory
for i, c in enumerate(["t2v-1.3B\n832*480\n81\n11.49GiB", "t2i-14B\n1024*1024\n1\n24G",
                       "i2v-14B\n1280*720\n5\n80000000000", "vace-14B\n720*1280\n-3\n0.5TB",
                       "t2v-14B\n1280*720\n2147483647\n1e3", "flf2v-14B\n480*832\n0x10\n 12 MiB",
                       "t2v-1.3B\n1280*720\n80\n11.49GB2", "t2x\n832*480\n-2147483648\n.",
                       "t2v-1.3B\n832*480\n+5\n" + "9" * 40 + "TiB"]):
    put("cli", f"c{i:02d}", c)

# regressions (inputs that crashed before the fixes listed in docs/robustness.md)
put("config", "regress_vace_num_layers_huge", '{"model_type":"vace","num_layers":9223372036854775807}')
put("config", "regress_dim_overflow", '{"dim":4611686018427387904,"num_heads":2}')
put("cli", "regress_gpu_memory_400_digits", "t2v-14B\n1280*720\n9\n" + "9" * 400 + "GiB")

# pickle and pth: data.pkl records as torch.save (protocol 2) writes them, made by Python's own
# pickler with stand-ins for torch's globals (no torch needed), and zip archives holding them.
import collections, io, pickle, sys, types, zipfile

def _fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    def _rebuild_tensor_v2(*args): pass
    def _rebuild_parameter(*args): pass
    for f in (_rebuild_tensor_v2, _rebuild_parameter):
        f.__module__, f.__qualname__ = "torch._utils", f.__name__
        setattr(utils, f.__name__, f)
    torch._utils = utils
    storages = {}
    for name in ("FloatStorage", "BFloat16Storage", "HalfStorage", "LongStorage", "BoolStorage", "DoubleStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storages[name] = cls
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return utils, storages

_utils, _storages = _fake_torch()

class _Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = _storages[kind], key, numel

class _Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.parameter = parameter
    def __reduce__(self):
        if self.parameter:
            return (_utils._rebuild_parameter, (_Tensor(*self.args[:4]), False, collections.OrderedDict()))
        return (_utils._rebuild_tensor_v2, self.args)

class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None

def state_dict_pickle(entries, metadata=True):
    sd = collections.OrderedDict(entries)
    if metadata:
        sd._metadata = collections.OrderedDict([("", {"version": 1})]) if metadata == "full" else collections.OrderedDict()
    f = io.BytesIO()
    _Pickler(f, protocol=2).dump(sd)
    return f.getvalue()

s0, s1, s2 = _Storage("FloatStorage", "0", 6), _Storage("BFloat16Storage", "1", 2), _Storage("LongStorage", "2", 3)
views = state_dict_pickle([("a", _Tensor(s0, 0, [2, 3], [3, 1])), ("a_t", _Tensor(s0, 0, [3, 2], [1, 3])),
                           ("tail", _Tensor(s0, 2, [2], [2])), ("h", _Tensor(s1, 0, [2], [1])),
                           ("i", _Tensor(s2, 0, [3], [1])), ("p", _Tensor(s2, 1, [], [], parameter=True))],
                          metadata="full")
put("pickle", "views", views)
put("pickle", "empty", state_dict_pickle([]))
put("pickle", "no_metadata", state_dict_pickle([("w", _Tensor(_Storage("HalfStorage", "0", 4), 0, [2, 2], [2, 1]))], metadata=False))
put("pickle", "wrong_record_size", state_dict_pickle([("w", _Tensor(_Storage("FloatStorage", "#12", 4), 0, [4], [1]))]))
put("pickle", "big_numel", state_dict_pickle([("w", _Tensor(_Storage("FloatStorage", "#8", 2**62 + 2), 0, [2**62], [1]))]))
put("pickle", "cycle", b"\x80\x02]q\x00h\x00a.")
put("pickle", "nested", b"\x80\x02" + b"]" * 300 + b"a" * 299 + b".")

def pth(records, name="archive"):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for k, v in records:  # a fixed date: the same bytes on every run
            z.writestr(zipfile.ZipInfo(f"{name}/{k}", date_time=(1980, 1, 1, 0, 0, 0)), v)
    return f.getvalue()

put("pth", "views", pth([("data.pkl", views), ("byteorder", b"little"), ("data/0", bytes(24)),
                         ("data/1", bytes(4)), ("data/2", bytes(24)), ("version", b"3\n")]))
put("pth", "big_numel", pth([("data.pkl", state_dict_pickle([("w", _Tensor(_Storage("FloatStorage", "0", 2**62 + 2), 0, [2**62], [1]))])),
                             ("data/0", bytes(8)), ("version", b"3\n")]))
put("pth", "missing_record", pth([("data.pkl", views), ("data/0", bytes(24)), ("version", b"3\n")]))
put("pth", "bad_version", pth([("data.pkl", state_dict_pickle([])), ("version", b"x\n")]))
put("pth", "big_endian", pth([("data.pkl", state_dict_pickle([])), ("byteorder", b"big"), ("version", b"3\n")]))

# spiece: the small byte-fallback model of tests/data/tokenizer, as it is and cut short
with open(os.path.join(HERE, "..", "data", "tokenizer", "spiece_bytes.model"), "rb") as f:
    spm = f.read()
put("spiece", "bytes_model", spm)
put("spiece", "truncated", spm[:len(spm) // 2])

# prompt: first byte odd = the byte-fallback model; the rest is the prompt
for i, text in enumerate(["a cat on a windowsill", "  Hello,   WORLD!\t\n", "caf\u00e9 \uff21\u2160 \u00bd",
                          "&amp;lt; &#x1F600; &notin &#0; &#xD800;", "\U0001F600\u200b\u3000end",
                          "\u2581\u2581 </s> <pad> <extra_id_0>", "x" * 300]):
    put("prompt", f"t{i}", bytes([i % 2]) + text.encode())
put("prompt", "invalid_utf8", b"\x01ab\xff\xfe\xc0\x80 \xed\xa0\x80")

# pth/regress_claims_2GB_record is not written here: it is the input the pth target's first long
# run found (its directory claims a 2 GB data.pkl), kept as found (docs/robustness.md).
