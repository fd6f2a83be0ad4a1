"""The SDK validates before sending and names the field and value at fault, and closing it releases
its Kafka client."""

import pytest
from confluent_kafka import OFFSET_INVALID, Message

from streams.config import Settings
from streams.errors import ContractViolation, DeliveryError
from streams.sdk import SelfhealProducer
from tests.factories import feedback, trace


@pytest.fixture
def sdk():
    # no broker needed: validation happens before anything is produced
    p = SelfhealProducer(Settings(kafka_bootstrap="127.0.0.1:1"), linger_ms=10_000, kafka_config={"log_level": 0})
    yield p
    p.close(discard=True)  # nothing to deliver to: release the client and its threads now


@pytest.mark.parametrize(("over", "field", "value"), [
    ({"latency_ms": -1.0}, "latency_ms", -1.0),
    ({"tenant_id": "ACME!"}, "tenant_id", "ACME!"),
    ({"outcome": "exploded"}, "outcome", "exploded"),
    ({"release": {"release_id": "r"}}, "release.model", None),
])
def test_invalid_trace_raises_naming_field_and_value(sdk, over, field, value):
    with pytest.raises(ContractViolation) as err:
        sdk.send_trace(trace(**over))
    assert err.value.field == field
    assert field.split(".")[-1] in str(err.value)
    if value is not None:
        assert err.value.value == value


def test_invalid_feedback_raises(sdk):
    with pytest.raises(ContractViolation, match="category"):
        sdk.send_feedback(feedback(category="bad_category"))


def test_valid_records_are_buffered_per_tenant(sdk):
    sdk.send_trace(trace(1))
    sdk.send_trace(trace(2, tenant_id="globex"))
    assert sorted(sdk._buffers) == [("traces", "acme"), ("traces", "globex")]


def test_a_batch_that_fails_to_send_stays_buffered_in_order(sdk, monkeypatch):
    sdk.send_trace(trace(1))
    sdk.send_trace(trace(2))

    def refuse(kind, tenant, items):
        raise RuntimeError("not sent")

    monkeypatch.setattr(sdk, "_encode_and_send", refuse)
    with pytest.raises(RuntimeError):
        sdk._send_batch(("traces", "acme"))
    sdk.send_trace(trace(3))  # newer records queue behind the ones that failed
    assert [r["trace_id"] for r in sdk._buffers[("traces", "acme")]] == [trace(i)["trace_id"] for i in (1, 2, 3)]
    assert ("traces", "acme") in sdk._born  # the background flusher will try again


def test_a_delivery_report_without_offset_is_raised_with_the_message_to_resend(sdk):
    # librdkafka reports a DUPLICATE_SEQUENCE_NUMBER answer as delivered with no offset; before
    # Kafka 4.5 the broker gives it for a first batch it never wrote (KAFKA-15591): the kill
    # test's feedback producer lost 2 records that way. Delivery reports as librdkafka builds them
    # (confluent_kafka.Message's constructor is meant for this).
    topic = sdk.settings.topic("feedback")
    sdk._on_delivery(None, Message(topic=topic, partition=3, offset=17, key=b"t-a", value=b"kept"))
    sdk._on_delivery(None, Message(topic=topic, partition=3, offset=OFFSET_INVALID, key=b"t-a", value=b"lost?"))
    with pytest.raises(DeliveryError, match=r"1 message\(s\) to .*feedback.* acknowledged without an offset") as err:
        sdk.flush(timeout_s=1)
    assert err.value.unconfirmed == [(topic, b"t-a", b"lost?")]
    assert sdk.delivered_messages == 1
    sdk.flush(timeout_s=1)  # raised once: the caller now owns those messages


def test_close_releases_the_client_and_its_flusher_once(sdk):
    sdk.send_trace(trace(1))  # buffered; the broker (port 1) is unreachable
    sdk.close(discard=True)
    assert not sdk._flusher.is_alive()  # joined, not left to die with the interpreter
    with pytest.raises(RuntimeError, match="closed"):
        sdk._producer.poll(0)  # the librdkafka handle is gone
    sdk.close(discard=True)  # idempotent
