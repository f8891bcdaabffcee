"""Fine-tuning harness behind ``qpeft finetune`` and ``qpeft compare``.

The modules, in the order data flows through them:

- :mod:`qpeft.train.data`: CSV and GLUE loading, validation, the seeded
  stratified split, tokenisation with dynamic padding;
- :mod:`qpeft.models` (outside this package: ``qpeft count`` uses it
  too): where ``--model`` points (embedded MiniLM, a local folder or a hub
  name) and loading it;
- :mod:`qpeft.train.methods`: what is trained (head, full, LoRA, OFT, BOFT,
  Quantum-PEFT) and how trainable parameters are counted and saved;
- :mod:`qpeft.train.loop`: the seeded training loop with atomic, resumable
  checkpoints, evaluation, timing and peak memory;
- :mod:`qpeft.train.metrics`: accuracy, macro-F1, MCC, correlations, BLEU;
- :mod:`qpeft.train.report`: ``metrics.json``, ``report.md`` and plots;
- :mod:`qpeft.train.experiment`: one run from data to report, shared by the
  two commands, :mod:`qpeft.train.finetune` and :mod:`qpeft.train.compare`;
- :mod:`qpeft.train.recipes`: the paper's GLUE, E2E and CIFAR-10 setups;
- :mod:`qpeft.train.testing`: a tiny model and synthetic data for trying the
  harness in seconds.

Importing this package imports neither torch nor transformers.
"""
