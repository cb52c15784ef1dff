#!/usr/bin/python3
"""Rewrite an F32/F16/BF16 GGUF with its matrices as Q8_0 (default), BF16 or F16, using llama.cpp's gguf-py.

usage: gguf_quantize.py IN.gguf OUT.gguf [q8_0|bf16|f16]

This follows llama-quantize's recipe: every 2-D tensor whose rows are a multiple of 32 becomes the target
type (gguf-py's numpy quantizer is bit-exact with ggml's quantize_row_q8_0_ref; bf16 rounds to nearest even);
1-D tensors (norms, biases, rope_freqs) are kept as they are. All metadata is copied; general.file_type
becomes the matching LlamaFileType (MOSTLY_Q8_0 = 7, MOSTLY_BF16 = 32, MOSTLY_F16 = 1).
gguf-py is found in $CARRYON_ORACLE_DIR/gguf-py (default ~/.cache/carryon-oracle; see
shared/tools/llamacpp/setup.sh). Needs numpy: run it as ./gguf_quantize.py (Debian's /usr/bin/python3).
"""
import os, sys, types

CACHE = os.environ.get("CARRYON_ORACLE_DIR") or os.path.expanduser("~/.cache/carryon-oracle")
sys.path.insert(0, os.path.join(CACHE, "gguf-py"))
sys.modules.setdefault("yaml", types.ModuleType("yaml"))  # gguf-py imports yaml only for model cards
import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q, GGUFValueType as T  # noqa: E402


TYPES = {"q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, lambda n: n // 32 * 34),
         "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16, lambda n: 2 * n),
         "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16, lambda n: 2 * n)}


def main(src, dst, kind="q8_0"):
    target, ftype, size = TYPES[kind]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the reader's pseudo-fields; the writer adds the architecture
        val, vt = f.contents(), f.types[0]
        if key == "general.file_type":
            val = int(ftype)
        w.add_key_value(key, val, vt, sub_type=f.types[-1] if vt == T.ARRAY else None)
    plan = []
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # row-major
        if len(shape) == 2 and shape[-1] % 32 == 0 and t.tensor_type in (Q.F32, Q.F16, Q.BF16):
            nbytes = size(shape[0] * shape[1])
            w.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, raw_dtype=target)
            plan.append((t, target))
        else:
            w.add_tensor_info(t.name, shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.tensor_type)
            plan.append((t, None))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, qt in plan:
        data = t.data
        if qt is not None:
            x = gguf.quants.dequantize(data, t.tensor_type) if t.tensor_type != Q.F32 else data
            data = gguf.quants.quantize(np.asarray(x, dtype=np.float32), qt)
        w.write_tensor_data(np.ascontiguousarray(data))
    w.close()
    print(f"gguf_quantize: wrote {dst} ({sum(1 for _, q in plan if q)} of {len(plan)} tensors as {kind})", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] not in TYPES):
        sys.exit(__doc__)
    main(*sys.argv[1:])
