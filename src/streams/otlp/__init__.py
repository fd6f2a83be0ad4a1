"""OTLP ingress: the OTLP/HTTP receiver and the Kafka source (the topic an OpenTelemetry Collector's
Kafka exporter writes) feed one :class:`~streams.processors.otlp.SpanAssembler`; the AgentTrace
records it maps go to the normal trace topic through :class:`streams.sdk.SelfhealProducer`, so the
pipeline behind is unchanged. Run by ``selfheal otlp [--kafka]``; docs/otlp.md.
"""
