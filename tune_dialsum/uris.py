"""URIs that users give (storage, tracking, data, export): credentials never ride inside one.

A URI is printed, kept in ``space.yaml``, ``tracking.json``, every ``trial_config.json`` and the
exported ``tuning.json``: a password in it would end up in all of them, and in every copy of the
model. The SDKs read credentials from their own environment variables and files instead.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tune_dialsum.errors import UsageError

# Where each kind of store looks for credentials when the URI carries none.
_CREDENTIALS_FROM = (
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://), "
    "AZURE_STORAGE_ACCOUNT_KEY (abfs://), MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (MLflow)"
)


# scheme://user:secret@ where the secret may hold a '/' (AWS secret keys do), which ends urlsplit's netloc
_USER_AND_SECRET = re.compile(r"^([A-Za-z][\w+.-]*://)[^/@]*:[^@]*@")


def redacted(uri: str) -> str:
    """``uri`` with any ``user:password@`` replaced by ``***@``."""
    if _USER_AND_SECRET.match(uri):
        return _USER_AND_SECRET.sub(r"\1***@", uri, count=1)
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def credentials_problem(uri: str | None) -> str | None:
    """Why ``uri`` may not be used (it carries ``user[:password]@``), never quoting the secret; else None."""
    if not uri or "://" not in str(uri):
        return None
    if "@" not in urlsplit(str(uri)).netloc and not _USER_AND_SECRET.match(str(uri)):
        return None
    return (
        f"{redacted(str(uri))} carries credentials in the URI, which would be printed and stored with the "
        f"experiment and the model; remove them and set them in the environment instead: {_CREDENTIALS_FROM}"
    )


def refuse_credentials(uri: str | None, key: str) -> None:
    """Fail in one line, naming ``key``, where ``uri`` carries credentials."""
    problem = credentials_problem(uri)
    if problem:
        raise UsageError(f"{key}: {problem}")
