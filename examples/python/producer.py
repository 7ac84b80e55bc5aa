#!/usr/bin/env python3
"""An example tts-worker producer: one request, its answer, its audio.

1. Connects to RabbitMQ and declares a private reply queue (exclusive,
   auto-delete, named by the server).
2. Validates a version 2 request against contract/schemas/request.schema.json
   and publishes it to the requests queue: persistent, with a job id
   (message_id), a correlation_id, reply_to and a fresh W3C `traceparent`.
3. Waits for the event whose correlation_id is ours, validates it against the
   schema its `type` names (JSON Schema draft-07), checks `dataschema` and
   that the worker kept our trace id.
4. On `tts.job.completed`, downloads the audio and its captions from S3,
   checks the audio's size and SHA-256 against the event, and prints one line
   of JSON (job id, type, files, bytes). On `tts.job.failed`, prints the
   error's code and message and exits 2.

Exit codes: 0 completed and verified; 1 usage, connection or storage error;
2 the job failed (a valid tts.job.failed event); 3 the request or the event
breaks the contract (schema, dataschema, trace id, job id); 4 no answer
within --timeout; 5 the downloaded audio differs from the event (size,
SHA-256).

Environment: AMQP_URL, TTS_REQUESTS_QUEUE, S3_ENDPOINT (empty: AWS's own
endpoint), AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
TTS_SCHEMAS_DIR. Run with --help for the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import boto3
import pika
import pika.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from jsonschema import Draft7Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_JOB_FAILED = 2
EXIT_CONTRACT = 3
EXIT_TIMEOUT = 4
EXIT_MISMATCH = 5

DEFAULT_TEXT = "Hello from the Python example producer. Your audio is ready."
# Fields newer than version 1 of the request; a body with any of them
# carries "version": 2.
VERSION_2_FIELDS = ("format", "sample_rate", "bitrate_kbps", "loudness_lufs", "true_peak_db", "captions")
REQUEST_SCHEMA = "request.schema.json"
# The schema of each event, chosen by the event's `type`.
EVENT_SCHEMAS = {
    "tts.job.completed": "job.completed.schema.json",
    "tts.job.failed": "job.failed.schema.json",
}
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# This file is examples/python/producer.py; the contract is contract/schemas/.
REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "contract" / "schemas"


class Fail(Exception):
    """Ends the run with an exit code and a message for stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def log(message: str) -> None:
    print(f"[producer] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Publish one text-to-speech request to tts-worker, wait for its "
        "CloudEvent, validate it against the contract and download the audio.",
    )
    p.add_argument("--text", default=DEFAULT_TEXT, help="what to say (default: a short sentence)")
    p.add_argument("--voice", default="Puck", help="voice_1 (default: Puck)")
    p.add_argument(
        "--format",
        default="mp3",
        choices=["wav", "mp3", "ogg", "flac", "mulaw"],
        help="audio format (default: mp3)",
    )
    p.add_argument(
        "--captions",
        default="vtt",
        help="comma-separated caption formats: vtt, srt; empty for none (default: vtt)",
    )
    p.add_argument("--job-id", help="job id (default: example-python-<random>)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the event (default: 120)")
    p.add_argument("--out-dir", default=".", help="where to write the audio and captions (default: .)")
    p.add_argument(
        "--schemas",
        default=os.environ.get("TTS_SCHEMAS_DIR") or str(REPO_SCHEMAS),
        help="directory of the contract's JSON Schemas (default: $TTS_SCHEMAS_DIR or the repository's contract/schemas)",
    )
    args = p.parse_args(argv)
    args.captions = [c.strip() for c in args.captions.split(",") if c.strip()]
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def new_traceparent() -> str:
    """A fresh, sampled W3C trace context: version 00, random trace and span ids."""
    trace_id = secrets.token_hex(16)
    span_id = secrets.token_hex(8)
    # All-zero ids are invalid (a chance of 2^-128 and 2^-64, but still).
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return new_traceparent()
    return f"00-{trace_id}-{span_id}-01"


def trace_id_of(traceparent: object) -> str | None:
    match = TRACEPARENT.match(traceparent) if isinstance(traceparent, str) else None
    return match.group(1) if match else None


