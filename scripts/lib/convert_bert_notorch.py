#!/usr/bin/env python3
"""Torch-free HF BERT (WordPiece, sentence-transformers) -> GGUF converter.

A narrow re-implementation of what llama.cpp's convert_hf_to_gguf.py (vendored in
llama-cpp-python 0.3.36, conversion/base.py + conversion/bert.py, class BertModel) does
for a plain `BertModel` checkpoint in model.safetensors, using only gguf-py (from the same
llama.cpp tree), numpy and `tokenizers`. It is meant to produce a byte-identical file to
the official converter for all-MiniLM-L6-v2 (checked: see REPORT.md); for anything else
use the official converter.

usage: PYTHONPATH=<llama.cpp>/gguf-py python convert_bert_notorch.py MODEL_DIR OUT.gguf [--outtype f16|q8_0|f32]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from hashlib import sha256
from pathlib import Path

import numpy as np

import gguf

logger = logging.getLogger("bert-notorch")

# the string llama.cpp's get_vocab_base_pre() hashes, copied verbatim from conversion/base.py
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
# chkhsh -> tokenizer.ggml.pre, only the WordPiece ones relevant here (base.py: the last match wins,
# and 0876d13b... is listed as "bert-bge" and then again as "jina-v2-en")
KNOWN_PRE = {
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
}

FTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
ST_DTYPES = {"F32": np.float32, "F16": np.float16}


def hf_to_gguf_name(tmap: gguf.TensorNameMap, name: str) -> str | None:
    # BertModel.filter_tensors
    if name.startswith("bert."):
        name = name[5:]
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        return None
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    new = tmap.get_name(key=name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise ValueError(f"Can not map tensor {name!r}")
    return new


def pooling_type(d: Path) -> gguf.PoolingType | None:
    mp = d / "modules.json"
    if not mp.is_file():
        return None
    for mod in json.loads(mp.read_text(encoding="utf-8")):
        if mod["type"].endswith("Pooling"):
            cfg = json.loads((d / mod["path"] / "config.json").read_text(encoding="utf-8"))
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            if cfg.get("pooling_mode_lasttoken"):
                return gguf.PoolingType.LAST
            raise NotImplementedError("only MEAN, CLS and LAST pooling supported")
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("outfile", type=Path)
    ap.add_argument("--outtype", choices=sorted(FTYPES), default="f16")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING)
    d: Path = a.model_dir
    ftype, wtype = FTYPES[a.outtype]

    hp = json.loads((d / "config.json").read_text(encoding="utf-8"))
    if hp.get("architectures") != ["BertModel"]:
        sys.exit(f"only architectures == ['BertModel'] supported, got {hp.get('architectures')}")
    arch = gguf.MODEL_ARCH.BERT
    n_layer = hp["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch], endianess=gguf.GGUFEndian.LITTLE)

    # ---- tensors (ModelBase.prepare_tensors), in safetensors name order
    f32_keys = (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)
    f32_names = {gguf.TENSOR_NAMES[k] + ".weight" for k in f32_keys}
    with gguf.utility.SafetensorsLocal(d / "model.safetensors") as tensors:
        for name, lt in tensors.items():
            new = hf_to_gguf_name(tmap, name)
            if new is None:
                continue
            data = lt.mmap_bytes().view(ST_DTYPES[lt.dtype]).reshape(lt.shape)
            if data.dtype != np.float32 and data.dtype != np.float16:
                data = data.astype(np.float32)
            data = np.asarray(data)
            qtype: gguf.GGMLQuantizationType | None = None
            if data.ndim <= 1 or new.endswith("_norm.weight"):
                qtype = gguf.GGMLQuantizationType.F32
            elif new in f32_names or new[-7:] not in (".weight", ".lora_a", ".lora_b"):
                qtype = gguf.GGMLQuantizationType.F32
            if qtype is None:
                qtype = wtype
            try:
                out = gguf.quants.quantize(data, qtype)
            except gguf.QuantError as e:
                logger.warning("%s, falling back to F16", e)
                qtype = gguf.GGMLQuantizationType.F16
                out = gguf.quants.quantize(data, qtype)
            logger.debug("%-32s %s -> %s %s", new, lt.dtype, qtype.name, tuple(reversed(data.shape)))
            w.add_tensor(new, out, raw_dtype=qtype)

    # ---- metadata (ModelBase.prepare_metadata)
    total, shared, expert, n_exp = w.get_total_parameter_count()
    md = gguf.Metadata.load(None, d, None, total)
    if md.name is None:
        md.name = d.name
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, n_exp)
    w.add_type(gguf.GGUFType.MODEL)
    md.set_gguf_meta_model(w)

    # ---- TextModel.set_gguf_parameters + BertModel.set_gguf_parameters (keys present for BERT)
    w.add_block_count(n_layer)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_layer_norm_eps(hp["layer_norm_eps"])
    w.add_file_type(ftype)
    w.add_causal_attention(False)
    if (pt := pooling_type(d)) is not None:
        w.add_pooling_type(pt)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # ---- vocab (TextModel.get_vocab_base + BertModel.set_vocab), via `tokenizers` instead of transformers
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_truncation()  # transformers' encode() ignores tokenizer.json's truncation/padding
    tok.no_padding()
    vocab = tok.get_vocab(with_added_tokens=True)
    n_vocab = hp.get("vocab_size", len(vocab))
    chkhsh = sha256(str(tok.encode(CHKTXT).ids).encode()).hexdigest()
    if chkhsh not in KNOWN_PRE:
        sys.exit(f"unknown pre-tokenizer hash {chkhsh}: use the official converter")
    added = {t["content"]: t for t in json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]}
    rev = {i: t for t, i in vocab.items()}
    tokens, toktypes = [], []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        t = rev[i]
        if t in added:
            if not added[t]["normalized"]:
                t2 = tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=False)
                if t2 != t:
                    sys.exit(f"added token {t!r} round-trips to {t2!r}: use the official converter")
            if added[t]["special"]:
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(t)

    def phantom(t: str, tt: int) -> str:
        if tt == gguf.TokenType.CONTROL:
            return t
        return t[2:] if t.startswith("##") else "\u2581" + t

    w.add_token_type_count(hp.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(KNOWN_PRE[chkhsh])
    w.add_token_list([phantom(t, tt) for t, tt in zip(tokens, toktypes)])
    w.add_token_types(toktypes)
    gguf.SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(w)

    # ---- write (ModelBase.write)
    w.write_header_to_file(path=a.outfile)
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {a.outfile}", file=sys.stderr)


if __name__ == "__main__":
    main()
