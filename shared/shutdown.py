"""The process-wide shutdown flag.

SIGTERM and SIGINT set it (``cmdline.stop_event``). Retry policies stop retrying and
their back-off sleeps end as soon as it is set, so a process asked to stop while Redis
or the RPC node is unreachable exits within a bounded time instead of retrying on.
"""

from __future__ import annotations

import threading
from typing import Final

from tenacity import RetryCallState
from tenacity.stop import stop_base

#: Set once the process has been asked to stop.
SHUTDOWN: Final = threading.Event()


class _StopOnShutdown(stop_base):
    def __call__(self, retry_state: RetryCallState) -> bool:
        return SHUTDOWN.is_set()


#: Tenacity stop condition: true once shutdown was requested (combine with ``|``).
requested: Final = _StopOnShutdown()


def sleep(seconds: float) -> None:
    """A back-off sleep that ends early when shutdown is requested (tenacity ``sleep=``)."""
    SHUTDOWN.wait(seconds)