class Contract:
    """The contract's schemas: every *.schema.json of a directory, registered
    by `$id` (so schemas may refer to one another), each checked against the
    draft-07 meta-schema."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.schemas: dict[str, dict] = {}
        if not directory.is_dir():
            raise Fail(EXIT_ERROR, f"no schema directory {directory} (pass --schemas or set TTS_SCHEMAS_DIR)")
        for path in sorted(directory.glob("*.schema.json")):
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
                Draft7Validator.check_schema(schema)
            except (OSError, ValueError) as e:
                raise Fail(EXIT_ERROR, f"cannot read {path}: {e}") from e
            except SchemaError as e:
                raise Fail(EXIT_CONTRACT, f"{path} is not a valid draft-07 schema: {e.message}") from e
            self.schemas[path.name] = schema
        self.registry = Registry().with_resources(
            (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT7))
            for schema in self.schemas.values()
            if isinstance(schema.get("$id"), str)
        )

    def schema(self, name: str) -> dict:
        schema = self.schemas.get(name)
        if schema is None:
            raise Fail(EXIT_ERROR, f"schema {name} not found in {self.directory}")
        return schema

    def validate(self, name: str, instance: object, what: str) -> None:
        validator = Draft7Validator(
            self.schema(name),
            registry=self.registry,
            format_checker=Draft7Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: e.json_path)
        if errors:
            listed = "\n".join(f"  {e.json_path}: {e.message}" for e in errors)
            raise Fail(EXIT_CONTRACT, f"{what} does not match {name}:\n{listed}")


def build_request(args: argparse.Namespace, job_id: str) -> dict:
    request = {
        "text": args.text,
        "voice_1": args.voice,
        "format": args.format,
        "job_id": job_id,
    }
    if args.captions:
        request["captions"] = args.captions
    # The versioning rule: a request using any field newer than version 1
    # says "version": 2 (here always: it names a format).
    if any(field in request for field in VERSION_2_FIELDS):
        request = {"version": 2, **request}
    return request


def send_and_wait(args: argparse.Namespace, request: dict, traceparent: str) -> tuple[pika.BasicProperties, bytes, str]:
    """Publishes the request and returns the reply's properties and body,
    and the correlation id sent."""
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    queue = os.environ.get("TTS_REQUESTS_QUEUE", "tts.requests")
    correlation_id = str(uuid.uuid4())
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as e:
        raise Fail(EXIT_ERROR, f"cannot connect to {redact(url)}: {e!r}") from e
    try:
        channel = connection.channel()
        # A private reply queue: exclusive to this connection, deleted with it.
        reply_queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        reply: dict = {}

        def on_reply(_channel, _method, properties: pika.BasicProperties, body: bytes) -> None:
            if properties.correlation_id != correlation_id:
                log(f"ignoring a reply for correlation_id {properties.correlation_id!r}")
                return
            reply.setdefault("properties", properties)
            reply.setdefault("body", body)

        channel.basic_consume(queue=reply_queue, on_message_callback=on_reply, auto_ack=True)
        # Publisher confirms: basic_publish returns once the broker has the
        # message, and raises if no queue took it (mandatory).
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=request["job_id"],
            correlation_id=correlation_id,
            reply_to=reply_queue,
            headers={"traceparent": traceparent},
        )
        body = json.dumps(request).encode("utf-8")
        try:
            channel.basic_publish(exchange="", routing_key=queue, body=body, properties=properties, mandatory=True)
        except pika.exceptions.UnroutableError as e:
            raise Fail(EXIT_ERROR, f"no queue {queue!r} took the request: is the worker running?") from e
        except pika.exceptions.NackError as e:
            raise Fail(EXIT_ERROR, f"the broker refused the request (nack) on {queue!r}") from e
        log(f"published job {request['job_id']} to {queue!r} (traceparent {traceparent}); waiting up to {args.timeout:g} s")

        deadline = time.monotonic() + args.timeout
        while "body" not in reply:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Fail(EXIT_TIMEOUT, f"no event for job {request['job_id']} within {args.timeout:g} s")
            connection.process_data_events(time_limit=min(remaining, 1.0))
        return reply["properties"], reply["body"], correlation_id
    except pika.exceptions.AMQPError as e:
        raise Fail(EXIT_ERROR, f"broker error: {e!r}") from e
    finally:
        if connection.is_open:
            connection.close()


def check_event(contract: Contract, properties: pika.BasicProperties, body: bytes, job_id: str, traceparent: str) -> dict:
    """The event, checked against the contract and against what was sent."""
    try:
        event = json.loads(body)
    except ValueError as e:
        raise Fail(EXIT_CONTRACT, f"the reply is not JSON: {e}") from e
    if not isinstance(event, dict):
        raise Fail(EXIT_CONTRACT, "the reply is not a JSON object")
    kind = event.get("type")
    schema_name = EVENT_SCHEMAS.get(kind)
    if schema_name is None:
        raise Fail(EXIT_CONTRACT, f"unknown event type {kind!r}")
    contract.validate(schema_name, event, f"the {kind} event")
    expected = contract.schema(schema_name).get("$id")
    if event.get("dataschema") != expected:
        raise Fail(EXIT_CONTRACT, f"dataschema is {event.get('dataschema')!r}, expected {expected!r}")
    # The worker continues the producer's trace: same trace id (its own span id
    # when it exports spans).
    sent = trace_id_of(traceparent)
    got = trace_id_of(event.get("traceparent"))
    if got != sent:
        raise Fail(EXIT_CONTRACT, f"the event's traceparent {event.get('traceparent')!r} is not in trace {sent}")
    header = (properties.headers or {}).get("traceparent")
    if isinstance(header, bytes):
        header = header.decode("utf-8", "replace")
    if header is not None and trace_id_of(header) != sent:
        raise Fail(EXIT_CONTRACT, f"the reply's traceparent header {header!r} is not in trace {sent}")
    data = event.get("data")
    if not isinstance(data, dict) or data.get("job_id") != job_id:
        got_job = data.get("job_id") if isinstance(data, dict) else None
        raise Fail(EXIT_CONTRACT, f"the event is for job {got_job!r}, not {job_id!r}")
    return event


def s3_client():
    endpoint = os.environ.get("S3_ENDPOINT", "http://127.0.0.1:3900") or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "garage"),
        # Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any
        # source of boto3's default chain).
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )


def download(s3, bucket: str, key: str, uri: str, out_dir: Path, size: int | None = None, sha256: str | None = None) -> tuple[Path, int, str]:
    """Streams s3://bucket/key to out_dir/<basename>, checking size and SHA-256
    when given; returns the path, the byte count and the SHA-256."""
    if uri != f"s3://{bucket}/{key}":
        raise Fail(EXIT_CONTRACT, f"uri {uri!r} does not name s3://{bucket}/{key}")
    name = PurePosixPath(key).name
    if name in ("", ".", ".."):
        raise Fail(EXIT_CONTRACT, f"key {key!r} has no file name")
    target = out_dir / name
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    count = 0
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(partial, "wb") as f:
            for chunk in body.iter_chunks(1 << 16):
                digest.update(chunk)
                f.write(chunk)
                count += len(chunk)
    except (ClientError, BotoCoreError) as e:
        partial.unlink(missing_ok=True)
        raise Fail(EXIT_ERROR, f"cannot download {uri}: {e}") from e
    got = digest.hexdigest()
    if size is not None and count != size:
        partial.unlink(missing_ok=True)
        raise Fail(EXIT_MISMATCH, f"{uri} has {count} bytes, the event says {size}")
    if sha256 is not None and got != sha256.lower():
        partial.unlink(missing_ok=True)
        raise Fail(EXIT_MISMATCH, f"{uri} has SHA-256 {got}, the event says {sha256}")
    partial.replace(target)
    return target.resolve(), count, got


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    contract = Contract(Path(args.schemas))
    job_id = args.job_id or f"example-python-{uuid.uuid4().hex[:12]}"
    request = build_request(args, job_id)
    contract.validate(REQUEST_SCHEMA, request, "the request")
    traceparent = new_traceparent()

    properties, body, correlation_id = send_and_wait(args, request, traceparent)
    event = check_event(contract, properties, body, job_id, traceparent)
    data = event["data"]
    summary = {
        "job_id": job_id,
        "type": event["type"],
        "event_id": event["id"],
        "correlation_id": correlation_id,
        "traceparent": traceparent,
    }

    if event["type"] == "tts.job.failed":
        error = data.get("error", {})
        summary["error"] = {
            "code": error.get("code"),
            "message": error.get("message"),
            "retryable": error.get("retryable"),
        }
        print(json.dumps(summary, separators=(",", ":")), flush=True)
        retryable = "retryable" if error.get("retryable") else "not retryable"
        log(f"job {job_id} failed: {error.get('code')}: {error.get('message')} ({retryable})")
        return EXIT_JOB_FAILED

    audio = data["audio"]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s3 = s3_client()
    path, count, sha = download(
        s3, audio["bucket"], audio["key"], audio["uri"], out_dir, size=audio["size_bytes"], sha256=audio["sha256"]
    )
    summary["audio"] = {
        "path": str(path),
        "bytes": count,
        "sha256": sha,
        "content_type": audio["content_type"],
        "format": audio.get("format"),
    }
    captions = []
    for caption in audio.get("captions", []):
        cpath, ccount, _ = download(s3, audio["bucket"], caption["key"], caption["uri"], out_dir)
        captions.append({"format": caption["format"], "path": str(cpath), "bytes": ccount})
    summary["captions"] = captions
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    log(f"job {job_id} completed: {path} ({count} bytes, SHA-256 verified)")
    return EXIT_OK


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except Fail as e:
        log(f"error: {e.message}")
        code = e.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
