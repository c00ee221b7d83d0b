"""A bfloat16 Hugging Face folder of a GGUF file, for vLLM, which cannot serve GGUF.

Run by path with vLLM's Python (it has torch and transformers; jupyter-tt need not be there):
``python hf_copy.py MODEL.gguf OUT_DIR``. transformers dequantizes the GGUF; its weights go into a
fresh model of the same config, saved with the tokenizer. transformers keeps
``quantization_config: {quant_method: gguf}`` in a config loaded from a GGUF, which vLLM refuses
("Unknown quantization method: gguf"): the copy's ``config.json`` goes without it. This file's folder
(jupyter-tt's modules, which would shadow packages of the same names) is taken off ``sys.path``.
"""

import json
import os
import sys
from pathlib import Path

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if not p or os.path.abspath(p) != _here]


def main(gguf: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(Path(gguf).parent), Path(gguf).name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(model.config, torch_dtype=torch.bfloat16)
    fresh.load_state_dict(model.state_dict())
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    config_path = Path(out) / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
