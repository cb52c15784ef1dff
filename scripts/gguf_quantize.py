#!/usr/bin/python3
"""Rewrite an F32/F16/BF16 GGUF with its matrices quantized to Q8_0, using llama.cpp's gguf-py.

usage: gguf_quantize.py IN.gguf OUT.gguf

This follows llama-quantize's Q8_0 recipe: every 2-D tensor whose rows are a multiple of 32 becomes Q8_0
(gguf-py's numpy quantizer is bit-exact with ggml's quantize_row_q8_0_ref); 1-D tensors (norms, biases,
rope_freqs) are kept as they are. All metadata is copied; general.file_type becomes 7 (MOSTLY_Q8_0).
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


def main(src, dst):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the reader's pseudo-fields; the writer adds the architecture
        val, vt = f.contents(), f.types[0]
        if key == "general.file_type":
            val = int(gguf.LlamaFileType.MOSTLY_Q8_0)
        w.add_key_value(key, val, vt, sub_type=f.types[-1] if vt == T.ARRAY else None)
    plan = []
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # row-major
        if len(shape) == 2 and shape[-1] % 32 == 0 and t.tensor_type in (Q.F32, Q.F16, Q.BF16):
            nbytes = shape[0] * shape[1] // 32 * 34
            w.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, raw_dtype=Q.Q8_0)
            plan.append((t, Q.Q8_0))
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
    print(f"gguf_quantize: wrote {dst} ({sum(1 for _, q in plan if q)} of {len(plan)} tensors as Q8_0)", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
