"""Simulators and load tools, apart from the exchange itself.

The synthetic population (``synth``), a simulated encounter system (``encounters``),
scripted examiners (``examiners``), worker processes for demos, tests and benchmarks
(``processes``) and the demo (``demo``). Production code never imports this package (a
test checks the import graph); the CLI reaches it only through ``biox demo`` and
``biox synth``.
"""
