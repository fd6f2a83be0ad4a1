"""selfheal streams: faust processors, ClickHouse sink, producer SDK and CLI.

Data flows one way: ``schemas`` → :mod:`streams.sdk` → Kafka topics → :mod:`streams.processors`
→ :mod:`streams.sinks` → analysts and evaluation. :mod:`streams.worker` (the only package that
imports faust) wires the processors into a faust application; :mod:`streams.cli` is the
``selfheal`` command.
"""

__version__ = "0.1.0"
