"""aglmc's benchmark harness: ``python -m bench`` (from the repository root).

It measures aglmc's builds beside the runtimes a user would pick instead — torch eager, torch.compile,
onnxruntime (fp32 and its dynamic INT8), TVM without aglmc's passes, and the on-device peers LiteRT, ExecuTorch,
ncnn, MNN and IREE when installed — each in its own process, interleaved over rounds, with the same thread
count, every output checked against torch; and, with ``--arm``, aarch64 instruction counts under qemu
(shared/tools/armcount). It writes ``results.md``, ``host.json``/``arm.json`` and PNG plots to ``--out``.

Not part of the installed ``aglmc`` package: it lives beside it in the repository.

Layout: ``catalog.py`` (models), ``models.py`` (their factories), ``runtimes.py`` (one class per runtime;
aglmc variants are one entry each), ``worker.py`` (the per-runtime processes), ``runner.py`` (rounds and
statistics), ``hw.py`` (CPU peak), ``arm.py`` (instruction counts), ``report.py`` (markdown and plots).
"""
