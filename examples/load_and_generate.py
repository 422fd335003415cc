"""Load a folder written by `autoq apply` and generate from it, greedy:

    python examples/load_and_generate.py DIR ["PROMPT"]
"""

import sys

import autoq

folder = sys.argv[1]
prompt = sys.argv[2] if len(sys.argv) > 2 else "The capital of France is"

model, tokenizer = autoq.load(folder)       # a transformers model, quantized layers inside
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))
