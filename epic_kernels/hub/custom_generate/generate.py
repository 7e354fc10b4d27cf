"""EPIC (entropy-aligned) decoding as a transformers ``custom_generate`` method.

    model.generate(input_ids, custom_generate="<this folder>", trust_remote_code=True,
                   epic_alpha=0.2, epic_seed=0, do_sample=True, max_new_tokens=64)

transformers executes this file and calls ``generate(model, **every generate argument)``; the loop
itself lives in the installed ``epic_kernels`` package (``pip install epic_kernels``).
"""


def generate(model, *args, **kwargs):
    from epic_kernels.hf import hub_generate

    return hub_generate(model, *args, **kwargs)
