"""Image inputs: identified by their bytes (`sniff`), fetched under the SSRF guard (`fetch`),
and resolved from an `EditRequest`'s references (`resolve`)."""

from app.media.fetch import FetchError, GuardedFetcher, decode_data_url, refusal_reason
from app.media.resolve import resolve_images
from app.media.sniff import probe

__all__ = [
    "FetchError",
    "GuardedFetcher",
    "decode_data_url",
    "probe",
    "refusal_reason",
    "resolve_images",
]
