"""Fine-tuning methods: one module per method, each registered under its recipe name.

    from domaintune.methods import get_method, trainable_report
    method = get_method("lora")            # imports domaintune.methods.lora on first use
    model = method.apply(model, LoraOptions())

Methods: lora, qlora (CUDA only), prefix, prompt, ia3, adapter (bottleneck), full, freeze. Names
below are imported lazily (peft's `tuners/ia3/__init__.py` habit), so importing this package costs
nothing until a method is used.
"""

from __future__ import annotations

from domaintune.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Method": "base", "REGISTRY": "base", "register": "base", "get_method": "base", "all_methods": "base",
    "TrainableReport": "base", "trainable_report": "base", "saved_method": "base",
    "LayerGroup": "groups", "parse_layer_spec": "groups", "param_groups": "groups", "clip_grad_norms": "groups",
})
