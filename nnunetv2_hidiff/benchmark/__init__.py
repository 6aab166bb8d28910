"""Benchmark trainers on nnU-Net's cross-validation folds (issue 5): ``nnunetv2_hidiff_benchmark``.

Modules: ``cli`` (command line and orchestration), ``runner`` (fold states, nnU-Net subprocesses, timing),
``budget`` (trainer lookup and the equal-budget check), ``collect`` (summary.json → results.csv rows),
``stats`` (means and paired tests), ``report`` (summary.md and benchmark.png).
"""
