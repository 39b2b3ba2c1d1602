"""S3 event parsing (pure): AWS notifications, SNS envelopes and MinIO webhooks -> inbox objects or reasons."""
import copy
import json

import pytest

from pagebatch.jobs.pipeline.trigger_events import (
    MAX_RECORDS,
    EventError,
    ObjectRef,
    Outcome,
    decode_key,
    object_problem,
    outbox_prefix,
    parse_event,
)

# The shape S3 sends (event structure 2.1), as delivered by SQS/Lambda forwarders.
AWS_PUT = {
    "Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
        "eventTime": "2024-06-01T02:00:03.412Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AROAEXAMPLE:nightly-export"},
        "requestParameters": {"sourceIPAddress": "10.0.4.17"},
        "responseElements": {"x-amz-request-id": "8K5Q3C2TQ5XMDR6Z", "x-amz-id-2": "r4nd0m/Base64=="},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "pagebatch-inbox",
            "bucket": {"name": "acme-nightly", "ownerIdentity": {"principalId": "A2EXAMPLEOWNER"},
                       "arn": "arn:aws:s3:::acme-nightly"},
            "object": {"key": "reviews/inbox/2024-06-01+run%231.jsonl", "size": 40213,
                       "eTag": "9b2cf535f27731c974343645a3985328", "sequencer": "00665A8F7B3C2D1E0F"},
        },
    }],
}

# What MinIO's webhook target posts: the key inside Records is query-escaped ("/" as %2F, " " as +).
MINIO_PUT = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "labels/team a/inbox/café reviews.jsonl",
    "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2024-06-01T02:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put", "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "172.18.0.1"},
        "responseElements": {"x-amz-request-id": "17D4A1C2E3F40516", "x-minio-origin-endpoint": "http://minio:9000"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "Config",
            "bucket": {"name": "labels", "ownerIdentity": {"principalId": "minioadmin"}, "arn": "arn:aws:s3:::labels"},
            "object": {"key": "team+a%2Finbox%2Fcaf%C3%A9+reviews.jsonl", "size": 312,
                       "eTag": "5eb63bbbe01eeed093cb22bb8f5acdc3", "contentType": "application/octet-stream",
                       "userMetadata": {"content-type": "application/octet-stream"}, "sequencer": "17D4A1C2E3F40517"},
        },
        "source": {"host": "172.18.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
    }],
}


def _with(event, **object_fields):
    changed = copy.deepcopy(event)
    record = changed["Records"][0]
    for name, value in object_fields.items():
        if name == "eventName":
            record["eventName"] = value
        else:
            record["s3"]["object"][name] = value
    return changed


def test_aws_notification_names_the_decoded_object_version():
    assert parse_event(AWS_PUT) == [ObjectRef("acme-nightly", "reviews/inbox/2024-06-01 run#1.jsonl",
                                              "9b2cf535f27731c974343645a3985328")]


def test_minio_webhook_keys_are_query_unescaped():
    assert parse_event(MINIO_PUT) == [ObjectRef("labels", "team a/inbox/café reviews.jsonl",
                                                 "5eb63bbbe01eeed093cb22bb8f5acdc3")]


def test_sns_envelope_is_unwrapped_and_its_confirmation_ignored():
    envelope = {"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                "TopicArn": "arn:aws:sns:eu-west-1:123456789012:inbox", "Message": json.dumps(AWS_PUT)}
    assert parse_event(envelope) == parse_event(AWS_PUT)
    [confirmation] = parse_event({"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/x"})
    assert confirmation.status == "ignored" and "SubscribeURL" in confirmation.reason


def test_quoted_etags_and_missing_etags():
    [ref] = parse_event(_with(AWS_PUT, eTag='"9b2cf535f27731c974343645a3985328-3"'))
    assert ref.etag == "9b2cf535f27731c974343645a3985328-3"
    no_etag = _with(AWS_PUT)
    del no_etag["Records"][0]["s3"]["object"]["eTag"]
    assert parse_event(no_etag)[0].etag is None  # asked of S3 when the batch starts


@pytest.mark.parametrize("event, reason", [
    (_with(AWS_PUT, eventName="ObjectRemoved:Delete"), "deletion"),
    (_with(MINIO_PUT, eventName="s3:ObjectRemoved:Delete"), "deletion"),
    (_with(AWS_PUT, eventName="ObjectRestore:Completed"), "not an object creation"),
    (_with(AWS_PUT, key="reviews/2024-06-01.jsonl"), "not an inbox file"),
    (_with(AWS_PUT, key="reviews/inbox/2024-06-01.csv"), "not an inbox file"),
    (_with(AWS_PUT, key="reviews/myinbox/x.jsonl"), "not an inbox file"),
    (_with(AWS_PUT, key="reviews/inbox/sub/x.jsonl"), "not an inbox file"),
    (_with(AWS_PUT, key="a%2F%2Finbox%2Fx.jsonl"), "path segments"),
    (_with(AWS_PUT, key="inbox/..jsonl"), "path segments"),
    (_with(AWS_PUT, key="inbox/%FF.jsonl"), "UTF-8"),
    (_with(AWS_PUT, key="inbox/" + "x" * 1100 + ".jsonl"), "longer than 1024 bytes"),
    (_with(AWS_PUT, key="inbox/" + "x" * 520 + ".jsonl"), "metadata.source"),
    (_with(AWS_PUT, eTag="not an etag!"), "eTag"),
    (_with(AWS_PUT, key=17), "s3.object.key"),
    ({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, "not S3"),
    ({"Records": ["text"]}, "not an object"),
    ({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "Bad Bucket!"},
                                                           "object": {"key": "inbox/x.jsonl"}}}]}, "bucket name"),
    ({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "acme-nightly"}, "test event"),
    ({"hello": "world"}, "no Records"),
    ({"Records": "all of them"}, "must be a list"),
    ({"Type": "Notification", "Message": "not json"}, "not JSON"),
])
def test_records_that_start_nothing_say_why(event, reason):
    [outcome] = parse_event(event)
    assert isinstance(outcome, Outcome) and outcome.status == "ignored"
    assert reason in outcome.reason


@pytest.mark.parametrize("payload", [[AWS_PUT], "Records", 3, None,
                                     {"Records": AWS_PUT["Records"] * (MAX_RECORDS + 1)}])
def test_payloads_that_cannot_be_events_are_refused(payload):
    with pytest.raises(EventError):
        parse_event(payload)


def test_outbox_sits_beside_the_inbox():
    assert outbox_prefix("inbox/x.jsonl") == "outbox/x/"
    assert outbox_prefix("a/b/inbox/night 1.jsonl") == "a/b/outbox/night 1/"
    assert object_problem("bkt", "a/b/inbox/night 1.jsonl") is None
    assert object_problem("bkt", "a/b/outbox/night 1/output.jsonl") is not None  # results never trigger


def test_decode_key_follows_the_s3_event_encoding():
    assert decode_key("caf%C3%A9+au+lait%2B%25.jsonl") == "café au lait+%.jsonl"
    assert decode_key("%FF") is None
