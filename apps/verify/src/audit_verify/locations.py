"""Where archives live: a directory, or S3-compatible object storage (``s3://bucket/prefix``;
the endpoint, region and credentials are boto3's own settings: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an instance role). An archive is a folder of
a few files, so object storage holds the same folders under the prefix: retention writes and
checks each archive locally, then uploads it; ``audit-verify --archive s3://…`` downloads them
into a temporary directory and checks them as it checks a directory."""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{url}: expected s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def _client() -> Any:
    return boto3.client("s3")


def upload(folder: Path, url: str, names: list[str] | None = None) -> None:
    """The files of one archive folder to ``url``/<folder name>/ (``names``: only those)."""
    bucket, prefix = _split(url)
    s3 = _client()
    for path in sorted(folder.iterdir()):
        if names is None or path.name in names:
            key = "/".join(p for p in (prefix, folder.name, path.name) if p)
            s3.upload_file(str(path), bucket, key)


def fetch(url: str, name: str, file: str) -> bytes | None:
    """One file of the archive ``name`` under ``url``; ``None`` when it is not there."""
    bucket, prefix = _split(url)
    key = "/".join(p for p in (prefix, name, file) if p)
    try:
        return bytes(_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def download(url: str, into: Path) -> Path:
    """Every archive under ``url`` into ``into`` (one folder per archive); ``into``."""
    bucket, prefix = _split(url)
    s3 = _client()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
    )
    for page in pages:
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :].lstrip("/") if prefix else item["Key"]
            target = into / relative
            if into.resolve() not in target.resolve().parents:
                raise ValueError(f"{item['Key']}: outside the prefix")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
    return into
