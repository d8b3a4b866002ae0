"""``chatmod console``: the moderators' web application.

An ASGI app (Starlette, served by uvicorn) beside the workers, on the same Kafka topics and Redis:

- ``feed``: a consumer of ``chat.flagged.v1`` (the live queue) and ``chat.moderated.v1`` (channel health),
  committing offsets only after what it read is in Redis, so an item is never lost; items are stored by
  message id and never re-queued once known, so none is shown twice across restarts;
- ``queue``: the items, their claims and verdicts in Redis, and the live events (Redis pub/sub, relayed to
  browsers as server-sent events);
- ``accounts``: users with roles, argon2 password hashes, sessions, CSRF tokens, login rate limits and the
  audit log;
- ``charts``: channel health drawn as SVG on the server;
- ``app``: the pages and the JSON API. Verdicts go to ``chat.feedback.v1``, where workers store them for
  retraining and an overturned block loses its strike; promote and rollback go through the registry.

No message text is ever logged: items are named by id, users by name.
"""
