"""The edit flow: above the domain (types and rules), below the HTTP routes.

`edit` holds `EditService` (checks, admit, upstream, settle, queueing), `idempotency` the
`Idempotency-Key` handshake, `streaming` the server-sent-events relay. This package may use
adapters, media and tasks; `app/domain` may not.
"""

from app.service.context import EditContext, EditReply, Prepared
from app.service.edit import EditService

__all__ = ["EditContext", "EditReply", "EditService", "Prepared"]
