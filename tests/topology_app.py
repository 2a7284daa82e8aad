"""`tests.guarded_app` with the Celery settings a Sentinel or TLS broker needs, for
`celery -A tests.topology_app worker` in tests/test_sentinel.py and tests/test_tls.py.

GUARD_BROKER_URL names the broker and result backend as for `tests.guarded_app`;
TOPOLOGY_CELERY_CONF adds Celery settings as a JSON object (`broker_transport_options`,
`result_backend_transport_options`, `broker_use_ssl`, ...).
"""

from __future__ import annotations

import json
import os

from tests.guarded_app import app

app.conf.update(json.loads(os.environ.get("TOPOLOGY_CELERY_CONF", "{}")))

__all__ = ["app"]
