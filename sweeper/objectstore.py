"""Object stores (S3, GCS) as the results store sees them: pyarrow filesystems that keep their retry
strategy when pickled to Ray workers, the canonical URI a worker rebuilds a store from, and one
readable line for what went wrong (an unreachable endpoint, denied credentials, a missing bucket).
Only sweeper.store uses this module.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

# Tries per S3 request, with the AWS SDK's default backoff (25 ms doubling: 11 tries wait about 50 s
# in all). A store that drops out for seconds (a restarted gateway, a network blip) then costs a
# pause, not a failed write. pyarrow's default, 3 tries within about a second, lost writes to a
# 5 s outage here. Errors that cannot heal (403, no such bucket) are not retried.
S3_ATTEMPTS = 11
# The up-front check (`check_reachable`) tries twice with short timeouts: a wrong endpoint or a
# dead network must answer in seconds, not after a minute of retries.
CHECK_ATTEMPTS, CHECK_SECONDS = 2, 5.0


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, whose retry strategy survives pickling. pyarrow's own pickling
    drops it, and Ray Tune pickles the filesystem to every trial (which uploads its checkpoints
    with it): those uploads would fall back to 3 tries."""

    def __init__(self, attempts: int = S3_ATTEMPTS, **options):
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=attempts), **options)
        self.attempts, self.options = attempts, options

    def __reduce__(self):
        return _rebuild_s3, (self.attempts, self.options)


def _rebuild_s3(attempts: int, options: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(attempts, **options)


def options_of(fs: pafs.FileSystem) -> dict[str, Any]:
    """Every option of a pyarrow S3/GCS filesystem, as its pickling spells them."""
    if isinstance(fs, RetryingS3FileSystem):
        return dict(fs.options)
    return dict(fs.__reduce__()[1][0])


def open_object_store(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path without scheme, canonical URI) for an object store URI."""
    scheme = uri.split("://", 1)[0].lower()
    fs, root = pafs.FileSystem.from_uri(uri)  # reads the URI's options, AWS_ENDPOINT_URL(_S3), the region
    if scheme != "s3":
        return fs, root, uri
    options = options_of(fs)
    endpoint = options.get("endpoint_override") or ""
    if "://" in endpoint:  # from AWS_ENDPOINT_URL: "http://host:port" carries its own scheme
        options["scheme"], options["endpoint_override"] = endpoint.split("://", 1)
    # One PUT per small object (pyarrow otherwise opens a multipart upload: three requests).
    options["allow_delayed_open"] = True
    fs = RetryingS3FileSystem(S3_ATTEMPTS, **options)
    parts = urllib.parse.urlsplit(uri)
    query = dict(urllib.parse.parse_qsl(parts.query))
    if options["endpoint_override"]:
        query.setdefault("endpoint_override", options["endpoint_override"])
        query.setdefault("scheme", options["scheme"])
    if options["region"]:
        query.setdefault("region", options["region"])
    encoded = urllib.parse.urlencode(query, safe=":/")
    canonical = f"{scheme}://{parts.netloc}{parts.path}" + (f"?{encoded}" if encoded else "")
    return fs, root, canonical


def first_line(e: BaseException, limit: int = 300) -> str:
    """An error of the AWS/GCS SDK as one line of readable length."""
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", " ".join(str(e).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_file(path: str) -> bool:
    try:
        return Path(path).expanduser().is_file()
    except RuntimeError:  # `~name` of no user: no file the SDK could read either
        return False


def credentials_hint() -> str:
    """Where AWS credentials would come from, for an error message (the SDK does the looking)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID is set: check it and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
    if os.environ.get("AWS_PROFILE"):
        return f"AWS_PROFILE={os.environ['AWS_PROFILE']}: check that profile's keys"
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")]
    if any(_is_file(f) for f in files):
        return "check the keys in ~/.aws (or set AWS_PROFILE)"
    return ("no AWS credentials found in the environment or ~/.aws: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run on a node with an instance profile")


def endpoint(fs: pafs.FileSystem, scheme: str) -> str:
    """Where an object store is, as a person reads it (no secrets)."""
    options = options_of(fs) if scheme in ("s3", "gs") else {}
    if options.get("endpoint_override"):
        return f"{options.get('scheme') or 'https'}://{options['endpoint_override']}"
    if scheme == "s3":
        return f"AWS S3 ({options.get('region') or 'default region'})"
    return "Google Cloud Storage" if scheme == "gs" else scheme


def explain(e: Exception, bucket: str, fs: pafs.FileSystem, scheme: str) -> str:
    """An SDK error on `bucket` as one readable line: unreachable, denied, or what the SDK says."""
    text = first_line(e)
    if "AWS Error " in text:  # "When getting information for bucket 'b': AWS Error X during Y ..."
        text = "AWS error " + text.split("AWS Error ", 1)[1].replace(": No response body.", "")
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
        detail = text.split("Details:", 1)[-1].strip() if "Details:" in text else text
        return f"cannot reach {endpoint(fs, scheme)} ({detail})"
    denied = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "HTTP status 403",
              "InvalidAccessKeyId", "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken")
    if scheme == "s3" and any(d in text for d in denied):
        return f"access to bucket {bucket!r} at {endpoint(fs, scheme)} denied ({text}); {credentials_hint()}"
    if scheme == "s3" and "HTTP status 500" in text and not os.environ.get("AWS_ACCESS_KEY_ID"):
        # an unsigned request (no credentials at all) makes some S3 servers fail instead of deny
        return f"bucket {bucket!r} at {endpoint(fs, scheme)} refused the request ({text}); {credentials_hint()}"
    return f"bucket {bucket!r} at {endpoint(fs, scheme)}: {text}"


def checking_fs(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The store's filesystem with short timeouts and almost no retries, for the check."""
    if isinstance(fs, RetryingS3FileSystem):
        options = {**fs.options, "connect_timeout": CHECK_SECONDS, "request_timeout": CHECK_SECONDS}
        return RetryingS3FileSystem(CHECK_ATTEMPTS, **options)
    if isinstance(fs, pafs.GcsFileSystem):
        return pafs.GcsFileSystem(**{**options_of(fs), "retry_time_limit": dt.timedelta(seconds=CHECK_SECONDS)})
    return fs
