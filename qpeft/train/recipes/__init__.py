"""The paper's experiments as runnable recipes (for users who are online).

========  ====================  ============  =================================
name      model                 data          protocol followed
========  ====================  ============  =================================
glue      DeBERTaV3-base        GLUE tasks    AdaLoRA's GLUE scripts
e2e       GPT-2 Medium          E2E NLG       LoRA's Table 11 / NLG commands
cifar10   ViT-B/16 (in21k)      CIFAR-10      FourierFT's ViT scripts
========  ====================  ============  =================================

Each recipe is a frozen dataclass holding the protocol's hyperparameters and
a ``run(recipe, output_dir, ...)`` function; every field is also a command
line option::

    python -m qpeft.train.recipes glue --task rte --method qpeft:K=4,L=2 \\
        --output-dir runs/rte

Models and data come from the Hugging Face hub (``datasets`` must be
installed). ``run`` also accepts a model, tokenizer or processor and a
dataset loader directly, which is how the tests run every recipe offline on
tiny random models.
"""

from __future__ import annotations

#: Recipe name -> (module, recipe class name).
RECIPES: dict[str, tuple[str, str]] = {
    "glue": ("qpeft.train.recipes.glue", "GlueRecipe"),
    "e2e": ("qpeft.train.recipes.e2e", "E2ERecipe"),
    "cifar10": ("qpeft.train.recipes.cifar10", "Cifar10Recipe"),
}
